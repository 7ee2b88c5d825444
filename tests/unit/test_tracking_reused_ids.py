"""A clientInstructionId another system used first, met after the answer to our POST was lost:
the 208 describes their transaction, so ours ends CONFLICT and takes none of their ids or status;
after our own second POST the 208 may describe our first one and is adopted."""

from __future__ import annotations

from models import AuditEvent, ClientInstruction, OutboxEvent
from tests.unit.tracking_support import (
    ScriptedIbkr,
    answer,
    envelope,
    make_context,
    sessions,
    transfer,
)
from worker.clock import ManualClock
from worker.ibkr.responses import Outcome, no_response
from worker.tracking.intake import receive
from worker.tracking.poll import run_round
from worker.tracking.submit import send

POST_PATH = "/gw/api/v1/internal-cash-transfers"
NOT_FOUND = {"type": "/simple", "title": "Not found", "status": 404}


def test_a_208_after_our_only_post_was_lost_is_their_transaction_and_ends_conflict(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(
        posts=[no_response("POST", POST_PATH, Outcome.UNKNOWN, "connection reset")],
        lookups=[answer(208, envelope(208, 31, 1012983, "PROCESSED", 4_001), "GET")],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    clock.advance(5)
    run_round(ctx)
    with sessions(ctx)() as session:
        [row] = session.query(ClientInstruction).all()
        assert row.status == "CONFLICT" and row.error_code == "CLIENT_INSTRUCTION_ID_CONFLICT"
        assert row.instruction_id is None and row.instruction_set_id is None
        assert row.result is None and "31" in (row.error_message or "")
    assert ibkr.count("POST") == 1


def test_a_208_after_two_of_our_posts_left_says_applied_twice(
    sqlite_url: str, clock: ManualClock
) -> None:
    """After two of our attempts left, a 208 (several transactions under our id) means the money
    may have moved twice: APPLIED_TWICE in the status, an event, an audit entry naming both
    transactions; the first transaction's status is followed, never hidden behind it."""
    ibkr = ScriptedIbkr(
        posts=[
            no_response("POST", POST_PATH, Outcome.UNKNOWN, "read timeout"),
            no_response("POST", POST_PATH, Outcome.UNKNOWN, "read timeout"),
        ],
        lookups=[
            answer(404, NOT_FOUND, "GET"),  # the first POST had not landed by its horizon
            answer(404, NOT_FOUND, "GET"),
            answer(208, envelope(208, 32, 1012983, "PROCESSED", 4_002), "GET"),
        ],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    clock.advance(181)
    run_round(ctx)  # 404 after the horizon (noted)
    clock.advance(5)
    run_round(ctx)  # 404 again: sent again (attempt 2), whose answer is lost too
    assert ibkr.count("POST") == 2
    clock.advance(5)
    run_round(ctx)  # 208 naming a set we never saw: our first POST registered after all
    with sessions(ctx)() as session:
        [row] = session.query(ClientInstruction).all()
        assert row.attempt_count == 2
        assert (row.status, row.instruction_set_id, row.instruction_id) == ("PROCESSED", 32, 4_002)
        assert row.error_code == "APPLIED_TWICE" and row.applied_twice_at is not None
        events = [e.routing_key for e in session.query(OutboxEvent).order_by(OutboxEvent.id)]
        assert "instruction.applied_twice" in events
        notes = [
            a.reason
            for a in session.query(AuditEvent).order_by(AuditEvent.id)
            if a.reason.startswith("APPLIED TWICE")
        ]
        assert len(notes) == 1 and "32" in notes[0]
