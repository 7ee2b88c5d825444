"""Send a persisted request to IBKR and record the answer.

Before every POST the members are committed as SUBMITTING with the attempt number, so that a
crash at any point leaves a row the scheduler resolves with `GET /client-instructions/{id}`
before anything is sent again. The answer and its audit events are recorded in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from structlog.contextvars import bound_contextvars

from worker import jsontext
from worker.ibkr.calendar import in_downtime
from worker.ibkr.client import SendBudget
from worker.ibkr.endpoints import Endpoint, endpoint_at
from worker.ibkr.responses import ApiResult, Outcome
from worker.status import SENDING, Status
from worker.store import Tx, ibkr, tracked
from worker.store.rows import ClientInstruction, Submission
from worker.tracking.apply import (
    apply_decision,
    settle_attempt,
    spread_past_downtime,
    tracked_of,
)
from worker.tracking.context import TrackingContext
from worker.tracking.decisions import Decision, after_submit
from worker.tracking.record import append_audit, change_status


@dataclass(frozen=True)
class Attempt:
    """An attempt whose members are SUBMITTING in a transaction of the caller: once that has
    committed, `post` may send `body` to `endpoint`, within `budget` (it leaves before
    `budget.send_by_mono` or not at all; its body expires before the lease does)."""

    submission: Submission
    number: int
    endpoint: Endpoint
    body: dict[str, Any]
    budget: SendBudget

    @property
    def submission_id(self) -> int:
        """The submission's id (allocated before the transaction that began the attempt
        committed)."""
        return self.submission.id


@dataclass(frozen=True)
class Answer:
    """IBKR's answer to an attempt's POST, to be recorded."""

    attempt: Attempt
    result: ApiResult
    at: datetime


class LeaseTooShort(ValueError):
    """The lease cannot cover an attempt: configuration that cannot work."""


def attempt_send_s(ctx: TrackingContext) -> float:
    """How long after SUBMITTING is committed a POST may still leave (IBKR_HTTP_TIMEOUT_S)."""
    return ctx.settings.http_timeout_s


def inflight_horizon(ctx: TrackingContext, begun_at: datetime) -> datetime:
    """Until when an attempt begun at `begun_at` may register at IBKR, on the worst reading of
    the reference: until its body's `exp` (never after the lease's end) or `sent + horizon`,
    whichever is later, plus the clock difference IBKR may have with us. The POST leaves by
    `begun_at + attempt_send_s` or not at all."""
    settings = ctx.settings
    latest = max(ctx.lease_s, attempt_send_s(ctx) + settings.inflight_horizon_s)
    return begun_at + timedelta(seconds=latest + settings.max_clock_skew_s)


def _ours_to_send(ctx: TrackingContext, members: list[ClientInstruction], now: datetime) -> bool:
    """Whether this process may send the (locked) members: it holds the lease of at least one
    (claimed, or made by its intake), none of those leases has run out, and no other process
    holds an unexpired lease of any (members nobody holds are taken with the attempt). A
    process whose lease ran out while it waited finds the rows another took over, and sends
    nothing."""
    held = False
    for member in members:
        unexpired = member.lease_expires_at is not None and member.lease_expires_at > now
        if member.lease_owner == ctx.owner:
            if not unexpired:
                return False
            held = True
        elif member.lease_owner is not None and unexpired:
            return False
    return held


def begin_attempt(
    tx: Tx,
    ctx: TrackingContext,
    submission: Submission,
    members: list[ClientInstruction],
    now: datetime,
    body: dict[str, Any] | None = None,
    *,
    now_mono: float,
) -> Attempt | None:
    """Mark the (locked) members SUBMITTING for the next attempt, in the caller's transaction.

    `now` is the shared clock's time and `now_mono` the monotonic time read with it. The
    members must be ours to send (`_ours_to_send`: our unexpired lease, taken by the claim or by
    the intake that created them, and nobody else's). No attempt begins while an earlier one may
    still register (`submission.inflight_until` set): only an answer that settles it, or IBKR
    not knowing the id twice after its horizon, clears that, in the transaction that then
    begins the next attempt.

    None when there is nothing to send (already answered, no longer ours, an attempt still in
    flight) or the request is held for IBKR's scheduled downtime (recorded; the scheduler sends
    it after the window). `body`: the submission's body when the caller has it at hand
    (default: read from `request_json`).
    """
    send_s = attempt_send_s(ctx)
    if ctx.lease_s <= send_s:
        raise LeaseTooShort(
            f"a lease of {ctx.lease_s:g} s cannot cover a POST that may take {send_s:g} s to "
            "leave; raise IBKR_LEASE_S above twice IBKR_HTTP_TIMEOUT_S"
        )
    sendable = [m for m in members if m.status in SENDING and m.duplicate_of_id is None]
    if not sendable or len(sendable) != len(members):
        return None
    if not _ours_to_send(ctx, members, now):
        return None
    if submission.inflight_until is not None:
        return None
    if ctx.settings.honor_downtime and in_downtime(now):
        later = spread_past_downtime(ctx, now)
        for member in members:
            member.next_poll_at = later
            member.lease_owner = None
        append_audit(
            tx,
            members[0],
            from_status=members[0].status,
            to_status=members[0].status,
            reason=(
                "held: IBKR's Funds & Banking API is in its scheduled downtime; "
                "sending after the window"
            ),
            actor=ctx.actor,
            now=now,
        )
        return None
    submission.attempt_count += 1
    submission.updated_at = now
    submission.inflight_until = inflight_horizon(ctx, now)
    submission.absent_since = None
    attempt = submission.attempt_count
    endpoint = endpoint_at(submission.endpoint_path)  # v1 or v2, as the request chose
    lease_until = now + timedelta(seconds=ctx.lease_s)
    for member in members:
        member.attempt_count = attempt
        member.next_poll_at = lease_until
        member.lease_owner = ctx.owner
        member.lease_expires_at = lease_until
        change_status(
            tx,
            member,
            Status.SUBMITTING,
            reason=f"sending attempt {attempt}: {endpoint.method} {endpoint.path}",
            actor=ctx.actor,
            now=now,
        )
    if body is None:
        body = jsontext.loads(submission.request_json)
    budget = SendBudget(send_by_mono=now_mono + send_s, lease_end_mono=now_mono + ctx.lease_s)
    return Attempt(submission, attempt, endpoint, body, budget)


def send(ctx: TrackingContext, submission_id: int) -> bool:
    """Begin the next attempt of a submission this process holds the lease of, POST it and
    record IBKR's answer for every member. Returns False when there was nothing to send
    (already answered, no longer ours, an attempt still in flight, or held for IBKR's
    scheduled downtime)."""
    with ctx.ibkr.permit():
        with ctx.store.transaction() as tx:
            submission = tracked.lock_members(tx, [submission_id]).get(submission_id)
            if submission is None:
                return False
            now, now_mono = ctx.clock.now(), ctx.clock.monotonic()
            attempt = begin_attempt(tx, ctx, submission, submission.members, now, now_mono=now_mono)
        if attempt is None:
            return False
        answer = post(ctx, attempt)
    record(ctx, answer)
    return True


def record(ctx: TrackingContext, answer: Answer) -> None:
    """Record one answer in a transaction of its own."""
    with ctx.store.transaction() as tx:
        record_answers(tx, ctx, [answer])


def post(ctx: TrackingContext, attempt: Attempt) -> Answer:
    """POST a begun (committed) attempt; the answer is still to be recorded. The client's log
    line of the call ("ibkr api call") names the submission and the attempt: the one line a
    submission writes."""
    with bound_contextvars(submission_id=attempt.submission_id, attempt=attempt.number):
        result = ctx.ibkr.post_instruction(attempt.endpoint, attempt.body, attempt.budget)
    ctx.observer.api_call(result)
    return Answer(attempt, result, ctx.clock.now())


def record_answers(tx: Tx, ctx: TrackingContext, answers: Sequence[Answer]) -> None:
    """Record IBKR's answers for every member of their submissions, in the caller's transaction.

    The submissions and their (locked) members are read with one query, IBKR's rows the
    answers name with one more per table, and what changed is written at the commit with one
    UPDATE per table and set of changed columns, so recording many answers together costs a
    few statements.
    """
    submissions = tracked.lock_members(tx, [answer.attempt.submission_id for answer in answers])
    decisions: list[tuple[Answer, ClientInstruction, Decision | None]] = []
    for answer in answers:
        for member in submissions[answer.attempt.submission_id].members:
            late = (
                member.status != Status.SUBMITTING or member.attempt_count != answer.attempt.number
            )
            decision = (
                None if late else after_submit(tracked_of(member), answer.result, member.position)
            )
            decisions.append((answer, member, decision))
    ibkr.look_up(
        tx,
        instruction_ids=[d.instruction_id for _, _, d in decisions if d and d.instruction_id],
        set_ids=[
            i
            for answer, member, d in decisions
            for i in (member.instruction_set_id, d.instruction_set_id if d else None)
            if i is not None
        ],
    )
    for answer in answers:
        submission = submissions[answer.attempt.submission_id]
        result = answer.result
        submission.http_status = result.http_status
        submission.updated_at = answer.at
        if result.instruction_set_id is not None and result.outcome in (
            Outcome.FINAL,
            Outcome.ACCEPTED,
            Outcome.REJECTED,
        ):
            submission.instruction_set_id = result.instruction_set_id
        first = next(
            (decision for a, member, decision in decisions if a is answer and decision is not None),
            None,
        )
        if first is not None and submission.attempt_count == answer.attempt.number:
            # Once per answer: what it shows about the attempt (closed, or still open).
            settle_attempt(submission, first, answer.at, answer_to_post=True)
    for answer, member, decision in decisions:
        if decision is None:
            # Another process took over after our lease ran out; its record stands.
            append_audit(
                tx,
                member,
                from_status=member.status,
                to_status=member.status,
                reason=(
                    f"late answer to attempt {answer.attempt.number} ignored: "
                    "the instruction moved on"
                ),
                actor=ctx.actor,
                now=answer.at,
            )
            continue
        apply_decision(tx, ctx, member, decision, result=answer.result, now=answer.at)


def release_unfinished(ctx: TrackingContext, message_id: str) -> int:
    """Hand a message's SUBMITTING rows that this process still leases to the scheduler now.

    For a message handled again after this process failed half-way through it (the database
    went away after the POST, say): the scheduler asks IBKR what became of the POST before
    anything is sent again. Without this the rows wait for their lease to run out
    (`ctx.lease_s`, IBKR_LEASE_S). Returns the number of rows released.
    """
    now = ctx.clock.now()
    with ctx.store.transaction() as tx:
        return tracked.release_submitting_of_message(tx, message_id, ctx.owner, now)
