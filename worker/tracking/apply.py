"""Record a decision: ids, IBKR's view, the status change and the next look, in one transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

from worker import jsontext
from worker.ibkr.calendar import downtime_end
from worker.ibkr.responses import ApiResult
from worker.redaction import mask_bank_details
from worker.status import Status
from worker.store import Tx, tracked
from worker.store.rows import ClientInstruction, Submission
from worker.tracking import backoff
from worker.tracking.context import TrackingContext
from worker.tracking.decisions import (
    APPLIED_TWICE_CODE,
    Action,
    AttemptFate,
    Decision,
    Tracked,
    business_content,
)
from worker.tracking.ibkr_view import record_ibkr_view
from worker.tracking.record import ApiCall, append_audit, change_status, emit_event, mark_overdue


def tracked_of(row: ClientInstruction, *, with_content: bool = False) -> Tracked:
    """What the decisions need of `row` (and its submission); `with_content`: also what the
    request moves (read from the stored body), to compare with a transaction IBKR shows."""
    submission = row.submission
    expected = None
    if with_content and submission is not None:
        member = stored_member(submission, row.position)
        expected = business_content(member) if member is not None else None
    return Tracked(
        client_instruction_id=row.client_instruction_id,
        instruction_type=row.instruction_type,
        status=row.status,
        attempt_count=row.attempt_count,
        instruction_set_id=row.instruction_set_id,
        inflight_until=submission.inflight_until if submission is not None else None,
        absent_since=submission.absent_since if submission is not None else None,
        sent_attempts=submission.sent_attempts if submission is not None else 0,
        instruction_id=row.instruction_id,
        applied_twice=row.applied_twice_at is not None,
        expected=expected,
    )


def stored_member(submission: Submission, position: int) -> dict[str, Any] | None:
    """The instruction object at `position` of the submission's stored body, or None."""
    body = jsontext.loads(submission.request_json)
    if not isinstance(body, dict):
        return None
    member = body["instructions"][position] if submission.is_bulk else body.get("instruction")
    return member if isinstance(member, dict) else None


def settle_attempt(
    submission: Submission, decision: Decision, now: datetime, *, answer_to_post: bool
) -> None:
    """Record on the submission what `decision` shows about its latest attempt, once per
    answer (not per member): an attempt that registered or was refused outright closes (a new
    one may begin); one whose answer is unknown stays open until IBKR is seen not to know it.
    `answer_to_post`: the answer to the POST itself (counts the attempts that left)."""
    fate = decision.fate
    if answer_to_post and fate is not AttemptFate.NOT_REGISTERED:
        submission.sent_attempts = (submission.sent_attempts or 0) + 1
    if fate in (AttemptFate.REGISTERED, AttemptFate.NOT_REGISTERED):
        submission.inflight_until = None
        submission.absent_since = None
    if decision.absent_since is not None:
        submission.absent_since = decision.absent_since
    submission.updated_at = now


def api_call_of(result: ApiResult) -> ApiCall:
    exchange = result.exchange
    return ApiCall(
        method=exchange.method,
        path=exchange.path,
        http_status=exchange.http_status,
        latency_ms=exchange.latency_ms,
        response_body=exchange.response_body,
    )


def scheduled_for(submission: Submission | None, row: ClientInstruction) -> datetime | None:
    """The `dateTimeToOccur` of a scheduled instruction, if any (deadlines count from it)."""
    if submission is None:
        return None
    member = stored_member(submission, row.position)
    raw = member.get("dateTimeToOccur") if member is not None else None
    if not raw:
        return None
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None


def next_look_at(
    ctx: TrackingContext, row: ClientInstruction, decision: Decision, now: datetime
) -> datetime | None:
    """When to look at `row` again after `decision` (None: never, it is final)."""
    if decision.action is Action.DONE:
        return None
    if decision.look_at is not None:
        return spread_past_downtime(ctx, decision.look_at)
    if decision.action is Action.POLL:
        bulk = row.submission.is_bulk if row.submission is not None else False
        profile = backoff.profile_for(row.instruction_type, ctx.settings.poll, bulk=bulk)
        delay = backoff.pending_delay_s(profile, row.poll_count, overdue=row.overdue_at is not None)
    elif decision.action is Action.RESOLVE and not decision.is_error:
        delay = backoff.RESOLVE_DELAY_S
    elif (
        decision.action is Action.RESOLVE
        and decision.retry_after_s is None
        and row.error_retry_count <= 1
    ):
        delay = backoff.RESOLVE_DELAY_S
    else:
        delay = backoff.error_delay_s(max(row.error_retry_count, 1), decision.retry_after_s)
    at = now + timedelta(seconds=backoff.jittered(delay, ctx.rng))
    return spread_past_downtime(ctx, at)


