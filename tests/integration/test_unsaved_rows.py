"""Rows made and inserted without the ORM's unit of work (`models.unsaved`), on PostgreSQL and
SQLite: what they write, the ids they get, and what the worker's batch intake does with them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import ClientInstruction, Instruction, InstructionSet, Submission
from models.db import make_engine, make_session_factory
from models.unsaved import insert_unsaved, new_unsaved
from tests.unit.tracking_support import ScriptedIbkr, make_context, transfer
from worker.clock import ManualClock
from worker.tracking.intake import Inbound, receive_all
from worker.tracking.record import insert_at_commit

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


SUBMISSION: dict[str, Any] = {
    "instruction_type": "INTERNAL_CASH_TRANSFER",
    "endpoint_path": "/gw/api/v1/instructions",
    "request_json": "{}",
    "created_at": NOW,
    "updated_at": NOW,
}


def submission(message_id: str) -> Submission:
    return new_unsaved(Submission, message_id=message_id, **SUBMISSION)


def orm_submission(message_id: str) -> Submission:
    """A submission made the ordinary way (the session inserts it at the flush)."""
    return Submission(message_id=message_id, **SUBMISSION)


def test_an_unsaved_row_has_every_column_with_its_default_and_no_session() -> None:
    row = new_unsaved(ClientInstruction, client_instruction_id=7, status="RECEIVED")
    assert (row.client_instruction_id, row.status) == (7, "RECEIVED")
    assert (row.attempt_count, row.poll_count, row.event_sequence) == (0, 0, 0)
    assert row.id is None and row.amount is None and row.result is None
    row.status = "SUBMITTING"  # attributes are written as on any instance
    assert row.status == "SUBMITTING"
    with pytest.raises(TypeError, match="no column nonsense"):
        new_unsaved(ClientInstruction, nonsense=1)
    # A relationship is set as loaded (read, never written).
    parent = new_unsaved(Submission, id=3, is_bulk=True)
    child = new_unsaved(ClientInstruction, submission_id=3, submission=parent)
    assert child.submission is parent and child.submission.is_bulk


def test_unsaved_rows_are_inserted_in_order_with_ids_from_the_table_or_given(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        with factory.begin() as session:
            session.add(orm_submission("orm"))  # an ordinary row first: the new ids follow it
        with factory.begin() as session:
            # None of these has an id: the column default gives them, in order.
            plain = [submission(f"m-{i}") for i in range(3)]
            # These have theirs.
            given = [submission(f"n-{i}") for i in range(2)]
            given[0].id, given[1].id = 1000, 1001
            insert_unsaved(session, plain, given)
            with pytest.raises(TypeError, match="one model"):
                insert_unsaved(session, [submission("x"), new_unsaved(ClientInstruction)])
            half = [submission("y"), submission("z")]
            half[0].id = 2000
            with pytest.raises(ValueError, match="1 of 2 rows have no id"):
                insert_unsaved(session, half)
        assert [row.id for row in plain] == [None] * 3  # not read back
        with factory() as session:
            stored = session.execute(
                select(Submission.id, Submission.message_id, Submission.attempt_count).order_by(
                    Submission.id
                )
            ).all()
        by_message = {r.message_id: r.id for r in stored}
        assert [r.message_id for r in stored] == ["orm", "m-0", "m-1", "m-2", "n-0", "n-1"]
        assert (by_message["n-0"], by_message["n-1"]) == (1000, 1001)
        assert {r.attempt_count for r in stored} == {0}
    finally:
        engine.dispose()


def test_rows_inserted_at_commit_carry_the_changes_made_until_then(database_url: str) -> None:
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        with factory.begin() as session:
            instruction = new_unsaved(Instruction, instruction_id=42, created_at=NOW)
            instruction_set = new_unsaved(
                InstructionSet, instruction_set_id=77, created_at=NOW, updated_at=NOW
            )
            insert_at_commit(session, instruction)
            insert_at_commit(session, instruction_set)
            instruction.ibkr_status = "PROCESSED"
            instruction.result = {"amount": "1.50"}
            instruction.updated_at = NOW
            instruction_set.member_count = 3
        with factory() as session:
            stored = session.execute(select(Instruction)).scalar_one()
            stored_set = session.execute(select(InstructionSet)).scalar_one()
        assert (stored.instruction_id, stored.ibkr_status, stored.result) == (
            42,
            "PROCESSED",
            {"amount": "1.50"},
        )
        assert (stored_set.instruction_set_id, stored_set.member_count) == (77, 3)
        # A rolled-back transaction writes none of them.
        with pytest.raises(RuntimeError), factory.begin() as session:
            insert_at_commit(session, new_unsaved(Instruction, instruction_id=43, created_at=NOW))
            raise RuntimeError("roll back")
        with factory() as session:
            assert session.execute(select(Instruction.instruction_id)).scalars().all() == [42]
    finally:
        engine.dispose()


def test_an_id_assigned_in_a_batch_never_takes_one_another_request_of_it_gave(
    database_url: str,
) -> None:
    ctx = make_context(database_url, ScriptedIbkr(), ManualClock())
    # The sequence's next id (the start, 5000) is given by the first request; the second
    # request has no id and must get another one although the first is not written yet.
    inbounds = [
        Inbound(transfer(5000), None, "m-given", True),
        Inbound(transfer(None), None, "m-assigned", True),
    ]
    with ctx.session_factory.begin() as session:
        finishes = receive_all(session, ctx, inbounds)
    intakes: list[Any] = [finish() if finish else None for finish in finishes]
    assert [i.disposition for i in intakes] == ["new", "new"]
    assert intakes[0].client_instruction_ids == (5000,)
    assert intakes[1].client_instruction_ids[0] not in (5000, None)
    with Session(make_engine(database_url)) as session:
        stored = session.execute(
            select(
                ClientInstruction.client_instruction_id, ClientInstruction.submission_id
            ).order_by(ClientInstruction.id)
        ).all()
    assert [r.client_instruction_id for r in stored] == [5000, intakes[1].client_instruction_ids[0]]
    assert [r.submission_id for r in stored] == [i.submission_id for i in intakes]


@pytest.mark.postgres
def test_ids_drawn_ahead_serve_later_calls_without_a_query(pg_url: str) -> None:
    from sqlalchemy import event

    from models.db import allocate_ids
    from models.unsaved import table_of

    engine = make_engine(pg_url)
    queries: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
    submissions, clients = table_of(Submission), table_of(ClientInstruction)
    try:
        with make_session_factory(engine).begin() as session:
            first = allocate_ids(session, {submissions: 2, clients: 3}, ahead=5)
            drawing = len(queries)
            second = allocate_ids(session, {submissions: 5, clients: 5})
            assert len(queries) == drawing  # served from what was drawn ahead
            third = allocate_ids(session, {submissions: 1}, ahead=5)
            assert len(queries) == drawing + 1  # none left: drawn again
        for table in (submissions, clients):
            ids = first[table] + second[table] + third.get(table, [])
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert len(first[submissions]) == 2 and len(second[clients]) == 5
        # The sequence moved past every id handed out: the column default never repeats one.
        with make_session_factory(engine).begin() as session:
            session.add(orm_submission("after"))
        with make_session_factory(engine)() as session:
            after = session.execute(
                select(Submission.id).where(Submission.message_id == "after")
            ).scalar_one()
        assert after > max(first[submissions] + second[submissions] + third[submissions])
    finally:
        engine.dispose()


def test_one_of_matches_exactly_the_values_given(database_url: str) -> None:
    from models.db import one_of

    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    long_id = "m" * 64
    try:
        with factory.begin() as session:
            insert_unsaved(session, [submission(long_id), submission("short"), submission("x")])
        with factory() as session:

            def found(values: list[str]) -> list[str]:
                return sorted(
                    session.execute(
                        select(Submission.message_id).where(
                            one_of(session, Submission.message_id, values)
                        )
                    ).scalars()
                )

            assert found([long_id, "short", "absent"]) == sorted([long_id, "short"])
            # A longer value is not cut to the column's length and matched.
            assert found([long_id + "-more"]) == []
            assert found([]) == []
    finally:
        engine.dispose()


def test_update_changed_writes_only_what_changed_and_notices_a_missing_row(
    database_url: str,
) -> None:
    from sqlalchemy import delete, event
    from sqlalchemy.orm.exc import StaleDataError

    from models.unsaved import update_changed

    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    statements: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement),
    )
    try:
        with factory.begin() as session:
            insert_unsaved(session, [submission(f"m-{i}") for i in range(3)])
        with factory() as session:
            stored = session.execute(select(Submission).order_by(Submission.id)).scalars().all()
            values = [
                {c.key: getattr(row, c.key) for c in Submission.__table__.columns} for row in stored
            ]
        with factory.begin() as session:
            rows = [new_unsaved(Submission, **v) for v in values]
            rows[0].http_status = 201
            rows[0].instruction_set_id = 77
            rows[1].http_status = 202
            rows[2].http_status = rows[2].http_status  # set to what it was: not a change
            statements.clear()
            update_changed(session, rows)
            # Two sets of changed columns: two statements; the unchanged row in neither.
            assert len([s for s in statements if s.startswith("UPDATE")]) == 2
        with factory() as session:
            after = session.execute(
                select(Submission.http_status, Submission.instruction_set_id).order_by(
                    Submission.id
                )
            ).all()
        assert [tuple(r) for r in after] == [(201, 77), (202, None), (None, None)]
        with factory.begin() as session:
            rows = [new_unsaved(Submission, **v) for v in values]
            session.execute(delete(Submission).where(Submission.id == values[1]["id"]))
            for row in rows:
                row.http_status = 500
            with pytest.raises(StaleDataError):
                update_changed(session, rows)
    finally:
        engine.dispose()
