"""Tracking against a scripted IBKR on a migrated SQLite database: intent persisted first, one
POST per intent, lost answers resolved by GET, 208 reconciled, events and audit for each change."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

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
from worker.tracking.intake import Unprocessable, receive
from worker.tracking.poll import run_round
from worker.tracking.submit import send

POST_PATH = "/gw/api/v1/internal-cash-transfers"


def rows(ctx, cid=None):  # type: ignore[no-untyped-def]
    with sessions(ctx)() as session:
        query = select(ClientInstruction).order_by(ClientInstruction.id)
        if cid is not None:
            query = query.where(ClientInstruction.client_instruction_id == cid)
        return list(session.execute(query).scalars())


def events(ctx):  # type: ignore[no-untyped-def]
    with sessions(ctx)() as session:
        return [
            (row.routing_key, json.loads(row.body_json))
            for row in session.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars()
        ]


def test_a_201_answer_ends_processed_with_an_event_for_every_change(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(
        posts=[answer(201, envelope(201, 1703, 1012983, "PROCESSED", ibReferenceId=77))]
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    intake = receive(ctx, request=transfer(), correlation_id="abc", message_id="m-1")
    assert intake.disposition == "new"
    send(ctx, intake.submission_id)
    [row] = rows(ctx)
    assert (row.status, row.instruction_set_id, row.instruction_id, row.ib_reference_id) == (
        "PROCESSED",
        1703,
        900,
        77,
    )
    assert row.final_at is not None and row.next_poll_at is None
    keys = [key for key, _ in events(ctx)]
    assert keys == ["instruction.received", "instruction.submitting", "instruction.processed"]
    bodies = [body for _, body in events(ctx)]
    assert [b["sequence"] for b in bodies] == [1, 2, 3]
    assert bodies[-1]["correlationId"] == "abc" and bodies[-1]["accountId"] == "U46377"
    assert len({b["eventId"] for b in bodies}) == 3
    # The signed body carries the amount exactly as the producer wrote it.
    _, body = ibkr.calls[0]
    assert str(body["instruction"]["amount"]) == "123.45"


def test_a_redelivered_message_never_causes_a_second_post(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(posts=[answer(202, envelope(202, 1, 1012983, "PENDING"))])
    ctx = make_context(sqlite_url, ibkr, clock)
    first = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    send(ctx, first.submission_id)
    again = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    repeat = receive(ctx, request=transfer(), correlation_id=None, message_id="m-2")
    assert (again.disposition, repeat.disposition) == ("same_intent", "same_intent")
    assert ibkr.count("POST") == 1
    assert len(rows(ctx)) == 1


def test_a_reused_client_instruction_id_with_another_request_ends_failed(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 1, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    other = receive(ctx, request=transfer(amount="999.00"), correlation_id=None, message_id="m-2")
    assert other.disposition == "failed"
    original, duplicate = rows(ctx, 1012983)
    assert original.status == "PROCESSED"
    assert (
        duplicate.status == "FAILED" and duplicate.error_code == "DUPLICATE_CLIENT_INSTRUCTION_ID"
    )
    assert duplicate.duplicate_of_id == original.id
    assert ibkr.count("POST") == 1


def test_an_invalid_request_fails_with_the_field_named_and_costs_no_call(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr()
    ctx = make_context(sqlite_url, ibkr, clock)
    intake = receive(ctx, request=transfer(amount="-5"), correlation_id=None, message_id="m-1")
    assert intake.disposition == "failed"
    [row] = rows(ctx)
    assert row.status == "FAILED" and "amount" in (row.error_message or "")
    assert [key for key, _ in events(ctx)] == ["instruction.received", "instruction.failed"]
    assert ibkr.calls == []


def test_a_message_without_a_request_is_unprocessable(sqlite_url: str, clock: ManualClock) -> None:
    ctx = make_context(sqlite_url, ScriptedIbkr(), clock)
    with pytest.raises(Unprocessable):
        receive(ctx, request="not an object", correlation_id=None, message_id="m-1")
    assert rows(ctx) == []


def test_requests_without_an_id_get_sequential_ids_from_the_start(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr()
    ctx = make_context(sqlite_url, ibkr, clock)
    first = receive(ctx, request=transfer(cid=None), correlation_id=None, message_id="m-1")
    second = receive(ctx, request=transfer(cid=None), correlation_id=None, message_id="m-2")
    assert first.client_instruction_ids == (5000,)
    assert second.client_instruction_ids == (5001,)


def test_a_lost_answer_is_resent_only_after_its_horizon_and_two_404s_apart(
    sqlite_url: str, clock: ManualClock
) -> None:
    """A POST whose answer was lost may still register until its in-flight horizon: a 404
    before then proves nothing, and after it two 404s some seconds apart are needed before the
    same body goes again (guard: `decisions.lookup._absent`; make it answer RESEND at once and
    the POST count after the first 404 becomes 2)."""
    not_found = answer(404, {"type": "/simple", "title": "Not found", "status": 404}, "GET")
    ibkr = ScriptedIbkr(
        posts=[
            no_response("POST", POST_PATH, Outcome.UNKNOWN, "read timeout"),
            answer(201, envelope(201, 44, 1012983, "PROCESSED")),
        ],
        lookups=[not_found, not_found, not_found],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    [row] = rows(ctx)
    assert row.status == "SUBMITTING"
    # Defaults: lease 90 s, the POST leaves within 30 s, horizon 120 s, skew 30 s.
    horizon_s = max(90, 30 + 120) + 30
    clock.advance(5)
    run_round(ctx)  # 404 long before the horizon: nothing is sent
    assert ibkr.count("POST") == 1
    clock.advance(horizon_s - 10)
    assert run_round(ctx) == 0  # not due before the horizon
    clock.advance(10)
    run_round(ctx)  # the first 404 after the horizon: only noted
    assert ibkr.count("POST") == 1
    clock.advance(5)
    run_round(ctx)  # the second, 5 s later: the same body goes again
    [row] = rows(ctx)
    assert row.status == "PROCESSED" and row.attempt_count == 2
    assert ibkr.count("POST") == 2 and ibkr.count("GET") == 3
    (_, first_body), (_, second_body) = ibkr.calls[0], ibkr.calls[-1]
    assert first_body == second_body


def test_a_lost_answer_that_landed_is_adopted_without_resending(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(
        posts=[no_response("POST", POST_PATH, Outcome.UNKNOWN, "connection reset")],
        lookups=[answer(200, envelope(200, 45, 1012983, "PROCESSED"), "GET")],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    clock.advance(5)
    run_round(ctx)
    [row] = rows(ctx)
    assert (row.status, row.instruction_set_id) == ("PROCESSED", 45)
    assert ibkr.count("POST") == 1


def test_a_reused_client_instruction_id_ends_in_conflict_on_first_submission(
    sqlite_url: str, clock: ManualClock
) -> None:
    body = {
        "type": "/simple",
        "title": "Business Error",
        "status": 422,
        "instructionSetId": "2616",
        "instructionResult": {
            "clientInstructionId": 1012983,
            "instructionType": "INTERNAL_CASH_TRANSFER",
            "instructionStatus": "REJECTED",
            "instructionId": 5,
            "error": {
                "errorCode": "CORRUPT_DATA_DUBPLICATE_CP",
                "errorMessage": "counterPartyTranId 1012983 already exists",
            },
        },
    }
    ibkr = ScriptedIbkr(posts=[answer(422, body)])
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    [row] = rows(ctx)
    assert row.status == "CONFLICT" and row.error_code == "CORRUPT_DATA_DUBPLICATE_CP"


def test_a_208_naming_another_set_ends_conflict_without_adopting_its_status(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(
        posts=[answer(202, envelope(202, 100, 1012983, "PENDING"))],
        lookups=[answer(208, envelope(208, 999, 1012983, "PROCESSED"), "GET")],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    clock.advance(120)
    run_round(ctx)
    [row] = rows(ctx)
    assert row.status == "CONFLICT"
    assert "999" in (row.error_message or "") and "100" in (row.error_message or "")
    with sessions(ctx)() as session:
        trail = list(session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())
    assert trail[-1].to_status == "CONFLICT" and "999" in trail[-1].reason


def test_a_208_for_our_own_set_is_adopted(sqlite_url: str, clock: ManualClock) -> None:
    ibkr = ScriptedIbkr(
        posts=[answer(202, envelope(202, 100, 1012983, "PENDING"))],
        lookups=[answer(208, envelope(208, 100, 1012983, "PROCESSED"), "GET")],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    clock.advance(120)
    run_round(ctx)
    assert rows(ctx)[0].status == "PROCESSED"


def test_bulk_members_are_followed_through_one_set_read(
    sqlite_url: str, clock: ManualClock
) -> None:
    members = [
        {
            "clientInstructionId": 7000 + i,
            "sourceAccountId": "U46377",
            "targetAccountId": "U15667",
            "amount": "1.00",
            "currency": "USD",
        }
        for i in range(3)
    ]
    request = {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": members}

    def bulk(status: int, item_status: str) -> dict:  # type: ignore[type-arg]
        return {
            "status": status,
            "instructionSetId": 55,
            "instructionResults": [
                envelope(status, 55, 7000 + i, item_status, 300 + i) for i in range(3)
            ],
        }

    ibkr = ScriptedIbkr(
        posts=[answer(202, bulk(202, "PENDING"))],
        set_reads=[answer(200, bulk(200, "PROCESSED"), "GET")],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=request, correlation_id=None, message_id="m-1").submission_id)
    assert {row.status for row in rows(ctx)} == {"PENDING"}
    clock.advance(120)
    run_round(ctx)
    assert {row.status for row in rows(ctx)} == {"PROCESSED"}
    assert ibkr.count("GET instruction-set") == 1 and ibkr.count("GET client-instruction") == 0


def test_pending_is_polled_on_backoff_and_never_exhausts_a_budget(
    sqlite_url: str, clock: ManualClock
) -> None:
    pending = [answer(200, envelope(200, 100, 1012983, "PENDING"), "GET") for _ in range(30)]
    ibkr = ScriptedIbkr(
        posts=[answer(202, envelope(202, 100, 1012983, "PENDING"))], lookups=pending
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    for _ in range(30):
        clock.advance(70)
        run_round(ctx)
    [row] = rows(ctx)
    assert row.status == "PENDING" and row.error_retry_count == 0 and row.next_poll_at is not None
    assert row.poll_count == 30


def test_an_instruction_past_its_deadline_is_announced_overdue_and_kept(
    sqlite_url: str, clock: ManualClock
) -> None:
    pending = [answer(200, envelope(200, 100, 1012983, "PENDING"), "GET") for _ in range(5)]
    ibkr = ScriptedIbkr(
        posts=[answer(202, envelope(202, 100, 1012983, "PENDING"))], lookups=pending
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    clock.advance(3 * 3600)
    run_round(ctx)
    [row] = rows(ctx)
    assert row.overdue_at is not None and row.next_poll_at is not None
    assert [key for key, _ in events(ctx)][-1] == "instruction.overdue"
    assert row.next_poll_at - clock.now() >= timedelta(seconds=50)


def test_a_429_on_submission_is_sent_again_after_the_wait(
    sqlite_url: str, clock: ManualClock
) -> None:
    throttled = answer(429, {"status": 429}, "POST")
    ibkr = ScriptedIbkr(
        posts=[throttled, answer(201, envelope(201, 9, 1012983, "PROCESSED"))],
        lookups=[answer(404, {"status": 404, "title": "Not found"}, "GET")],
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m-1").submission_id)
    assert rows(ctx)[0].status == "SUBMITTING"
    clock.advance(30)
    run_round(ctx)
    assert rows(ctx)[0].status == "PROCESSED"
    assert ibkr.count("POST") == 2


@pytest.mark.parametrize("amount", ["123.45", "0.10", "1E+2", "100.000"])
def test_the_body_begun_with_the_request_is_the_stored_body_exactly(
    sqlite_url: str, clock: ManualClock, amount: str
) -> None:
    from models import Submission
    from worker import jsontext

    ctx = make_context(sqlite_url, ScriptedIbkr(), clock)
    intake = receive(
        ctx,
        request=transfer(amount=amount),
        correlation_id=None,
        message_id="m-1",
        begin_submission=True,
    )
    assert intake.attempt is not None
    with sessions(ctx)() as session:
        stored = session.get(Submission, intake.submission_id)
        assert stored is not None
    # What is signed and POSTed right away is what a resend would read back.
    assert jsontext.dumps(intake.attempt.body) == stored.request_json
    assert jsontext.dumps(jsontext.loads(stored.request_json)) == stored.request_json