def spread_past_downtime(ctx: TrackingContext, at: datetime) -> datetime:
    """Move a look that would fall in IBKR's scheduled downtime to just after the window,
    spread over a minute so that the end of a window is no thundering herd."""
    if not ctx.settings.honor_downtime:
        return at
    end = downtime_end(at)
    if end is None:
        return at
    return end + timedelta(seconds=ctx.rng.uniform(1.0, 60.0))


VERIFICATION_TYPE = "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION"


def look_at_verified_instruction(
    tx: Tx, ctx: TrackingContext, row: ClientInstruction, now: datetime
) -> None:
    """A micro-deposit verification went through: note it on the ACH instruction it names
    (`pendingInstructionId`) and look at that instruction now rather than at its next poll."""
    if row.pending_instruction_id is None:
        return
    ach = tracked.unfinished_by_instruction_id(tx, row.pending_instruction_id)
    if ach is None or ach.final_at is not None:  # final in this very transaction
        return
    append_audit(
        tx,
        ach,
        from_status=ach.status,
        to_status=ach.status,
        reason=(
            f"micro-deposit verification clientInstructionId {row.client_instruction_id} "
            "was processed; looking at this instruction now"
        ),
        actor=ctx.actor,
        now=now,
    )
    if ach.lease_owner is None:
        ach.next_poll_at = now


def apply_decision(
    tx: Tx,
    ctx: TrackingContext,
    row: ClientInstruction,
    decision: Decision,
    *,
    result: ApiResult | None,
    now: datetime,
    counts_as_poll: bool = False,
) -> None:
    """Record `decision` about `row` (locked and adopted by the caller's transaction): IBKR's
    view, the counters, what IBKR said of the row, the next look, the status change, and the
    checks that follow from it. Everything is written when the transaction commits."""
    api = api_call_of(result) if result is not None else None
    was_final = row.final_at is not None
    record_ibkr_view(tx, row, decision, result, now)
    _count(row, decision, result, counts_as_poll)
    _take_ibkr_fields(row, decision)
    _schedule(ctx, row, decision, now)
    _announce(tx, ctx, row, decision, api, now)
    if decision.applied_twice is not None and row.applied_twice_at is None:
        record_applied_twice(tx, ctx, row, decision, api=api, now=now)
    _check_overdue(tx, ctx, row, decision, now)
    if not was_final and row.final_at is not None and needs_second_look(row):
        # Two attempts of ours left: one more look once any straggler would have registered,
        # so that a second transaction shows (a 208) even after the first answer was final.
        row.next_poll_at = now + timedelta(seconds=second_look_delay_s(ctx))


def _count(
    row: ClientInstruction, decision: Decision, result: ApiResult | None, counts_as_poll: bool
) -> None:
    """The row's poll, API call and error counters."""
    if counts_as_poll:
        row.poll_count += 1
    if result is not None:
        row.api_call_count += 1
    row.error_retry_count = row.error_retry_count + 1 if decision.is_error else 0


def _take_ibkr_fields(row: ClientInstruction, decision: Decision) -> None:
    """IBKR's ids, reference and result for the row (not from a CONFLICT's transaction), and
    the decision's error."""
    if decision.to_status != Status.CONFLICT:
        if decision.instruction_set_id is not None and row.instruction_set_id is None:
            row.instruction_set_id = decision.instruction_set_id
        if decision.instruction_id is not None:
            row.instruction_id = decision.instruction_id
        if decision.ib_reference_id is not None:
            row.ib_reference_id = decision.ib_reference_id
        if decision.result is not None:
            # Results travel in events and status output: bank account numbers masked.
            row.result = jsontext.to_plain(mask_bank_details(decision.result))
    if decision.error_code is not None:
        row.error_code = decision.error_code
        row.error_message = decision.error_message


