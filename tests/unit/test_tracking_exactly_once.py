"""The windows through which money could move twice, each closed and shown closed: a test here
fails when its guard is reverted (each says how). Against a scripted IBKR on SQLite, with two
processes (two tracking contexts with their own leases) where it takes two."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from models import AuditEvent, ClientInstruction, InboundMessage, OutboxEvent, Submission
from tests.unit.tracking_support import (
    ScriptedIbkr,
    answer,
    envelope,
    make_context,
    sessions,
    transfer,
)
from worker.clock import ManualClock
from worker.ibkr.responses import ApiResult, Outcome, no_response
from worker.store import Tx
from worker.tracking.context import TrackingContext
from worker.tracking.intake import Unprocessable, receive
from worker.tracking.poll import claim_due, run_round
from worker.tracking.submit import LeaseTooShort, send

POST_PATH = "/gw/api/v1/internal-cash-transfers"
NOT_FOUND = answer(404, {"type": "/simple", "title": "Not found", "status": 404}, "GET")
LOST = no_response("POST", POST_PATH, Outcome.UNKNOWN, "read timeout")
#: With the default settings: lease 90 s, a POST leaves within 30 s, horizon 120 s, skew 30 s.
HORIZON_S = max(90, 30 + 120) + 30


def second_process(ctx: TrackingContext, ibkr: ScriptedIbkr) -> TrackingContext:
    """Another scheduler on the same database: its own leases, its own IBKR client."""
    return replace(ctx, ibkr=ibkr, owner="other-process", actor="scheduler")


def the_row(ctx: TrackingContext) -> ClientInstruction:
    with sessions(ctx)() as session:
        [row] = session.execute(select(ClientInstruction)).scalars().all()
        return row


# --- 1: only the holder of an unexpired lease sends -------------------------------------------


def test_a_process_whose_lease_ran_out_never_sends_the_rows_another_took_over(
    sqlite_url: str, clock: ManualClock
) -> None:
    """Guard: the lease check in `submit.begin_attempt` (drop it and the first process POSTs a
    row the second one holds)."""
    mine = ScriptedIbkr(posts=[answer(201, envelope(201, 5, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, mine, clock)
    received = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    clock.advance(31)  # past the intake's grace: the scheduler may take the row over
    other = second_process(ctx, ScriptedIbkr())
    assert len(claim_due(other, limit=10)) == 1
    assert received.submission_id is not None
    assert send(ctx, received.submission_id) is False
    assert mine.count("POST") == 0
    assert the_row(ctx).lease_owner == "other-process"


def test_a_submitting_row_is_not_sent_again_by_whoever_holds_it_unresolved(
    sqlite_url: str, clock: ManualClock
) -> None:
    """Guard: `begin_attempt` refuses while an attempt may still register (drop the
    `inflight_until` check and the resend goes out at once)."""
    ibkr = ScriptedIbkr(posts=[LOST, answer(201, envelope(201, 5, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, clock)
    received = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    assert received.submission_id is not None
    assert send(ctx, received.submission_id) is True  # attempt 1: its answer is lost
    # Even holding the lease (a claim), the process may not send while attempt 1 is in flight.
    clock.advance(3)
    [claimed] = claim_due(ctx, limit=10)
    assert claimed.status == "SUBMITTING"
    assert send(ctx, received.submission_id) is False
    assert ibkr.count("POST") == 1


# --- 2: the resend is decided and begun in one transaction ------------------------------------


class ArmedIbkr(ScriptedIbkr):
    """Arms `armed` when it answers the confirming (third) status GET."""

    armed: bool = False

    def get_client_instruction(self, client_instruction_id: int) -> ApiResult:
        result = super().get_client_instruction(client_instruction_id)
        if self.count("GET") == 3:
            self.armed = True
        return result


def test_no_other_process_can_take_the_row_between_the_decision_to_resend_and_the_resend(
    sqlite_url: str, clock: ManualClock
) -> None:
    """After the confirming 404 the next attempt begins in the transaction that decided it.
    Guard: `poll.poll_one` beginning the attempt in that transaction (commit the decision first
    and begin in `send`, as before, and the other process, running right after that commit,
    takes the row over and sends it; with the lease check off as well, both send)."""
    ibkr = ArmedIbkr(
        posts=[LOST, answer(201, envelope(201, 6, 1012983, "PROCESSED"))],
        lookups=[NOT_FOUND, NOT_FOUND, NOT_FOUND],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    other_ibkr = ScriptedIbkr(
        posts=[answer(201, envelope(201, 7, 1012983, "PROCESSED"))],
        lookups=[NOT_FOUND, NOT_FOUND],
    )
    other = second_process(ctx, other_ibkr)
    fired: list[int] = []

    def run_the_other_right_after() -> None:
        if ibkr.armed and not fired:
            fired.append(1)
            clock.advance(3)
            run_round(other)

    transaction = ctx.store.transaction

    @contextmanager
    def then_the_other() -> Iterator[Tx]:
        with transaction() as tx:
            yield tx
        run_the_other_right_after()

    received = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    assert received.submission_id is not None
    send(ctx, received.submission_id)
    clock.advance(5)
    run_round(ctx)  # 404 before the horizon
    clock.advance(HORIZON_S)
    run_round(ctx)  # the first 404 after it
    clock.advance(5)
    ctx.store.transaction = then_the_other  # type: ignore[method-assign]
    try:
        run_round(ctx)  # the confirming 404: the resend
    finally:
        del ctx.store.transaction
    assert fired
    # The process that decided sent it; the other found nothing to take over.
    assert ibkr.count("POST") == 2 and other_ibkr.count("POST") == 0
    assert other_ibkr.count("GET") == 0
    assert the_row(ctx).status == "PROCESSED"


# --- 3: an attempt has a deadline inside its lease ---------------------------------------------


def test_an_attempt_leaves_before_its_deadline_and_expires_before_its_lease(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 5, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, clock)
    started = clock.monotonic()
    received = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    assert received.submission_id is not None
    send(ctx, received.submission_id)
    [budget] = ibkr.budgets
    assert budget is not None
    assert budget.send_by_mono == started + ctx.settings.http_timeout_s
    assert budget.lease_end_mono == started + ctx.lease_s
    assert budget.send_by_mono < budget.lease_end_mono


def test_a_lease_that_cannot_cover_an_attempt_is_refused(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 5, 1012983, "PROCESSED"))])
    ctx = replace(make_context(sqlite_url, ibkr, clock), lease_s=20.0)
    received = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    assert received.submission_id is not None
    with pytest.raises(LeaseTooShort, match="IBKR_LEASE_S"):
        send(ctx, received.submission_id)
    assert ibkr.count("POST") == 0


# --- 4: a 404 proves nothing while an attempt may still register --------------------------------


def test_a_post_held_in_flight_that_registers_late_is_found_not_sent_again(
    sqlite_url: str, clock: ManualClock
) -> None:
    """The worst IBKR: the POST is in flight past our timeout, GETs answer 404, then it
    registers. Guard: `decisions.lookup._absent` (answer RESEND on the first 404 and the second POST
    goes out while the first is still in flight)."""
    ibkr = ScriptedIbkr(
        posts=[LOST],
        lookups=[NOT_FOUND, answer(200, envelope(200, 8, 1012983, "PROCESSED"), "GET")],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    received = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    assert received.submission_id is not None
    send(ctx, received.submission_id)
    clock.advance(5)
    run_round(ctx)  # 404: still in flight
    for _ in range(10):
        clock.advance(15)
        run_round(ctx)  # nothing is looked at (or sent) before the horizon
    assert ibkr.count("GET") == 1
    clock.advance(HORIZON_S - 150)
    run_round(ctx)  # it registered meanwhile: found
    row = the_row(ctx)
    assert (row.status, row.instruction_set_id) == ("PROCESSED", 8)
    assert ibkr.count("POST") == 1


# --- 5: the message id is a unique idempotency key ---------------------------------------------


def test_the_same_message_id_with_another_request_fails_and_sends_nothing(
    sqlite_url: str, clock: ManualClock
) -> None:
    """Guard: the fingerprint comparison in `intake.receive_all` (drop it and the second
    request is taken for a redelivery of the first and silently dropped)."""
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 5, 5000, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, clock)
    first = receive(ctx, request=transfer(cid=None), correlation_id=None, message_id="m-1")
    again = receive(ctx, request=transfer(cid=None), correlation_id=None, message_id="m-1")
    other = receive(
        ctx, request=transfer(cid=None, amount="9.99"), correlation_id=None, message_id="m-1"
    )
    relabelled = receive(ctx, request=transfer(cid=None), correlation_id="c", message_id="m-1")
    assert first.disposition == "new"
    assert again.disposition == "same_intent"
    assert again.client_instruction_ids == first.client_instruction_ids
    assert other.disposition == "failed" and relabelled.disposition == "failed"
    with sessions(ctx)() as session:
        failed = (
            session.execute(select(ClientInstruction).where(ClientInstruction.status == "FAILED"))
            .scalars()
            .all()
        )
        assert {row.error_code for row in failed} == {"DUPLICATE_MESSAGE_ID"}
        assert session.query(InboundMessage).count() == 1
    assert ibkr.count("POST") == 0


def test_without_a_message_id_a_request_needs_its_client_instruction_ids(
    sqlite_url: str, clock: ManualClock
) -> None:
    ctx = make_context(sqlite_url, ScriptedIbkr(), clock)
    with pytest.raises(Unprocessable, match="no message id"):
        receive(ctx, request=transfer(cid=None), correlation_id=None, message_id=None)
    kept = receive(ctx, request=transfer(), correlation_id=None, message_id=None)
    assert kept.disposition == "new" and kept.client_instruction_ids == (1012983,)
    again = receive(ctx, request=transfer(), correlation_id=None, message_id=None)
    assert again.disposition == "same_intent"


# --- 6: a found transaction is ours only if it moves what ours moves --------------------------


def test_a_transaction_found_after_a_lost_answer_that_moves_something_else_is_a_conflict(
    sqlite_url: str, clock: ManualClock
) -> None:
    """Guard: `decisions.business_mismatch` in `reconcile` (drop it and another system's
    transfer under our id is adopted as ours)."""
    theirs = envelope(200, 9, 1012983, "PROCESSED", amount=50, currency="USD")
    ibkr = ScriptedIbkr(posts=[LOST], lookups=[answer(200, theirs, "GET")])
    ctx = make_context(sqlite_url, ibkr, clock)
    received = receive(ctx, request=transfer(amount="123.45"), correlation_id=None, message_id="m")
    assert received.submission_id is not None
    send(ctx, received.submission_id)
    clock.advance(5)
    run_round(ctx)
    row = the_row(ctx)
    assert row.status == "CONFLICT" and row.instruction_set_id is None
    assert "it moves something else: amount 50 (ours 123.45)" in _audit_reasons(ctx)


def _audit_reasons(ctx: TrackingContext) -> str:
    with sessions(ctx)() as session:
        return " ".join(a.reason for a in session.query(AuditEvent))


# --- 8: two of our transactions are said loudly, even after a final answer ---------------------


def test_a_second_transaction_found_after_the_final_answer_is_reported(
    sqlite_url: str, clock: ManualClock
) -> None:
    """Two attempts left; the second answered PROCESSED (final). One more look after the
    horizon shows a 208: APPLIED_TWICE, an event, an audit entry. Guard: the second look
    (`apply.needs_second_look`; without it the final row is never looked at again)."""
    ibkr = ScriptedIbkr(
        posts=[LOST, answer(201, envelope(201, 41, 1012983, "PROCESSED", 7_041))],
        lookups=[
            NOT_FOUND,
            NOT_FOUND,
            answer(208, envelope(208, 40, 1012983, "PROCESSED", 7_040), "GET"),
        ],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    received = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    assert received.submission_id is not None
    send(ctx, received.submission_id)
    clock.advance(HORIZON_S + 1)
    run_round(ctx)
    clock.advance(5)
    run_round(ctx)  # resent: PROCESSED
    assert the_row(ctx).status == "PROCESSED"
    clock.advance(ctx.settings.inflight_horizon_s + ctx.settings.max_clock_skew_s + 1)
    run_round(ctx)
    row = the_row(ctx)
    assert row.status == "PROCESSED" and row.error_code == "APPLIED_TWICE"
    assert row.next_poll_at is None and row.instruction_set_id == 41
    with sessions(ctx)() as session:
        keys = [e.routing_key for e in session.query(OutboxEvent).order_by(OutboxEvent.id)]
        [submission] = session.query(Submission).all()
    assert keys[-1] == "instruction.applied_twice"
    assert submission.sent_attempts == 2
    assert "40" in _audit_reasons(ctx) and "41" in _audit_reasons(ctx)


def test_a_bulk_request_whose_answer_was_lost_is_resent_whole_once_its_horizon_passed(
    sqlite_url: str, clock: ManualClock
) -> None:
    """The first member's lookups decide for the bulk (IBKR registers all its members or none);
    the resend takes the members nobody holds. Guard: `_ours_to_send` taking free members
    (require every member's lease to be ours and the resend never happens: the later members'
    leases were let go after their own 404s)."""
    bulk_ok = answer(
        202,
        {
            "status": 202,
            "instructionSetId": 77,
            "instructionResults": [
                envelope(202, 77, cid, "PENDING", 900 + cid % 10)
                for cid in (1_100_001, 1_100_002, 1_100_003)
            ],
        },
    )
    ibkr = ScriptedIbkr(posts=[LOST, bulk_ok], lookups=[NOT_FOUND] * 40)
    ctx = make_context(sqlite_url, ibkr, clock)
    request = {
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instructions": [transfer(cid)["instruction"] for cid in (1_100_001, 1_100_002, 1_100_003)],
    }
    received = receive(ctx, request=request, correlation_id=None, message_id="m-bulk")
    assert received.submission_id is not None
    send(ctx, received.submission_id)
    clock.advance(HORIZON_S + 1)
    run_round(ctx)  # the first member's first 404 after the horizon
    # The later members are looked at on their own schedule, not with the first one's
    # confirming look: nobody holds them when it comes.
    with sessions(ctx).begin() as session:
        for row in session.execute(select(ClientInstruction)).scalars():
            if row.position > 0:
                row.next_poll_at = clock.now() + timedelta(hours=1)
                row.lease_owner = None
    clock.advance(6)
    run_round(ctx)  # the confirming 404: the whole bulk goes again
    assert ibkr.count("POST") == 2
    with sessions(ctx)() as session:
        rows = session.execute(select(ClientInstruction)).scalars().all()
    assert {(r.status, r.attempt_count) for r in rows} == {("PENDING", 2)}


def test_a_bulk_member_found_late_is_looked_up_not_left_submitting(
    sqlite_url: str, clock: ManualClock
) -> None:
    """A bulk POST whose answer was lost: the first member is found (the POST registered), the
    second is not visible yet. The second is looked up again until found, never resent and never
    left SUBMITTING. Guard: `resolve_submission` looking up the members still SUBMITTING once
    some are registered (let it call `send` instead and the second member stays SUBMITTING
    for good, re-claimed every lease)."""
    cids = (1_200_001, 1_200_002)
    ibkr = ScriptedIbkr(
        posts=[LOST],
        lookups=[
            answer(200, envelope(200, 88, cids[0], "PENDING", 801), "GET"),
            NOT_FOUND,
            answer(200, envelope(200, 88, cids[1], "PENDING", 802), "GET"),
        ],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    request = {
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instructions": [transfer(cid)["instruction"] for cid in cids],
    }
    received = receive(ctx, request=request, correlation_id=None, message_id="m-bulk-2")
    assert received.submission_id is not None
    send(ctx, received.submission_id)
    for _ in range(20):
        clock.advance(30)
        run_round(ctx)
    with sessions(ctx)() as session:
        rows = (
            session.execute(select(ClientInstruction).order_by(ClientInstruction.position))
            .scalars()
            .all()
        )
    assert [(r.status, r.instruction_id) for r in rows] == [("PENDING", 801), ("PENDING", 802)]
    assert ibkr.count("POST") == 1
