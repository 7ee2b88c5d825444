"""`jsontext.dumps` writes plain values with the C encoder and falls back to its own writer for
Decimals: both must give the same text, and amounts must keep their digits."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import jsontext

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def own_writer(value: Any) -> str:
    parts: list[str] = []
    jsontext._write(value, parts)
    return "".join(parts)


@given(plain)
def test_plain_values_are_written_exactly_as_the_decimal_aware_writer_would(value: Any) -> None:
    assert jsontext.dumps(value) == own_writer(value)


@given(plain, st.decimals(allow_nan=False, allow_infinity=False, places=4))
def test_a_decimal_anywhere_keeps_its_digits(value: Any, amount: Decimal) -> None:
    text = jsontext.dumps({"amount": amount, "rest": value})
    assert text == own_writer({"amount": amount, "rest": value})
    assert jsontext.loads(text)["amount"] == amount


@pytest.mark.parametrize("bad", [math.nan, math.inf, Decimal("NaN"), Decimal("Infinity")])
def test_non_finite_numbers_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        jsontext.dumps({"amount": bad})


def test_other_types_are_refused() -> None:
    with pytest.raises(TypeError, match="set"):
        jsontext.dumps({"x": {1, 2}})
