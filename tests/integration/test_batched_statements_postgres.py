"""Many rows in one statement on PostgreSQL (`models.batched`): what a flush or an executemany
writes is exactly what one statement per row would write, with the same errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, and_, bindparam, delete, event, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from models import AuditEvent, ClientInstruction, OutboxEvent, Submission, make_engine
from models.db import make_session_factory

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 24, 9, 30, 0, 123456, tzinfo=UTC)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def one_per_row(engine: Engine) -> list[str]:
    """The executemany statements that still went out one per row: a listener after the
    batching one only runs for statements it left alone."""
    left: list[str] = []

    @event.listens_for(engine, "do_executemany")
    def _left_alone(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        left.append(statement)

    return left


def submission(message_id: str, **values: Any) -> Submission:
    defaults: dict[str, Any] = {
        "instruction_type": "INTERNAL_CASH",
        "is_bulk": False,
        "endpoint_path": "/gw/api/v1/instructions",
        "request_json": '{"a": 1}',
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Submission(message_id=message_id, **{**defaults, **values})


def client_instruction(cid: int, sub: Submission, **values: Any) -> ClientInstruction:
    defaults: dict[str, Any] = {
        "instruction_type": "INTERNAL_CASH",
        "status": "RECEIVED",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return ClientInstruction(client_instruction_id=cid, submission=sub, **{**defaults, **values})


def stored(engine: Engine) -> list[ClientInstruction]:
    with make_session_factory(engine)() as session:
        return list(
            session.execute(select(ClientInstruction).order_by(ClientInstruction.id)).scalars()
        )


def test_a_flush_of_many_rows_writes_every_value_as_one_statement_per_table(
    engine: Engine, one_per_row: list[str]
) -> None:
    odd_text = 'tab\there, "quotes", back\\slash, {braces}, comma, ünïcode, NULL'
    values: list[dict[str, Any]] = [
        {
            "amount": Decimal("123.4500000001"),
            "account_id": "U1",
            "result": {"nested": [1, "two", None], "amount": "1.50"},
            "error_message": odd_text,
            "next_poll_at": NOW + timedelta(seconds=5),
        },
        {"amount": None, "account_id": None, "result": None, "error_message": None},
        {"amount": Decimal("-0.0000000001"), "account_id": "", "error_message": ""},
    ]
    factory = make_session_factory(engine)
    with factory.begin() as session:
        for index, row_values in enumerate(values):
            session.add(
                client_instruction(
                    700 + index, submission(f"m-{index}", is_bulk=index == 1), **row_values
                )
            )
    rows = stored(engine)
    assert [r.client_instruction_id for r in rows] == [700, 701, 702]
    for row, row_values in zip(rows, values, strict=True):
        for key, value in row_values.items():
            assert getattr(row, key) == value, key
    with factory() as session:
        bulk_flags = session.execute(select(Submission.is_bulk).order_by(Submission.id)).scalars()
        assert list(bulk_flags) == [False, True, False]
    assert not [s for s in one_per_row if s.startswith("INSERT")]

    # Updates of several rows by key: one statement per set of changed columns.
    with factory.begin() as session:
        loaded = list(
            session.execute(select(ClientInstruction).order_by(ClientInstruction.id)).scalars()
        )
        for index, row in enumerate(loaded):
            row.status = "PROCESSED"
            row.final_at = NOW + timedelta(minutes=index)
            row.result = {"index": index, "text": odd_text}
            row.next_poll_at = None
    after = stored(engine)
    assert [r.status for r in after] == ["PROCESSED"] * 3
    assert [r.final_at for r in after] == [NOW + timedelta(minutes=i) for i in range(3)]
    assert [r.result for r in after] == [{"index": i, "text": odd_text} for i in range(3)]
    assert [r.next_poll_at for r in after] == [None] * 3
    assert [r.amount for r in after] == [v["amount"] for v in values]
    assert not [s for s in one_per_row if s.startswith("UPDATE")]


def test_core_executemany_of_audit_and_outbox_rows_is_one_statement(
    engine: Engine, one_per_row: list[str]
) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(AuditEvent),
            [
                {
                    "at": NOW,
                    "client_instruction_id": i,
                    "reason": f"reason {i}",
                    "actor": "worker",
                    "api_latency_ms": 1.5 * i,
                    "api_response": {"i": i} if i else None,
                }
                for i in range(5)
            ],
        )
        connection.execute(
            insert(OutboxEvent),
            [
                {
                    "event_id": f"00000000-0000-0000-0000-00000000000{i}",
                    "sequence": i,
                    "routing_key": "instruction.received",
                    "body_json": "{}",
                    "created_at": NOW,
                }
                for i in range(4)
            ],
        )
        audit = connection.execute(
            select(AuditEvent.reason, AuditEvent.api_latency_ms, AuditEvent.api_response).order_by(
                AuditEvent.id
            )
        ).all()
        outbox = connection.execute(select(OutboxEvent.sequence).order_by(OutboxEvent.id)).all()
    assert [tuple(r) for r in audit] == [
        (f"reason {i}", 1.5 * i, {"i": i} if i else None) for i in range(5)
    ]
    assert [r.sequence for r in outbox] == [0, 1, 2, 3]
    assert one_per_row == []


def test_a_value_too_long_for_its_column_is_refused_not_cut_short(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with pytest.raises(DataError), factory.begin() as session:
        session.add(client_instruction(800, submission("m-1"), account_id="U" * 64))
        session.add(client_instruction(801, submission("m-2"), account_id="U" * 65))
    assert stored(engine) == []


def test_a_taken_key_fails_the_whole_statement(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with factory.begin() as session:
        session.add(client_instruction(900, submission("m-0")))
    with pytest.raises(IntegrityError), factory.begin() as session:
        session.add(client_instruction(901, submission("m-1")))
        session.add(client_instruction(900, submission("m-2")))  # the owner index refuses it
    assert [r.client_instruction_id for r in stored(engine)] == [900]


def test_an_update_that_misses_a_row_is_still_caught_as_stale(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with factory.begin() as session:
        session.add_all([client_instruction(950 + i, submission(f"m-{i}")) for i in range(3)])
    session = factory()
    try:
        loaded = list(session.execute(select(ClientInstruction)).scalars())
        with engine.begin() as other:
            other.execute(delete(ClientInstruction).where(ClientInstruction.id == loaded[1].id))
        for row in loaded:
            row.status = "PROCESSED"
        with pytest.raises(StaleDataError):
            session.commit()
    finally:
        session.close()


def test_statements_of_other_shapes_still_run_one_per_row(
    engine: Engine, one_per_row: list[str]
) -> None:
    factory = make_session_factory(engine)
    with factory.begin() as session:
        session.add_all([client_instruction(1000 + i, submission(f"m-{i}")) for i in range(3)])
    table = ClientInstruction.__table__
    with engine.begin() as connection:
        # Two conditions in the WHERE clause: not an update by key.
        result = connection.execute(
            update(table)
            .where(
                and_(
                    table.c.client_instruction_id == bindparam("cid"),
                    table.c.status == bindparam("old"),
                )
            )
            .values(status=bindparam("new")),
            [
                {"cid": 1000, "old": "RECEIVED", "new": "FAILED"},
                {"cid": 1001, "old": "SUBMITTING", "new": "FAILED"},
            ],
        )
        assert result.rowcount == 1
    assert [r.status for r in stored(engine)] == ["FAILED", "RECEIVED", "RECEIVED"]
    assert [s for s in one_per_row if s.startswith("UPDATE")]


def test_only_postgresql_engines_are_batched(sqlite_url: str) -> None:
    from models.batched import batch_executemany

    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(ValueError, match="PostgreSQL"):
            batch_executemany(engine)
        with Session(engine) as session, session.begin():
            session.add_all([client_instruction(1100 + i, submission(f"m-{i}")) for i in range(2)])
        assert [r.client_instruction_id for r in stored(engine)] == [1100, 1101]
    finally:
        engine.dispose()


def test_rows_of_several_tables_go_out_as_one_statement_parents_before_children(
    engine: Engine,
) -> None:
    from zoneinfo import ZoneInfo

    from models.batched import insert_many

    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    new_york = datetime(2026, 11, 24, 4, 30, tzinfo=ZoneInfo("America/New_York"))
    with engine.begin() as connection:
        statements.clear()
        insert_many(
            connection,
            [
                (
                    Submission.__table__,  # type: ignore[list-item]
                    [
                        {
                            "id": 50 + i,
                            "instruction_type": "X",
                            "is_bulk": False,
                            "endpoint_path": "/p",
                            "request_json": "{}",
                            "attempt_count": 0,
                            "created_at": new_york,
                            "updated_at": NOW,
                        }
                        for i in range(2)
                    ],
                ),
                (
                    ClientInstruction.__table__,  # type: ignore[list-item]
                    [
                        {
                            "id": 60 + i,
                            "client_instruction_id": 1200 + i,
                            "submission_id": 50 + i,  # a row of the same statement
                            "instruction_type": "X",
                            "status": "RECEIVED",
                            "amount": Decimal("0.1000000001"),
                            "result": {"i": i},
                            "created_at": NOW,
                            "updated_at": NOW,
                        }
                        for i in range(2)
                    ],
                ),
                (OutboxEvent.__table__, []),  # type: ignore[list-item]
            ],
        )
        assert len(statements) == 1
        with pytest.raises(ValueError, match="same keys"):
            insert_many(
                connection,
                [(AuditEvent.__table__, [{"reason": "a", "actor": "w"}, {"actor": "w"}])],  # type: ignore[list-item]
            )
    rows = stored(engine)
    assert [(r.submission_id, r.amount, r.result) for r in rows] == [
        (50, Decimal("0.1000000001"), {"i": 0}),
        (51, Decimal("0.1000000001"), {"i": 1}),
    ]
    with make_session_factory(engine)() as session:
        created = session.execute(select(Submission.created_at)).scalars().all()
    assert created == [new_york.astimezone(UTC)] * 2 and created[0].tzinfo is not None
    # A child whose parent is in no statement is refused, and nothing of the statement stays.
    with pytest.raises(IntegrityError), engine.begin() as connection:
        insert_many(
            connection,
            [
                (
                    ClientInstruction.__table__,  # type: ignore[list-item]
                    [
                        {
                            "client_instruction_id": 1300,
                            "submission_id": 999,
                            "instruction_type": "X",
                            "status": "RECEIVED",
                            "created_at": NOW,
                            "updated_at": NOW,
                        }
                    ],
                )
            ],
        )
