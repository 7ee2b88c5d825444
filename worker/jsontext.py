"""Exact JSON text for money: Decimals are written from their decimal text, never through float.

`json.dumps` turns a Decimal into a float (or refuses it), which would change amounts such as
0.1 + 0.2; the bodies we sign and store are written here instead.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

_encode_string = json.encoder.encode_basestring_ascii


def dumps(value: Any) -> str:
    """Compact JSON text of `value`; Decimal amounts keep their exact digits (no exponent)."""
    try:
        # Plain values (no Decimal) give the same text from the C encoder, much faster.
        return _plain_encoder.encode(value)
    except (TypeError, ValueError):
        pass
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


_plain_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Parse JSON, reading every non-integer number as a Decimal."""
    return json.loads(text, parse_float=Decimal)


def decimal_text(value: Decimal) -> str:
    """The plain decimal text of a finite Decimal (`1E+2` becomes `100`)."""
    if not value.is_finite():
        raise ValueError(f"cannot write the non-finite amount {value} as JSON")
    text = format(value, "f")
    return text


def _write(value: Any, parts: list[str]) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(_encode_string(value))
    elif isinstance(value, int):
        parts.append(str(int(value)))
    elif isinstance(value, Decimal):
        parts.append(decimal_text(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value} as JSON")
        parts.append(repr(value))
    elif isinstance(value, dict):
        parts.append("{")
        first = True
        for key, item in value.items():
            if not first:
                parts.append(",")
            first = False
            parts.append(_encode_string(str(key)))
            parts.append(":")
            _write(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def to_plain(value: Any) -> Any:
    """A copy for stores that take only plain JSON (SQLAlchemy JSON columns): a Decimal becomes an
    int or a float where that is exact, and keeps its text (a string) otherwise."""
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        return float(value) if Decimal(repr(float(value))) == value else str(value)
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    return value
