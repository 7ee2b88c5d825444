"""Judge the raw bytes of an arriving message, before anything else reads them.

A message is *set aside* (a dead letter with the reason, at once, never retried) when it is
larger than MAX_MESSAGE_BYTES, not UTF-8, not JSON, nested deeper than `MAX_JSON_DEPTH`,
holds more than `MAX_JSON_VALUES` values or a number longer than `MAX_NUMBER_CHARS` written
out, or is not a dramatiq message for our actor. Everything here is linear in the size of the
message and never recurses on its structure: the depth and the number of values are found on
the bytes before the JSON parser (which recurses) sees them.

Of the dramatiq envelope only `args`, `kwargs`, `message_id` and `message_timestamp` are
kept: `options` (eta, retries, time limits, pipes, callbacks, anything else) and the
producer's `queue_name` are dropped, so nothing downstream can act on them.

Numbers are read as `Decimal` (floats would change amounts of more than 15 digits); a number
whose decimal text would be longer than `MAX_NUMBER_CHARS` (`1e-999999999`) is refused here,
because writing it out, as the signed body must, would take gigabytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from worker.config import KEPT_BODY_BYTES

#: Deepest nesting accepted. IBKR's deepest request body (a complex asset transfer's contra
#: broker details inside a bulk, inside the dramatiq envelope) is 7 levels; 32 leaves room,
#: and stays far below the recursion limit of the parser, the validators and the redaction.
MAX_JSON_DEPTH = 32
#: Most JSON values accepted in one message. A bulk request of 10,000 members of ten fields
#: is 100,000 values; IBKR's examples have fewer than 50. Also bounds what a message costs
#: decoded (about 100 bytes a value).
MAX_JSON_VALUES = 100_000
#: Longest number accepted, as decimal text (sign, digits, point, zeros of the exponent).
#: Amounts have at most 30 digits; ids at most 20.
MAX_NUMBER_CHARS = 100
#: Longest message id accepted (the database columns hold 64 characters).
MAX_MESSAGE_ID_CHARS = 64
#: How much of a message too large to keep is kept for people to look at.
KEPT_PREFIX_BYTES = KEPT_BODY_BYTES
#: Estimated bytes a decoded JSON value holds (objects, lists, small strings and numbers).
BYTES_PER_DECODED_VALUE = 100

_MESSAGE_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_MESSAGE_ID_CHARS}}}")
# A JSON string (escapes included), matched without backtracking.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
_BRACKET_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKET = bytes(set(range(256)) - set(b"[]{}"))
_MESSAGE_ID_IN_TEXT = re.compile(rb'"message_id"\s*:\s*"([\x20-\x21\x23-\x5b\x5d-\x7e]{1,64})"')


class Refused(ValueError):
    """A message (or body) that no request can be: `reason` says why, in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Arrival:
    """What arrived, as judged at the edge.

    `original` is the message as received (None when it was too large to keep: then `prefix`
    holds its first 64 KiB); `rejection` says why it is set aside, or is None; `values` is
    the number of JSON values decoded (0 when it was not decoded).
    """

    size_bytes: int
    original: bytes | None
    rejection: str | None = None
    values: int = 0
    message_id: str = ""
    prefix: bytes = field(default=b"", repr=False)

    @property
    def kept_bytes(self) -> bytes:
        """The original when kept, else its first 64 KiB."""
        return self.original if self.original is not None else self.prefix

    @property
    def held_bytes(self) -> int:
        """Estimated memory held while the message is in hand: its bytes, and for a decoded
        one its decoded strings (no larger than the bytes) and values."""
        if self.original is None:
            return len(self.prefix)
        if self.rejection is not None:
            return self.size_bytes
        return 2 * self.size_bytes + BYTES_PER_DECODED_VALUE * self.values


