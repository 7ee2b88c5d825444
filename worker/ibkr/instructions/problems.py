"""What is wrong with a request, in words an operator acts on: the shape of the input before any
model sees it (depth, key types, ASCII), and pydantic's errors turned into a field path and a
message. Messages name the field and the reason, never the value (it may be a bank number, or a
megabyte of digits)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from worker.ibkr.instructions.base import FieldProblem, Model

#: No IBKR request nests deeper than a few levels; far deeper input is refused, not walked.
MAX_DEPTH = 16
NON_ASCII = "contains non-ASCII characters, which a signed IBKR body cannot carry; use ASCII only"

_MAX_KEY_SHOWN = 64


def key_text(key: str) -> str:
    """A key as a field path shows it: `""` for an empty key, a long one cut short."""
    if not key:
        return '""'
    return key if len(key) <= _MAX_KEY_SHOWN else key[:_MAX_KEY_SHOWN] + "..."


def _path(where: tuple[str | int, ...]) -> str:
    path = ""
    for part in where:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{key_text(part)}" if path else key_text(part)
    return path or "request"


_LEAF_TYPES = frozenset({int, float, bool, Decimal, type(None)})


def structure_problem(raw: Any) -> tuple[str, str] | None:
    """(path, problem) for the first key or string that is not ASCII, key that is not a string,
    or container nested past MAX_DEPTH; None when there is none. Walked without recursion."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(raw, ())]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                return _path(where), NON_ASCII
            continue
        if isinstance(value, dict | list | tuple) or isinstance(value, Mapping):
            if len(where) >= MAX_DEPTH:
                return _path(where), f"nests deeper than {MAX_DEPTH} levels; no IBKR request does"
        else:
            continue
        is_mapping = isinstance(value, Mapping)
        items: Any = value.items() if isinstance(value, Mapping) else enumerate(value)
        containers: list[tuple[Any, tuple[str | int, ...]]] = []
        for key, item in items:
            if is_mapping:
                if not isinstance(key, str):
                    return _path(where), "has a key that is not a string"
                if not key.isascii():
                    return _path((*where, key)), NON_ASCII
            kind = type(item)
            if kind in _LEAF_TYPES:
                continue
            if kind is str or isinstance(item, str):
                if not item.isascii():
                    return _path((*where, key)), NON_ASCII
            elif isinstance(item, dict | list | tuple) or isinstance(item, Mapping):
                containers.append((item, (*where, key)))
        stack.extend(reversed(containers))
    return None


def _join(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{key_text(str(part))}" if path else key_text(str(part))
    return path


def _literal_options(expected: str) -> str:
    # pydantic writes "'A', 'B' or 'C'"; numbers come without quotes.
    parts = [part.strip().strip("'") for part in expected.replace(" or ", ",").split(",")]
    return ", ".join(part for part in parts if part)


def _suggestion(name: str, model: type[Model]) -> str:
    known = [*model.model_fields, *model.ALIASES]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(
    error: Mapping[str, Any], instruction_type: str, model: type[Model]
) -> tuple[list[int | str], str]:
    """(extra location, message) for one pydantic error."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldProblem):
        parts: list[int | str] = [
            int(part) if part.isdigit() else part for part in cause.field.split(".") if part
        ]
        return parts, cause.message
    if kind == "missing":
        return [], "is required but missing"
    if kind == "extra_forbidden":
        loc = error.get("loc", ())
        hint = _suggestion(str(loc[-1]), model) if len(loc) == 1 else ""
        return [], f"is not a field IBKR accepts for {instruction_type}; remove it{hint}"
    if kind == "string_too_long":
        return [], f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_too_short":
        minimum = ctx.get("min_length")
        return [], "must not be empty" if minimum == 1 else f"must be at least {minimum} long"
    if kind in {"string_type", "string_unicode"}:
        return [], "must be a string"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if "A-Z" in pattern:
            return [], "must be a three-letter upper-case ISO 4217 currency code"
        if "0-9]{4}" in pattern:
            return [], "must be a four-digit year"
        return [], f"must match {pattern}"
    if kind == "literal_error":
        return [], f"must be one of {_literal_options(str(ctx.get('expected', '')))}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return [], "must be a JSON object"
    if kind in {"list_type", "too_short"}:
        return [], "must be a non-empty list"
    if kind in {"bool_type", "bool_parsing"}:
        return [], "must be true or false"
    if kind == "value_error":
        return [], str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return [], "is invalid"


def validation_problem(
    error: ValidationError, prefix: str, instruction_type: str, model: type[Model]
) -> tuple[str, str]:
    """(field path under `prefix`, message) for the first error of a model validation."""
    first = error.errors(include_url=False, include_input=False)[0]
    loc = list(first.get("loc", ()))
    extra_loc, message = _describe(first, instruction_type, model)
    # Tagged unions and `Literal` behind a validator report sub-locations; keep fields only.
    loc = [
        part
        for part in loc
        if not (
            isinstance(part, str)
            and (part.startswith(("literal[", "function-")) or part in {"bool", "str"})
        )
    ]
    return _join(prefix, [*loc, *extra_loc]), message
