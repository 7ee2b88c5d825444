"""The id domain, stated once: what a clientInstructionId, instructionId, instructionSetId or
ibReferenceId can be, here and at IBKR (reference §4.2, §4.3).

IBKR's schemas type these ids as signed numbers (their examples are negative: `-1988905739`),
and JSON carries them as doubles, so an id is a whole number with `|id| <= 2**53 - 1`
(JSON's safe integer range: every such number survives a round trip through a double).

`0` is a value IBKR itself uses to mean "none": instructions created outside the API show
`clientInstructionId: 0` and `instructionSetId: 0` in query results, and `ibReferenceId` is `0`
when there is no reference. So a request may not use 0 as its clientInstructionId (it could
never be told apart from IBKR's "none"), and an answer's `clientInstructionId: 0` or
`instructionSetId: 0` reads as no id at all (:data:`NO_ID`).

Every place an id flows through (request validation, response parsing, the client's status
GETs, the sandbox, the CLI, the intake of invalid requests) reads it with :func:`read_id` or
:func:`as_id`, so the domain cannot drift between them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

#: The largest id magnitude: JSON's safe integer range (2**53 - 1).
MAX_ID = 2**53 - 1
#: The smallest id.
MIN_ID = -MAX_ID
#: IBKR's "no id" (an instruction created outside the API, no reference).
NO_ID = 0
#: What an id is, in the words error messages use.
ID_DOMAIN = f"a whole number between {MIN_ID} and {MAX_ID}"

# An id written as text: an optional minus and digits. Longer texts are no id of the domain
# (whatever their leading zeros), which also keeps int() from reading huge strings.
_ID_TEXT = re.compile(r"-?[0-9]{1,32}")


class IdError(ValueError):
    """The value is not an id of the domain; the message says why (without the value)."""


def read_id(value: object) -> int:
    """The id `value` stands for: an int, a whole-number float or Decimal (`1012983.0`), or a
    string of digits with an optional minus (`"1012983"`, `"-5"`; surrounding spaces ignored).

    Raises IdError (a ValueError) when `value` is a boolean, not whole, not finite, of another
    type, or outside `MIN_ID..MAX_ID`. 0 is in the domain; callers that give it a meaning
    (requests refuse it, answers read it as none) check for :data:`NO_ID` themselves.
    """
    number: int
    if isinstance(value, bool):
        raise IdError(f"must be {ID_DOMAIN}, not true or false")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise IdError(f"must be {ID_DOMAIN}")
        if abs(value) > MAX_ID:
            raise IdError(f"must be {ID_DOMAIN} (JSON's safe integer range)")
        number = int(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise IdError(f"must be {ID_DOMAIN}")
        # Compared before any integral conversion, which would expand a huge exponent.
        if value.copy_abs() > MAX_ID:
            raise IdError(f"must be {ID_DOMAIN} (JSON's safe integer range)")
        if value != value.to_integral_value():
            raise IdError(f"must be {ID_DOMAIN}")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _ID_TEXT.fullmatch(text):
            raise IdError(f"must be {ID_DOMAIN} (digits, with an optional leading minus)")
        number = int(text)
    else:
        raise IdError(f"must be {ID_DOMAIN}")
    if not MIN_ID <= number <= MAX_ID:
        raise IdError(f"must be {ID_DOMAIN} (JSON's safe integer range)")
    return number


def as_id(value: object) -> int | None:
    """The id `value` stands for (see :func:`read_id`), or None when it is none."""
    try:
        return read_id(value)
    except IdError:
        return None


def as_client_instruction_id(value: object) -> int | None:
    """A clientInstructionId we can track: an id of the domain other than IBKR's "none" (0)."""
    number = as_id(value)
    return None if number is None or number == NO_ID else number


def is_id(value: object) -> bool:
    """True for an int (not a bool) within the id domain."""
    return isinstance(value, int) and not isinstance(value, bool) and MIN_ID <= value <= MAX_ID