@dataclass(frozen=True)
class Envelope:
    """The parts of a dramatiq message we keep."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    message_id: str
    message_timestamp: int


def inspect(
    raw: bytes,
    *,
    max_message_bytes: int,
    actor_name: str,
    received_size: int | None = None,
    tail: bytes = b"",
) -> tuple[Arrival, Envelope | None]:
    """Judge `raw` (the bytes of one message): (the arrival, the envelope when it is a message
    for `actor_name` within every limit, else None and `arrival.rejection` says why).

    `received_size`: the size of the message when `raw` is only its beginning (the receiver
    kept no more), `tail` then its last bytes."""
    size = received_size if received_size is not None else len(raw)
    if size > max_message_bytes:
        prefix = bytes(raw[:KEPT_PREFIX_BYTES])
        return (
            Arrival(
                size,
                None,
                f"the message is {size:,} bytes, above MAX_MESSAGE_BYTES ({max_message_bytes:,});"
                " it was not kept whole and cannot be replayed",
                message_id=_message_id_in_text(raw + tail if tail else raw),
                prefix=prefix,
            ),
            None,
        )
    original = bytes(raw)
    try:
        data, values = _parse_counted(original)
    except Refused as error:
        return Arrival(size, original, error.reason, message_id=_message_id_in_text(original)), None
    try:
        envelope = _envelope(data, actor_name)
    except Refused as error:
        found = data.get("message_id") if isinstance(data, dict) else None
        message_id = found if isinstance(found, str) and _valid_message_id(found) else ""
        return Arrival(size, original, error.reason, values, message_id), None
    return Arrival(size, original, None, values, envelope.message_id), envelope


def parse_json(raw: bytes) -> Any:
    """`raw` as JSON (numbers as int and Decimal), within the limits of this module; Refused
    names the first limit broken. Never recurses deeper than `MAX_JSON_DEPTH`."""
    return _parse_counted(raw)[0]


def _parse_counted(raw: bytes) -> tuple[Any, int]:
    """(the value, how many JSON values it holds); see `parse_json`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Refused(
            f"the message is not UTF-8 text (invalid byte at offset {error.start})"
        ) from None
    structure = _JSON_STRING.sub(b'""', raw)
    values = _values_in(structure)
    if values > MAX_JSON_VALUES:
        raise Refused(
            f"the message holds more than {MAX_JSON_VALUES:,} JSON values ({values:,}); "
            "no IBKR request has that many"
        )
    if not _depth_within(structure, MAX_JSON_DEPTH):
        raise Refused(
            f"the message is nested deeper than {MAX_JSON_DEPTH} levels (or its brackets do "
            "not match); no IBKR request is"
        )
    try:
        value = json.loads(
            text,
            parse_float=_decimal,
            parse_int=_integer,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as error:
        raise Refused(
            f"the message is not JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except RecursionError:  # excluded by the depth check; kept so nothing escapes
        raise Refused(f"the message is nested deeper than {MAX_JSON_DEPTH} levels") from None
    return value, values


def count_values(raw: bytes) -> int:
    """The JSON values in `raw` (exact for valid JSON, an upper bound otherwise)."""
    return _values_in(_JSON_STRING.sub(b'""', raw))


def _values_in(structure: bytes) -> int:
    # With the strings emptied: every value but the first follows a comma or opens a container
    # (`[1,2]`: the list, 1 and 2). Keys are not values; `:` is not counted.
    if not structure.strip():
        return 0
    return 1 + structure.count(b",") + structure.count(b"[") + structure.count(b"{")


def _depth_within(structure: bytes, limit: int) -> bool:
    """Whether the brackets of `structure` (strings emptied) match and nest at most `limit`
    deep: each pass removes the innermost pairs, so `limit` passes remove all of them."""
    brackets = structure.translate(None, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return True
        brackets = _BRACKET_PAIR.sub(b"", brackets)
    return not brackets


def _decimal(text: str) -> Decimal:
    value = Decimal(text)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: JSON has no NaN literal here
    written = max(len(digits) + max(exponent, 0), -exponent + 1, len(digits)) + 2
    if len(text) > MAX_NUMBER_CHARS or written > MAX_NUMBER_CHARS:
        raise Refused(
            f"the message holds the number {text[:40]}{'...' if len(text) > 40 else ''}, "
            f"longer than {MAX_NUMBER_CHARS} characters written out; no IBKR field takes one"
        )
    return value


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise Refused(
            f"the message holds an integer of {len(text):,} digits, longer than "
            f"{MAX_NUMBER_CHARS}; no IBKR field takes one"
        )
    return int(text)


def _constant(text: str) -> Any:
    raise Refused(f"the message holds {text}, which is not JSON")


def _valid_message_id(value: object) -> bool:
    return isinstance(value, str) and (value == "" or _MESSAGE_ID.fullmatch(value) is not None)


def _message_id_in_text(raw: bytes) -> str:
    """The message id written in a message we could not decode (for the dead letter), or "".
    The last one written: dramatiq writes the envelope's after the arguments."""
    found = None
    for found in _MESSAGE_ID_IN_TEXT.finditer(raw):  # noqa: B007 - the last match is wanted
        pass
    return found.group(1).decode("ascii") if found else ""


def _envelope(data: Any, actor_name: str) -> Envelope:
    if not isinstance(data, dict):
        raise Refused(
            f"the message is a JSON {type(data).__name__}, not a dramatiq message (an object "
            "with actor_name, args, kwargs and message_id)"
        )
    actor = data.get("actor_name")
    if actor != actor_name:
        shown = repr(actor)[:80] if isinstance(actor, str) else type(actor).__name__
        raise Refused(f"the message is for the actor {shown}, not {actor_name!r}")
    args = data.get("args", [])
    if not isinstance(args, list):
        raise Refused(f"the message's args is a {type(args).__name__}, not a JSON list")
    kwargs = data.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise Refused(f"the message's kwargs is a {type(kwargs).__name__}, not a JSON object")
    message_id = data.get("message_id")
    if message_id is None:
        message_id = ""
    if not _valid_message_id(message_id):
        raise Refused(
            f"the message's message_id must be a string of at most {MAX_MESSAGE_ID_CHARS} "
            "printable ASCII characters"
        )
    timestamp = data.get("message_timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        timestamp = 0
    return Envelope(tuple(args), kwargs, message_id, timestamp)
