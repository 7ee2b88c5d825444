"""The store's one way to write a row (`worker.store.database.Tx` over `worker.store.batched`),
on PostgreSQL and SQLite: what it writes, the ids rows get, what it updates, and what the
database refuses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, event, select

from models import ClientInstruction as ClientInstructionTable
from models import Submission as SubmissionTable
from models import make_session_factory
from tests.unit.tracking_support import ScriptedIbkr, make_context, transfer
from worker.clock import ManualClock
from worker.store import Store, ibkr, tracked
from worker.store.database import table_of
from worker.store.errors import KeyTaken, StaleRow, ValueRefused
from worker.store.ids import allocate
from worker.store.rows import ClientInstruction, Instruction, InstructionSet, Submission
from worker.tracking.intake import Inbound, receive_all

NOW = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
ODD_TEXT = 'tab\there, "quotes", back\\slash, {braces}, comma, ünïcode, NULL'


class RolledBack(Exception):
    pass


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url)
    yield store
    store.close()


def submission(message_id: str, **values: Any) -> Submission:
    defaults: dict[str, Any] = {
        "instruction_type": "INTERNAL_CASH_TRANSFER",
        "endpoint_path": "/gw/api/v1/instructions",
        "request_json": "{}",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Submission(message_id=message_id, **{**defaults, **values})


def member(cid: int, submission_id: int, **values: Any) -> ClientInstruction:
    defaults: dict[str, Any] = {
        "instruction_type": "INTERNAL_CASH_TRANSFER",
        "status": "RECEIVED",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return ClientInstruction(
        client_instruction_id=cid, submission_id=submission_id, **{**defaults, **values}
    )


def stored_submissions(store: Store) -> list[Any]:
    with make_session_factory(store.engine)() as session:
        query = select(SubmissionTable).order_by(SubmissionTable.id)
        return list(session.execute(query).scalars())


def stored_members(store: Store) -> list[Any]:
    with make_session_factory(store.engine)() as session:
        query = select(ClientInstructionTable).order_by(ClientInstructionTable.id)
        return list(session.execute(query).scalars())


def statements(store: Store) -> list[tuple[str, bool]]:
    """Every statement `store` sends from now on, and whether it went as an executemany."""
    seen: list[tuple[str, bool]] = []

    def _seen(_c: Any, _cursor: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
        seen.append((statement, many))

    event.listen(store.engine, "before_cursor_execute", _seen)
    return seen


def parent_with_members(store: Store, first_cid: int, count: int) -> Submission:
    """A stored submission with `count` members (clientInstructionIds from `first_cid`)."""
    with store.transaction() as tx:
        ids = allocate(tx, {Submission: 1, ClientInstruction: count})
        parent = submission(f"m-{first_cid}", id=ids[Submission][0])
        tx.insert(parent)
        for position, row_id in enumerate(ids[ClientInstruction]):
            tx.insert(member(first_cid + position, parent.id, id=row_id, position=position))
    return parent


def test_new_rows_are_written_at_the_commit_with_their_ids_given_or_defaulted(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.insert(submission("first"))  # no id: the column default gives it (not read back)
    with store.transaction() as tx:
        given = [submission(f"n-{i}") for i in range(2)]
        ids = allocate(tx, {Submission: 2})[Submission]
        for row, row_id in zip(given, ids, strict=True):
            row.id = row_id
            tx.insert(row)
        made = submission("later", id=allocate(tx, {Submission: 1})[Submission][0])
        tx.insert(made)
        made.attempt_count = 3  # a change after `insert` is written too: rows go out at commit
    rows = stored_submissions(store)
    assert [r.message_id for r in rows] == ["first", "n-0", "n-1", "later"]
    assert [r.id for r in rows[1:]] == [*ids, made.id] and ids == sorted(ids)
    assert (rows[0].attempt_count, rows[3].attempt_count) == (0, 3)
    with pytest.raises(ValueError, match="1 of 2 new rows have no id"), store.transaction() as tx:
        tx.insert(submission("with", id=5000))
        tx.insert(submission("without"))
    # A rolled-back transaction writes nothing it made.
    with pytest.raises(RolledBack), store.transaction() as tx:
        tx.insert(submission("never"))
        raise RolledBack
    assert [r.message_id for r in stored_submissions(store)][-1] == "later"


def test_every_value_is_written_exactly_and_parents_go_out_before_children(store: Store) -> None:
    values: list[dict[str, Any]] = [
        {
            "amount": Decimal("123.4500000001"),
            "account_id": "U1",
            "result": {"nested": [1, "two", None], "amount": "1.50"},
            "error_message": ODD_TEXT,
            "next_poll_at": NOW + timedelta(seconds=5),
        },
        {"amount": None, "account_id": None, "result": None, "error_message": None},
        {"amount": Decimal("-0.0000000001"), "account_id": "", "error_message": ""},
    ]
    seen = statements(store)
    with store.transaction() as tx:
        ids = allocate(tx, {Submission: 3, ClientInstruction: 3})
        seen.clear()
        for index, row_values in enumerate(values):
            parent = submission(f"m-{index}", is_bulk=index == 1, id=ids[Submission][index])
            child = member(700 + index, parent.id, id=ids[ClientInstruction][index], **row_values)
            tx.insert(child)  # the child first: the store writes parents first
            tx.insert(parent)
    inserts = [s for s, _ in seen if s.lstrip().upper().startswith(("INSERT", "WITH"))]
    if store.postgresql:
        # Both tables in one statement, no executemany.
        assert len(inserts) == 1 and not any(many for _, many in seen)
    rows = stored_members(store)
    assert [r.client_instruction_id for r in rows] == [700, 701, 702]
    for row, row_values in zip(rows, values, strict=True):
        for key, value in row_values.items():
            assert getattr(row, key) == value, key
    assert [s.is_bulk for s in stored_submissions(store)] == [False, True, False]


def test_an_adopted_row_is_updated_with_the_columns_that_changed_only(store: Store) -> None:
    parent = parent_with_members(store, 800, 3)
    seen = statements(store)
    with store.transaction() as tx:
        locked = tracked.lock_members(tx, [parent.id])[parent.id]
        first, second, third = locked.members
        # The same row read again in the transaction is the instance adopted first.
        assert tracked.lock_row(tx, first.id) is first and first.submission is locked
        first.status, first.result = "PROCESSED", {"text": ODD_TEXT}
        second.status = "PROCESSED"
        third.status = third.status  # set to what it was: no change
        locked.http_status = 201
        seen.clear()
    updates = [s for s, _ in seen if s.lstrip().upper().startswith("UPDATE")]
    # Two sets of changed columns among the members, one for the submission.
    assert len(updates) == 3
    assert all("error_message" not in s for s in updates)  # unchanged columns are not written
    if store.postgresql:
        assert not any(many for _, many in seen)
    rows = stored_members(store)
    assert [(r.status, r.result) for r in rows] == [
        ("PROCESSED", {"text": ODD_TEXT}),
        ("PROCESSED", None),
        ("RECEIVED", None),
    ]
    assert stored_submissions(store)[0].http_status == 201


def test_an_update_of_a_row_that_is_gone_is_refused_as_stale(store: Store) -> None:
    parent = parent_with_members(store, 900, 2)
    with pytest.raises(StaleRow), store.transaction() as tx:
        rows = tracked.lock_members(tx, [parent.id])[parent.id].members
        table = table_of(ClientInstruction)
        tx.execute(delete(table).where(table.c.id == rows[1].id))
        for row in rows:
            row.status = "PROCESSED"
    assert [r.status for r in stored_members(store)] == ["RECEIVED", "RECEIVED"]


@pytest.mark.postgres
def test_a_value_too_long_is_refused_not_cut_short_and_a_taken_key_fails_the_whole_write(
    pg_url: str,
) -> None:
    store = Store.connect(pg_url)
    try:
        parent = parent_with_members(store, 1000, 1)
        with pytest.raises(ValueRefused), store.transaction() as tx:
            tx.insert(member(1001, parent.id, account_id="U" * 64))
            tx.insert(member(1002, parent.id, account_id="U" * 65))
        with pytest.raises(KeyTaken), store.transaction() as tx:
            tx.insert(member(1003, parent.id))
            tx.insert(member(1000, parent.id))  # the owner index refuses it
        assert [r.client_instruction_id for r in stored_members(store)] == [1000]
    finally:
        store.close()


def test_ibkr_rows_made_in_a_transaction_are_found_by_the_next_look_up(store: Store) -> None:
    with store.transaction() as tx:
        ibkr.look_up(tx, instruction_ids=[42], set_ids=[77])
        assert ibkr.instruction(tx, 42) is None
        made = Instruction(instruction_id=42, created_at=NOW, updated_at=NOW)
        ibkr.add_instruction(tx, made)
        ibkr.add_set(tx, InstructionSet(instruction_set_id=77, created_at=NOW, updated_at=NOW))
        assert ibkr.instruction(tx, 42) is made
        made.ibkr_status = "PROCESSED"
    with store.transaction() as tx:
        found = ibkr.instruction(tx, 42)
        assert found is not None and found.ibkr_status == "PROCESSED" and found.id > 0
        found_set = ibkr.instruction_set(tx, 77)
        assert found_set is not None
        found_set.member_count = 3
    with store.transaction() as tx:
        again = ibkr.instruction_set(tx, 77)
        assert again is not None and again.member_count == 3


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
    try:
        with ctx.store.transaction() as tx:
            finishes = receive_all(tx, ctx, inbounds)
        intakes: list[Any] = [finish() if finish else None for finish in finishes]
        assert [i.disposition for i in intakes] == ["new", "new"]
        assigned = intakes[1].client_instruction_ids[0]
        assert intakes[0].client_instruction_ids == (5000,) and assigned not in (5000, None)
        rows = stored_members(ctx.store)
        assert [r.client_instruction_id for r in rows] == [5000, assigned]
        assert [r.submission_id for r in rows] == [i.submission_id for i in intakes]
    finally:
        ctx.store.close()


def test_one_of_matches_exactly_the_values_given(store: Store) -> None:
    long_id = "m" * 64
    with store.transaction() as tx:
        for message_id in (long_id, "short", "x"):
            tx.insert(submission(message_id))
    column = table_of(Submission).c.message_id

    def found(values: list[str]) -> list[str]:
        with store.transaction() as tx:
            return sorted(tx.execute(select(column).where(tx.one_of(column, values))).scalars())

    assert found([long_id, "short", "absent"]) == sorted([long_id, "short"])
    # A longer value is not cut to the column's length and matched.
    assert found([long_id + "-more"]) == []
    assert found([]) == []


@pytest.mark.postgres
def test_ids_drawn_ahead_serve_later_calls_without_a_query(pg_url: str) -> None:
    store = Store.connect(pg_url)
    seen = statements(store)
    try:
        with store.transaction() as tx:
            first = allocate(tx, {Submission: 2, ClientInstruction: 3}, ahead=5)
            drawing = len(seen)
            second = allocate(tx, {Submission: 5, ClientInstruction: 5})
            assert len(seen) == drawing  # served from what was drawn ahead
            third = allocate(tx, {Submission: 1}, ahead=5)
            assert len(seen) == drawing + 1  # none left: drawn again
        for row_type in (Submission, ClientInstruction):
            ids = first[row_type] + second[row_type] + third.get(row_type, [])
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
        # The sequence moved past every id handed out: the column default never repeats one.
        with store.transaction() as tx:
            tx.insert(submission("after"))
        after = [s.id for s in stored_submissions(store) if s.message_id == "after"]
        assert after[0] > max(first[Submission] + second[Submission] + third[Submission])
    finally:
        store.close()
