"""Dead letters on PostgreSQL, whose text columns refuse NUL: a binary body must still be
recorded (once), or the drain would fail on it forever and block every letter behind it; its
original bytes are kept exactly (bytea) for replay, apart from the view."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from models import DeadLetter, make_session_factory
from worker.store import Store
from worker.tracking.deadletters import letters_to_replay, record_dead_letter

pytestmark = pytest.mark.postgres


def test_a_body_with_nul_bytes_is_recorded_and_counted_again_when_seen_again(pg_url: str) -> None:
    store = Store.connect(pg_url)
    body = b"\xff\xfe\x00\x01 binary garbage \x00"
    try:
        now = datetime.now(UTC)
        first = record_dead_letter(store, body=body, reason="not a message \x00", now=now)
        again = record_dead_letter(store, body=body, reason="not a message \x00", now=now)
        with make_session_factory(store.engine)() as session:
            [letter] = session.execute(select(DeadLetter)).scalars().all()
        with store.transaction() as tx:
            [replay] = letters_to_replay(tx, [letter.id])
    finally:
        store.close()
    assert first == again == letter.id
    assert letter.seen_count == 2 and letter.body_size == len(body)
    assert "\x00" not in letter.body and "binary garbage" in letter.body
    assert "\x00" not in letter.reason
    assert replay.original == body and letter.body_replaced and not letter.truncated
