"""Dead letters (worker.tracking.deadletters): the original bytes kept apart for replay, a view
for people with account numbers masked and every change flagged, replay of the very bytes
received with the failure count reset."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import DeadLetter, DeadLetterOriginal, MessageFailure
from worker.audit import list_dead_letters
from worker.store import Store
from worker.tracking.deadletters import (
    MAX_BODY_BYTES,
    body_view,
    failure_key,
    letters_to_replay,
    mark_replayed,
    record_dead_letter,
)

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
BANK = "004455667788"


def message(note: str = "hello", **instruction: object) -> bytes:
    return json.dumps(
        {
            "actor_name": "submit_instruction",
            "kwargs": {"request": {"instruction": {"note": note, **instruction}}},
            "message_id": "m-1",
        }
    ).encode()


def test_an_unchanged_body_is_shown_as_received_and_flagged_original() -> None:
    raw = message()
    view = body_view(raw)
    assert view.text == raw.decode() and view.is_original and view.changes == []


def test_account_numbers_are_masked_field_by_field_even_when_the_key_is_escaped() -> None:
    # `\u0062` is "b": the text never says "bankAccountNumber", the JSON does.
    raw = message().replace(b'"note"', b'"\\u0062ankAccountNumber": "' + BANK.encode() + b'", "n"')
    assert b"bankAccountNumber" not in raw and json.loads(raw)
    view = body_view(raw)
    assert BANK not in view.text and "********7788" in view.text
    assert view.changes == ["masked"] and not view.is_original


def test_invalid_utf8_and_nul_are_replaced_and_flagged_and_numbers_still_masked() -> None:
    raw = b"\xff\xfe bankAccountNumber=" + BANK.encode() + b" \x00 end"
    view = body_view(raw)
    assert "\x00" not in view.text and BANK not in view.text
    assert view.changes == ["masked", "replaced"]


def test_a_long_body_is_cut_at_64_kib_and_flagged() -> None:
    view = body_view(message(note="é" * 100_000))
    assert len(view.text.encode()) <= MAX_BODY_BYTES and view.changes == ["truncated"]


def test_the_original_bytes_are_kept_apart_and_replayed_unchanged(store: Store) -> None:
    raw = b"\xff\xfe\x00\x01 bankAccountNumber=" + BANK.encode() + b" \x00"
    letter_id = record_dead_letter(store, body=raw, reason="not UTF-8", now=NOW)
    with store.transaction() as tx:
        [replay] = letters_to_replay(tx, [letter_id])
        assert replay.original == raw  # byte for byte, NUL and invalid UTF-8 included
        assert BANK not in replay.letter.body
    with store.transaction() as tx:
        [shown] = list_dead_letters(tx)
    assert BANK not in json.dumps(shown)
    assert shown["bodyIsOriginal"] is False and shown["replayable"] is True
    assert shown["bodyChanges"] == ["masked", "replaced"]


def test_a_body_above_the_size_limit_is_not_kept_and_cannot_be_replayed(
    store: Store, factory: sessionmaker[Session]
) -> None:
    prefix = message()[:100]
    letter_id = record_dead_letter(
        store, body=prefix, reason="too big", now=NOW, received_bytes=5_000_000
    )
    with factory() as session:
        letter = session.get(DeadLetter, letter_id)
        assert letter is not None and letter.body_size == 5_000_000 and letter.truncated
        assert session.execute(select(DeadLetterOriginal)).first() is None
    with store.transaction() as tx, pytest.raises(ValueError, match="not kept whole"):
        letters_to_replay(tx, [letter_id])


def test_the_same_message_seen_again_is_counted_on_its_letter(
    store: Store, factory: sessionmaker[Session]
) -> None:
    first = record_dead_letter(store, body=message(), reason="a", now=NOW, message_id="m-1")
    again = record_dead_letter(store, body=message(), reason="b", now=NOW, message_id="m-1")
    other = record_dead_letter(store, body=message("x"), reason="c", now=NOW, message_id="m-1")
    assert first == again != other
    with factory() as session:
        letter = session.get(DeadLetter, first)
        assert letter is not None and letter.seen_count == 2 and letter.reason == "b"


def test_replay_resets_the_failure_count_of_the_message(
    store: Store, factory: sessionmaker[Session]
) -> None:
    raw = message()
    letter_id = record_dead_letter(store, body=raw, reason="x", now=NOW, message_id="m-1")
    with factory.begin() as session:
        for key in ("m-1", failure_key(None, raw), "other"):
            session.add(
                MessageFailure(
                    key=key,
                    failure_count=12,
                    last_reason="x",
                    first_failed_at=NOW,
                    last_failed_at=NOW,
                )
            )
    with store.transaction() as tx:
        mark_replayed(tx, letters_to_replay(tx, [letter_id]), NOW)
    with factory() as session:
        assert list(session.execute(select(MessageFailure.key)).scalars()) == ["other"]
        letter = session.get(DeadLetter, letter_id)
        assert letter is not None and letter.replay_count == 1