def _schedule(
    ctx: TrackingContext, row: ClientInstruction, decision: Decision, now: datetime
) -> None:
    """The row's deadline (from its first poll), its next look, and its lease given up."""
    if row.deadline_at is None and decision.action is Action.POLL:
        bulk = row.submission.is_bulk if row.submission is not None else False
        profile = backoff.profile_for(row.instruction_type, ctx.settings.poll, bulk=bulk)
        row.deadline_at = backoff.deadline_at(now, profile, scheduled_for(row.submission, row))
    row.next_poll_at = next_look_at(ctx, row, decision, now)
    row.lease_owner = None
    row.lease_expires_at = None
    row.updated_at = now


def _announce(
    tx: Tx,
    ctx: TrackingContext,
    row: ClientInstruction,
    decision: Decision,
    api: ApiCall | None,
    now: datetime,
) -> None:
    """The status change with its audit and outbox events (and the metric once committed);
    without a change, an audit note of why we look again."""
    details = dict(decision.extra_audit) if decision.extra_audit else None
    to_status = decision.to_status
    if to_status is not None and to_status != row.status:
        change_status(
            tx,
            row,
            to_status,
            reason=decision.reason,
            actor=ctx.actor,
            now=now,
            api=api,
            details=details,
        )
        tx.after_commit(partial(ctx.observer.status_changed, row.instruction_type, to_status))
        if row.instruction_type == VERIFICATION_TYPE and to_status == Status.PROCESSED:
            look_at_verified_instruction(tx, ctx, row, now)
    elif decision.is_error or decision.action in (Action.RESOLVE, Action.RESEND):
        # Nothing changed for the producers, but the trail says why we are looking again.
        change_status(
            tx,
            row,
            row.status,
            reason=decision.reason,
            actor=ctx.actor,
            now=now,
            api=api,
            details=details,
        )


def _check_overdue(
    tx: Tx, ctx: TrackingContext, row: ClientInstruction, decision: Decision, now: datetime
) -> None:
    """Announce (once) a row past its deadline without a final status."""
    if (
        row.deadline_at is not None
        and row.overdue_at is None
        and row.final_at is None
        and now >= row.deadline_at
    ):
        mark_overdue(tx, row, actor=ctx.actor, now=now)
        row.next_poll_at = next_look_at(ctx, row, decision, now)


def needs_second_look(row: ClientInstruction) -> bool:
    """A final instruction two of whose attempts left, not yet known to have moved twice."""
    submission = row.submission
    return (
        submission is not None
        and (submission.sent_attempts or 0) >= 2
        and row.applied_twice_at is None
        and row.status != Status.FAILED
    )


def second_look_delay_s(ctx: TrackingContext) -> float:
    """How long after a final answer the second look of `needs_second_look` comes: past the
    longest an attempt may still register (IBKR_INFLIGHT_HORIZON_S + IBKR_MAX_CLOCK_SKEW_S)."""
    return ctx.settings.inflight_horizon_s + ctx.settings.max_clock_skew_s


def record_applied_twice(
    tx: Tx,
    ctx: TrackingContext,
    row: ClientInstruction,
    decision: Decision,
    *,
    api: ApiCall | None,
    now: datetime,
) -> None:
    """Say loudly that the money may have moved twice: APPLIED_TWICE in the status, an audit
    entry naming both transactions, an `instruction.applied_twice` event and the metric."""
    details = decision.applied_twice or {}
    row.applied_twice_at = now
    row.error_code = APPLIED_TWICE_CODE
    row.error_message = (
        f"IBKR shows more than one transaction of ours under clientInstructionId "
        f"{row.client_instruction_id}: {jsontext.dumps(details)}. The money may have moved "
        "twice: check both transactions at IBKR and reverse the extra one."
    )
    row.updated_at = now
    append_audit(
        tx,
        row,
        from_status=row.status,
        to_status=row.status,
        reason="APPLIED TWICE: " + decision.reason,
        actor=ctx.actor,
        now=now,
        api=api,
        details={"appliedTwice": details},
    )
    emit_event(tx, row, event="applied_twice", now=now)
    tx.after_commit(partial(ctx.observer.applied_twice, row.instruction_type))
