"""The inbound edge's judgement of raw bytes (worker.inbound.arrival): every limit, options
dropped, no exception whatever the bytes, and nothing recursed into deeply."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.inbound.arrival import (
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
    Refused,
    inspect,
    parse_json,
)

ACTOR = "submit_instruction"
LIMIT = 2 * 1024 * 1024


def envelope(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "queue_name": "ibkr.instructions",
        "actor_name": ACTOR,
        "args": [],
        "kwargs": {"request": {"instructionType": "INTERNAL_CASH_TRANSFER", "instruction": {}}},
        "options": {},
        "message_id": "m-1",
        "message_timestamp": 1,
    }
    body.update(changes)
    return body


def judge(raw: bytes, limit: int = LIMIT) -> Any:
    return inspect(raw, max_message_bytes=limit, actor_name=ACTOR)


def test_a_plain_message_passes_with_its_arguments_and_nothing_else() -> None:
    raw = json.dumps(envelope(options={"eta": 9e12, "pipe_target": {}, "retries": 5})).encode()
    arrival, kept = judge(raw)
    assert arrival.rejection is None and arrival.original == raw and arrival.message_id == "m-1"
    assert kept.kwargs == envelope()["kwargs"] and kept.args == ()
    assert not hasattr(kept, "options")


def test_numbers_are_decimals_with_their_exact_digits() -> None:
    raw = b'{"a": 1234567890123.1234567891, "b": 12, "c": 1e2}'
    assert parse_json(raw) == {"a": Decimal("1234567890123.1234567891"), "b": 12, "c": 100}
    assert str(parse_json(raw)["a"]) == "1234567890123.1234567891"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe binary", "not UTF-8"),
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON list, not a dramatiq message"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e-999999999}', "1e-999999999"),
        (b'{"a": 1e999999999}', "1e999999999"),
        (b'{"a": ' + b"9" * 5000 + b"}", "integer of 5,000 digits"),
        (b"[" * 100_000 + b"]" * 100_000, "more than 100,000 JSON values"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested deeper than 32"),
        (b'{"a": [[[[' + b"]" * 2, "brackets do not match"),
        (json.dumps(envelope(actor_name="transfer")).encode(), "actor 'transfer'"),
        (json.dumps(envelope(args={"a": 1})).encode(), "args is a dict"),
        (json.dumps(envelope(kwargs=[1])).encode(), "kwargs is a list"),
        (json.dumps(envelope(message_id=12)).encode(), "message_id must be a string"),
        (json.dumps(envelope(message_id="x" * 65)).encode(), "message_id must be a string"),
        (json.dumps(envelope(message_id="a\x00b")).encode(), "message_id must be a string"),
    ],
)
def test_what_cannot_be_processed_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    arrival, kept = judge(raw)
    assert kept is None and arrival.rejection is not None
    assert reason in arrival.rejection, arrival.rejection
    assert arrival.original == raw  # within the size limit: kept for replay, as received


def test_a_message_above_the_size_limit_is_refused_unread_with_its_id_and_a_prefix() -> None:
    raw = json.dumps(envelope(kwargs={"note": "x" * 100_000}, message_id="big-1")).encode()
    arrival, kept = judge(raw, limit=65_536)
    assert kept is None and "above MAX_MESSAGE_BYTES (65,536)" in (arrival.rejection or "")
    assert arrival.original is None and arrival.kept_bytes == raw[: 64 * 1024]
    assert arrival.message_id == "big-1" and arrival.size_bytes == len(raw)


def test_a_message_without_a_message_id_keeps_an_empty_one() -> None:
    """dramatiq would invent one (a fresh uuid) when decoding; the intake must see none."""
    for raw in (
        json.dumps({k: v for k, v in envelope().items() if k != "message_id"}).encode(),
        json.dumps(envelope(message_id="")).encode(),
        json.dumps(envelope(message_id=None)).encode(),
    ):
        arrival, kept = judge(raw)
        assert arrival.rejection is None and kept.message_id == "" and arrival.message_id == ""


def test_depth_is_judged_on_the_bytes_before_the_parser_recurses() -> None:
    """Revert check: with `_depth_within` returning True, the parser meets 50,000 levels and
    gives up with RecursionError (the fallback's reason names no bracket check)."""
    depth = 50_000  # fewer values than the limit: only the depth check can refuse it
    raw = b'{"kwargs": ' + b"[" * depth + b"]" * depth + b"}"
    assert sys.getrecursionlimit() < depth
    with pytest.raises(Refused, match="or its brackets do not match"):
        parse_json(raw)
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(at_limit) is not None


def test_brackets_and_commas_inside_strings_are_not_structure() -> None:
    text = "[" * 50 + "," * (MAX_JSON_VALUES + 10)
    arrival, kept = judge(json.dumps(envelope(kwargs={"note": text})).encode())
    assert arrival.rejection is None and kept.kwargs["note"] == text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.decimals(allow_nan=False, allow_infinity=False, places=4),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_are_judged_without_an_exception(raw: bytes) -> None:
    arrival, kept = judge(raw)
    assert (arrival.rejection is None) == (kept is not None)


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=60))
def test_any_json_within_the_limits_parses_back_to_itself(value: Any, extra_depth: int) -> None:
    wrapped = value
    for _ in range(extra_depth):
        wrapped = [wrapped]
    from worker.jsontext import dumps

    raw = dumps(wrapped).encode()
    try:
        parsed = parse_json(raw)
    except Refused as error:
        assert "nested deeper" in error.reason
        return
    assert parsed == wrapped
