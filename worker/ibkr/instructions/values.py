"""Readers for the values of IBKR request fields: numbers, whole numbers, ids, dates, flags.

Every reader takes whatever a producer sent (a JSON value, or a Decimal from our own JSON
reader) and returns the one value we send, or raises ValueError with a message that names what
is wrong without repeating the value (it may be a bank number, or a megabyte of digits).

Numbers are bounded before they are built: a number's digits and exponent are read from its
text or tuple and checked against its rule first, so `1e-999999999` or `1e999999999` is refused
without ever being expanded, and every number we send writes out in at most a few dozen
characters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from worker.ibkr import ids

#: The longest number text read (a number with more characters is refused, not parsed).
MAX_NUMBER_TEXT = 64
#: Counts (daysToGoBack, numberOfTransactions) fit IBKR's 32-bit integers.
MAX_COUNT = 2**31 - 1

_NUMBER_TEXT = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?(?:[eE]([-+]?[0-9]{1,12}))?")
_WHOLE_TEXT = re.compile(r"-?[0-9]{1,20}")
_NOT_FINITE_TEXT = frozenset(
    {"nan", "+nan", "-nan", "snan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_HINT = "an ISO 8601 date-time with an offset, e.g. 2026-11-24T09:12:13Z"


@dataclass(frozen=True)
class NumberRule:
    """The bounds of one kind of number field.

    `max_integer_digits` digits before the decimal point, `max_decimals` after it (trailing
    zeros past that are dropped, other digits refused); `minimum` (exclusive when
    `minimum_exclusive`) and `maximum` (inclusive) bound the value.
    """

    max_integer_digits: int
    max_decimals: int
    minimum: Decimal
    minimum_exclusive: bool
    maximum: Decimal | None = None


#: Cash amounts: what the amount column (Numeric(28, 10)) stores exactly, and nothing more.
AMOUNT = NumberRule(
    max_integer_digits=18, max_decimals=10, minimum=Decimal(0), minimum_exclusive=True
)
#: Position quantities (shares, units; fractional quantities allowed).
QUANTITY = NumberRule(
    max_integer_digits=15, max_decimals=10, minimum=Decimal(0), minimum_exclusive=True
)
#: transferPrice: IBKR's schema says `multipleOf: 1e-9`, so at most 9 decimals.
PRICE = NumberRule(
    max_integer_digits=15, max_decimals=9, minimum=Decimal(0), minimum_exclusive=True
)
#: Tax withholding percentages.
PERCENTAGE = NumberRule(
    max_integer_digits=3,
    max_decimals=6,
    minimum=Decimal(0),
    minimum_exclusive=False,
    maximum=Decimal(100),
)


def _text_parts(text: str) -> tuple[int, str, int]:
    match = _NUMBER_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("must be a number")
    sign, whole, fraction, exponent = match.groups()
    fraction = fraction or ""
    return (1 if sign else 0), whole + fraction, int(exponent or 0) - len(fraction)


def _number_parts(value: Any) -> tuple[int, str, int]:
    """(sign, digits, exponent) of a number as sent, without building its value."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    if isinstance(value, int):
        # Checked before str(), which would refuse (or take long over) a huge int.
        if abs(value) >= 10**MAX_NUMBER_TEXT:
            raise ValueError(f"must be a number of at most {MAX_NUMBER_TEXT} digits")
        return (1 if value < 0 else 0), str(abs(value)), 0
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return _text_parts(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("must be a finite number")
        sign, digits, exponent = value.as_tuple()
        if len(digits) > MAX_NUMBER_TEXT:
            raise ValueError(f"must be a number of at most {MAX_NUMBER_TEXT} digits")
        assert isinstance(exponent, int)
        return sign, "".join(str(digit) for digit in digits), exponent
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_TEXT:
            raise ValueError(f"must be a number written in at most {MAX_NUMBER_TEXT} characters")
        text = value.strip()
        if text.lower() in _NOT_FINITE_TEXT:
            raise ValueError("must be a finite number")
        return _text_parts(text)
    raise ValueError("must be a number")


def read_number(value: Any, rule: NumberRule) -> Decimal:
    """The Decimal we send for a number field under `rule` (see :class:`NumberRule`).

    Numbers, Decimals and numeric strings (`"123.45"`, `1E+2`) are read; the result is written
    without an exponent and keeps the producer's decimal places up to `rule.max_decimals`.
    Raises ValueError naming the broken bound.
    """
    sign, digits, exponent = _number_parts(value)
    digits = digits.lstrip("0") or "0"
    if digits == "0":
        sign, exponent = 0, min(max(exponent, -rule.max_decimals), 0)
    else:
        while exponent < -rule.max_decimals and digits.endswith("0"):
            digits, exponent = digits[:-1], exponent + 1
        if exponent < -rule.max_decimals:
            raise ValueError(f"must have at most {rule.max_decimals} decimal places")
        if len(digits) + exponent > rule.max_integer_digits:
            raise ValueError(
                f"must be below 10^{rule.max_integer_digits} "
                f"(at most {rule.max_integer_digits} digits before the decimal point)"
            )
        if exponent > 0:
            digits, exponent = digits + "0" * exponent, 0
    # Built from bounded text (digits and an exponent within the rule), so never expanded.
    number = Decimal(f"{'-' if sign else ''}{digits}E{exponent}")
    below = number < rule.minimum or (rule.minimum_exclusive and number == rule.minimum)
    if below or (rule.maximum is not None and number > rule.maximum):
        raise ValueError(_range_text(rule))
    return number


def _range_text(rule: NumberRule) -> str:
    if rule.maximum is not None:
        return f"must be between {rule.minimum} and {rule.maximum}"
    if rule.minimum_exclusive:
        return f"must be greater than {rule.minimum}"
    return f"must be at least {rule.minimum}"


def read_whole(value: Any, minimum: int, maximum: int) -> int:
    """A whole number from `minimum` to `maximum`: an int, a whole-number float or Decimal
    (`3.0`), or a string of digits. Raises ValueError otherwise."""
    wanted = f"must be a whole number from {minimum} to {maximum}"
    if isinstance(value, bool):
        raise ValueError(f"{wanted}, not true or false")
    number: int
    if isinstance(value, int):
        number = value
    elif isinstance(value, float | Decimal):
        finite = math.isfinite(value) if isinstance(value, float) else value.is_finite()
        # Bounds first: converting a huge Decimal to an int would expand its exponent.
        if not finite or not minimum <= value <= maximum:
            raise ValueError(wanted)
        if value != int(value):
            raise ValueError(wanted)
        number = int(value)
    elif isinstance(value, str) and _WHOLE_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise ValueError(wanted)
    if not minimum <= number <= maximum:
        raise ValueError(wanted)
    return number


def read_count(value: Any) -> int:
    """A count of at least 1 (daysToGoBack, numberOfTransactions), within 32 bits."""
    return read_whole(value, 1, MAX_COUNT)


def read_client_instruction_id(value: Any) -> int:
    """A clientInstructionId: an id of the domain (:mod:`worker.ibkr.ids`) other than 0,
    which IBKR reports for instructions created outside the API."""
    number = ids.read_id(value)
    if number == ids.NO_ID:
        raise ValueError(
            "must not be 0: IBKR reports 0 for instructions created outside the API, so it "
            "cannot identify ours; use any other whole number"
        )
    return number


def read_instruction_id(value: Any) -> int:
    """An IBKR instructionId to act on (cancel, verify): an id of the domain other than 0."""
    number = ids.read_id(value)
    if number == ids.NO_ID:
        raise ValueError("must not be 0, which names no instruction")
    return number


def read_reference_id(value: Any) -> int:
    """An ibReferenceId: an id of the domain, not negative (IBKR's schema: minimum 0)."""
    number = ids.read_id(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def read_conid(value: Any) -> int:
    """An IBKR contract id: a positive id of the domain."""
    number = ids.read_id(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def read_flag(value: Any) -> bool | str:
    """A yes/no flag of IBKR's examples (`isIRA`, `initiatedByIb`): true/false, or the strings
    "true"/"false" those examples send, kept as given."""
    if isinstance(value, bool) or value in ("true", "false"):
        return value  # type: ignore[no-any-return]
    raise ValueError('must be true or false (or the strings "true" or "false")')


def read_phone(value: Any) -> Any:
    """A phone number: text, or a whole number (IBKR's 2.13 schema typed it as a number),
    sent as its digits."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**16:
        return str(value)
    return value


def check_date(value: str) -> str:
    """`value` if it is a calendar date `YYYY-MM-DD`."""
    if not _DATE.fullmatch(value):
        raise ValueError("must be a date in the form YYYY-MM-DD")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a real calendar date in the form YYYY-MM-DD") from None
    return value


def check_datetime(value: str) -> str:
    """`value` if it is an ISO 8601 date-time with an offset (`2026-11-24T09:12:13Z`)."""
    if len(value) <= len("YYYY-MM-DD") or len(value) > 64:
        raise ValueError(f"must be {_DATETIME_HINT}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"must be {_DATETIME_HINT}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"must be {_DATETIME_HINT}")
    return value


def check_date_or_datetime(value: str) -> str:
    """A date, or a date-time with an offset: nonDisclosedDetail's dates, which IBKR's schema
    calls dates while every one of its examples sends a date-time."""
    if _DATE.fullmatch(value):
        return check_date(value)
    return check_datetime(value)
