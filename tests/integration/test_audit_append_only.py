"""On PostgreSQL the audit trail is append-only: the database itself refuses changes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from models import AuditEvent, make_engine, make_session_factory


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def _insert_event(engine: Engine) -> int:
    with make_session_factory(engine).begin() as session:
        event = AuditEvent(
            at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
            client_instruction_id=1012983,
            from_status=None,
            to_status="RECEIVED",
            reason="stored",
            actor="test",
        )
        session.add(event)
        session.flush()
        return event.id


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one())


def test_insert_into_audit_events_works(pg_engine: Engine) -> None:
    _insert_event(pg_engine)
    _insert_event(pg_engine)

    assert _count(pg_engine) == 2


@pytest.mark.parametrize(
    ("operation", "statement"),
    [
        ("UPDATE", "UPDATE audit_events SET reason = 'rewritten'"),
        ("DELETE", "DELETE FROM audit_events"),
        ("TRUNCATE", "TRUNCATE audit_events"),
    ],
)
def test_changing_audit_events_is_refused(
    pg_engine: Engine, operation: str, statement: str
) -> None:
    _insert_event(pg_engine)

    with pytest.raises(DBAPIError, match=f"append-only: {operation} refused"):
        with pg_engine.begin() as connection:
            connection.execute(text(statement))

    assert _count(pg_engine) == 1
    with pg_engine.connect() as connection:
        assert connection.execute(text("SELECT reason FROM audit_events")).scalar_one() == "stored"
