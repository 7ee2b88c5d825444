"""Receiving and recording many requests in one PostgreSQL transaction (the worker's group
commit) ends exactly as receiving and recording each alone would."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event, func, select

from models import AuditEvent, ClientInstruction, Instruction, InstructionSet, OutboxEvent
from tests.unit.tracking_support import (
    ScriptedIbkr,
    answer,
    envelope,
    make_context,
    sessions,
    transfer,
)
from worker.actors import grouped_steps
from worker.clock import ManualClock
from worker.store import Store
from worker.store.errors import ValueRefused
from worker.store.group import GroupCommit
from worker.tracking.context import TrackingContext
from worker.tracking.intake import Inbound, Intake, Unprocessable, receive_all
from worker.tracking.submit import Answer, record_answers


def context(pg_url: str) -> TrackingContext:
    return make_context(pg_url, ScriptedIbkr(), ManualClock())


def rows(ctx: TrackingContext) -> list[ClientInstruction]:
    with sessions(ctx)() as session:
        return list(
            session.execute(select(ClientInstruction).order_by(ClientInstruction.id)).scalars()
        )


def count(ctx: TrackingContext, model: Any) -> int:
    with sessions(ctx)() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def receive_together(ctx: TrackingContext, inbounds: list[Inbound]) -> list[Any]:
    with ctx.store.transaction() as tx:
        finishes = receive_all(tx, ctx, inbounds)
    return [finish() if finish is not None else None for finish in finishes]


def test_many_requests_in_one_transaction_get_rows_ids_in_order_and_their_events(
    pg_url: str,
) -> None:
    ctx = context(pg_url)
    inbounds = [Inbound(transfer(9000 + i), f"c-{i}", f"m-{i}", True) for i in range(10)]
    intakes = receive_together(ctx, inbounds)
    assert [i.disposition for i in intakes] == ["new"] * 10
    assert all(i.attempt is not None and i.attempt.number == 1 for i in intakes)
    stored = rows(ctx)
    # Ids come from the sequence in the order the requests were received.
    assert [r.client_instruction_id for r in stored] == [9000 + i for i in range(10)]
    assert [r.submission_id for r in stored] == sorted(i.submission_id for i in intakes)
    assert {r.status for r in stored} == {"SUBMITTING"}
    assert count(ctx, AuditEvent) == 20 and count(ctx, OutboxEvent) == 20
    with sessions(ctx)() as session:
        trail = session.execute(
            select(AuditEvent.client_instruction_pk, AuditEvent.to_status).order_by(AuditEvent.id)
        ).all()
    assert trail[:2] == [(stored[0].id, "RECEIVED"), (stored[0].id, "SUBMITTING")]


def test_a_repeated_id_or_message_in_one_batch_is_received_after_the_first_commits(
    pg_url: str,
) -> None:
    ctx = context(pg_url)
    first = Inbound(transfer(9100), None, "m-1", True)
    same_id_other_message = Inbound(transfer(9100), None, "m-2", True)
    same_message = Inbound(transfer(9100), None, "m-1", True)
    intakes = receive_together(ctx, [first, same_id_other_message, same_message])
    assert intakes[0].disposition == "new" and intakes[1:] == [None, None]
    # Run alone afterwards (as the group does), both are recognised as the same intent.
    again = receive_together(ctx, [same_id_other_message])
    assert again[0].disposition == "same_intent"
    again = receive_together(ctx, [same_message])
    assert again[0].disposition == "same_intent"
    assert [r.client_instruction_id for r in rows(ctx)] == [9100]


def test_a_value_the_database_refuses_fails_the_whole_batch_and_nothing_of_it_is_kept(
    pg_url: str,
) -> None:
    ctx = context(pg_url)
    good = Inbound(transfer(9200), None, "m-good", True)
    bad = Inbound(transfer(9201), "nul\x00byte", "m-bad", True)  # PostgreSQL refuses NUL
    with pytest.raises(ValueRefused):
        receive_together(ctx, [good, bad])
    assert rows(ctx) == [] and count(ctx, AuditEvent) == 0


def test_through_the_group_a_refused_request_harms_none_of_the_others(pg_url: str) -> None:
    ctx = context(pg_url)
    group = GroupCommit(ctx.store)
    steps = grouped_steps(ctx, group)
    inbounds = [Inbound(transfer(9300 + i), None, f"m-{i}", True) for i in range(8)]
    inbounds.append(Inbound(transfer(9399), "nul\x00byte", "m-bad", True))
    results: dict[str, Intake | Exception] = {}

    def one(inbound: Inbound) -> None:
        assert inbound.message_id is not None
        try:
            results[inbound.message_id] = group.run(steps.receive, inbound)
        except Exception as error:  # each thread keeps what it got
            results[inbound.message_id] = error

    threads = [threading.Thread(target=one, args=(inbound,)) for inbound in inbounds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    group.stop()
    assert isinstance(results.pop("m-bad"), Unprocessable)
    assert all(isinstance(r, Intake) and r.disposition == "new" for r in results.values())
    assert sorted(r.client_instruction_id for r in rows(ctx)) == [9300 + i for i in range(8)]


def test_answers_recorded_together_end_as_they_would_alone(pg_url: str) -> None:
    ctx = context(pg_url)
    members = [
        {
            "clientInstructionId": 9500 + i,
            "sourceAccountId": "U46377",
            "targetAccountId": "U15667",
            "amount": "1.00",
            "currency": "USD",
        }
        for i in range(3)
    ]
    bulk = {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": members}
    inbounds = [
        Inbound(transfer(9400), None, "m-single", True),
        Inbound(bulk, None, "m-bulk", True),
        Inbound(transfer(9401), None, "m-pending", True),
    ]
    single, bulk_intake, pending = receive_together(ctx, inbounds)
    bulk_body = {
        "status": 202,
        "instructionSetId": 77,
        "instructionResults": [envelope(202, 77, 9500 + i, "PENDING", 700 + i) for i in range(3)],
    }
    now = ctx.clock.now()
    answers = [
        Answer(single.attempt, answer(201, envelope(201, 76, 9400, "PROCESSED", 600)), now),
        Answer(bulk_intake.attempt, answer(202, bulk_body), now),
        Answer(pending.attempt, answer(202, envelope(202, 78, 9401, "PENDING", 601)), now),
    ]
    with ctx.store.transaction() as tx:
        record_answers(tx, ctx, answers)
    status = {r.client_instruction_id: r.status for r in rows(ctx)}
    assert status == {
        9400: "PROCESSED",
        9401: "PENDING",
        9500: "PENDING",
        9501: "PENDING",
        9502: "PENDING",
    }
    with sessions(ctx)() as session:
        sets = {
            s.instruction_set_id: s.member_count
            for s in session.execute(select(InstructionSet)).scalars()
        }
        instructions = sorted(
            i.instruction_id for i in session.execute(select(Instruction)).scalars()
        )
    assert sets == {76: 1, 77: 3, 78: 1}
    assert instructions == [600, 601, 700, 701, 702]
    # Every member: RECEIVED, SUBMITTING and its answer, each with an event.
    assert count(ctx, AuditEvent) == 15 and count(ctx, OutboxEvent) == 15


def test_a_lost_writer_connection_fails_one_batch_its_steps_run_alone_and_it_reconnects(
    pg_url: str,
) -> None:
    from sqlalchemy import text

    from models import make_engine

    ctx = context(pg_url)
    # As the worker's writer has it: a connection of its own, not pinged before a batch.
    writer = Store.connect(pg_url, pool_size=1, pre_ping=False)
    group = GroupCommit(writer)
    steps = grouped_steps(ctx, group)
    try:
        first = group.run(steps.receive, Inbound(transfer(9500), None, "m-1", True))
        with make_engine(pg_url).connect() as admin:
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        second = group.run(steps.receive, Inbound(transfer(9501), None, "m-2", True))
        third = group.run(steps.receive, Inbound(transfer(9502), None, "m-3", True))
    finally:
        group.stop()
        writer.close()
    assert [i.disposition for i in (first, second, third)] == ["new"] * 3
    assert group.stats["failed_batches"] == 1 and group.stats["alone"] == 1
    assert group.stats["batches"] == 2  # the first and the third, on a new connection
    assert [r.client_instruction_id for r in rows(ctx)] == [9500, 9501, 9502]


def test_the_hot_path_sends_a_few_statements_per_batch_and_no_executemany(pg_url: str) -> None:
    """Receiving and recording a batch writes with explicit statements over arrays (the store's
    `batched`): their number does not grow with the batch, and none is an executemany (which
    psycopg sends one row at a time)."""
    ctx = context(pg_url)
    seen: list[tuple[str, bool]] = []

    def _seen(_c: Any, _cursor: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
        seen.append((statement, many))

    event.listen(ctx.store.engine, "before_cursor_execute", _seen)
    counts: dict[int, tuple[int, int]] = {}
    for size, first in ((5, 9700), (40, 9800)):
        seen.clear()
        inbounds = [Inbound(transfer(first + i), None, f"h-{first + i}", True) for i in range(size)]
        intakes = receive_together(ctx, inbounds)
        received = len(seen)
        now = ctx.clock.now()
        answers = [
            Answer(
                intake.attempt,
                answer(201, envelope(201, first + i, first + i, "PROCESSED", first + i)),
                now,
            )
            for i, intake in enumerate(intakes)
        ]
        with ctx.store.transaction() as tx:
            record_answers(tx, ctx, answers)
        assert not any(many for _, many in seen), [s for s, many in seen if many]
        counts[size] = (received, len(seen) - received)
    # Receiving: the look-ups, the ids (drawn ahead: the second batch needs none), one INSERT;
    # recording: the locked rows, IBKR's rows, one INSERT, one UPDATE per table.
    assert counts[40][0] <= counts[5][0] <= 4 and counts[5][1] == counts[40][1] <= 6, counts
    assert {r.status for r in rows(ctx)} == {"PROCESSED"}
