"""Follow instructions to a final status: claim due rows with a lease, look at them, record.

The schedule lives in the database: `next_poll_at` per row. Claiming a row moves its
`next_poll_at` to the end of the lease, so one indexed condition (`next_poll_at <= now`) finds
both due rows and rows whose holder crashed; PostgreSQL claims with `FOR UPDATE SKIP LOCKED` so
any number of schedulers cooperate without polling a row twice in a round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial

from worker.ibkr.calendar import in_downtime
from worker.ibkr.responses import Outcome
from worker.logging import get_logger
from worker.status import SENDING, Status
from worker.store import tracked
from worker.store.errors import DatabaseError
from worker.store.tracked import Claimed
from worker.tracking import backoff
from worker.tracking.apply import (
    api_call_of,
    apply_decision,
    record_applied_twice,
    settle_attempt,
    tracked_of,
)
from worker.tracking.context import TrackingContext
from worker.tracking.decisions import Action, after_lookup, after_set_read, reconcile
from worker.tracking.submit import Attempt, begin_attempt, post, record, send

log = get_logger(__name__)


def claim_due(ctx: TrackingContext, *, limit: int) -> list[Claimed]:
    """Take the lease of up to `limit` rows whose next look is due, oldest first."""
    now = ctx.clock.now()
    with ctx.store.transaction() as tx:
        return tracked.claim_due(
            tx,
            now=now,
            owner=ctx.owner,
            lease_until=now + timedelta(seconds=ctx.lease_s),
            limit=limit,
        )


def next_due_in_s(ctx: TrackingContext, cap_s: float) -> float:
    """Seconds until the earliest scheduled look (at most `cap_s`), for the scheduler's sleep."""
    with ctx.store.transaction() as tx:
        earliest = tracked.next_due_at(tx)
    if earliest is None:
        return cap_s
    return max(0.0, min(cap_s, (earliest - ctx.clock.now()).total_seconds()))


def run_round(
    ctx: TrackingContext, *, limit: int = 100, pool: ThreadPoolExecutor | None = None
) -> int:
    """One scheduler round: claim due rows and take each one step further. Returns the number
    of rows claimed (0: nothing was due, or IBKR is in its scheduled downtime)."""
    if ctx.settings.honor_downtime and in_downtime(ctx.clock.now()):
        return 0
    claimed = claim_due(ctx, limit=limit)
    if not claimed:
        return 0
    tasks: list[Callable[[], object]] = []
    by_submission: dict[int, list[Claimed]] = defaultdict(list)
    by_set: dict[int, list[Claimed]] = defaultdict(list)
    for row in claimed:
        if row.final:
            tasks.append(partial(second_look, ctx, row.id, row.claimed_at))
        elif row.status in SENDING and row.submission_id is not None:
            by_submission[row.submission_id].append(row)
        elif (row.is_bulk or row.applied_twice) and row.instruction_set_id is not None:
            # A bulk member's set, or a single one that IBKR shows twice: read by its own
            # set (a status GET by clientInstructionId then describes the first transaction).
            by_set[row.instruction_set_id].append(row)
        else:
            tasks.append(partial(poll_one, ctx, row.id, row.claimed_at))
    for submission_id, rows in by_submission.items():
        if any(r.status == Status.SUBMITTING for r in rows):
            tasks.append(partial(resolve_submission, ctx, submission_id, rows[0].claimed_at))
        else:
            tasks.append(partial(send, ctx, submission_id))
    for set_id in by_set:
        tasks.append(partial(poll_set, ctx, set_id))
    if pool is None:
        failures = sum(not _guarded(task) for task in tasks)
    else:
        failures = sum(not f.result() for f in [pool.submit(_guarded, task) for task in tasks])
    if failures:
        release_failed(ctx, [row.id for row in claimed])
    return len(claimed)


def release_failed(ctx: TrackingContext, row_ids: list[int]) -> None:
    """Rows of a finished round that are still leased by us are rows whose step failed (the
    database went away mid-step, say): look at them again after the error delay rather than
    when the lease runs out. A SUBMITTING one is resolved by GET before anything is resent.
    Best effort: if the database is still away, the lease runs out as before."""
    later = ctx.clock.now() + timedelta(seconds=backoff.ERROR_INITIAL_DELAY_S)
    try:
        with ctx.store.transaction() as tx:
            tracked.release(tx, row_ids, ctx.owner, later)
    except DatabaseError:
        log.warning("could not release the rows of failed steps; their leases will run out")


def _guarded(task: Callable[[], object]) -> bool:
    # One instruction's trouble (a database hiccup, a bug) must not stop the round; the row is
    # released at the end of the round (or its lease runs out) and it is looked at again.
    try:
        task()
    except Exception:
        log.exception("scheduler step failed; the row will be looked at again")
        return False
    return True


def poll_one(ctx: TrackingContext, row_id: int, claimed_at: datetime) -> None:
    """Look at one instruction with `GET /client-instructions/{id}` and record what it shows.

    For the first member of a submission still SUBMITTING this resolves its latest attempt: a
    transaction of ours found settles it; IBKR not knowing the id counts only after the
    attempt can no longer register (and twice, apart in time), and then the next attempt begins
    in the same transaction that decided it (so no other process can decide the same), and is
    sent. `claimed_at`: when this process claimed the row.
    """
    with ctx.store.transaction() as tx:
        row = tracked.peek(tx, row_id)
    if row is None or row.lease_owner != ctx.owner or row.final_at is not None:
        return
    result = ctx.ibkr.get_client_instruction(row.client_instruction_id)
    ctx.observer.api_call(result)
    attempt: Attempt | None = None
    with ctx.ibkr.permit():
        with ctx.store.transaction() as tx:
            held = tracked.lock_row(tx, row_id)
            if held is None or held.lease_owner != ctx.owner or held.final_at is not None:
                return
            now, now_mono = ctx.clock.now(), ctx.clock.monotonic()
            # The first member's lookups decide what became of a bulk POST, unless another
            # member already shows it registered (then a 404 is only a view lagging behind).
            deciding = (
                held.position == 0 or held.submission_id is None
            ) and not tracked.sibling_registered(tx, held)
            decision = after_lookup(
                tracked_of(held, with_content=True),
                result,
                set_owned_elsewhere=tracked.set_owned_elsewhere(
                    tx, held, result.instruction_set_id
                ),
                looked_at=claimed_at,
                now=now,
                decides_attempt=deciding,
            )
            sending = held.status in SENDING
            apply_decision(
                tx,
                ctx,
                held,
                decision,
                result=result,
                now=now,
                counts_as_poll=not sending,
            )
            submission = held.submission
            if deciding and sending and submission is not None:
                settle_attempt(submission, decision, now, answer_to_post=False)
                if decision.action is Action.RESEND:
                    held.lease_owner = ctx.owner  # ours until the next attempt is begun below
                    held.lease_expires_at = now + timedelta(seconds=ctx.lease_s)
                    locked = tracked.lock_members(tx, [submission.id])[submission.id]
                    attempt = begin_attempt(tx, ctx, locked, locked.members, now, now_mono=now_mono)
        if attempt is not None:
            answer = post(ctx, attempt)
    if attempt is not None:
        record(ctx, answer)


def resolve_submission(ctx: TrackingContext, submission_id: int, claimed_at: datetime) -> None:
    """Find out what became of a POST whose answer we never recorded (a lost answer, a 5xx, a
    crash), or send the next attempt of one that IBKR refused outright.

    An attempt that can no longer register (settled, nothing in flight) is followed by the next
    one at once. Otherwise the first member's status decides for a bulk request too (IBKR
    registers all its members or none): after IBKR is seen not to know it, the whole body goes
    again; when IBKR has it, each member is looked at."""
    with ctx.store.transaction() as tx:
        state = tracked.submission_state(tx, submission_id)
    if state is None:
        return
    open_attempt, members = state
    ours = [m for m in members if m.status == Status.SUBMITTING and m.lease_owner == ctx.owner]
    if not ours:
        return
    if not open_attempt and all(m.status in SENDING for m in members):
        send(ctx, submission_id)
        return
    # In flight, or registered (some members already have IBKR's status): each one still
    # SUBMITTING is looked up.
    for member in ours:
        poll_one(ctx, member.id, claimed_at)


def second_look(ctx: TrackingContext, row_id: int, claimed_at: datetime) -> None:
    """The one look at a final instruction two of whose attempts left (see
    `apply.needs_second_look`): a 208 now shows that both registered."""
    del claimed_at  # any answer now is late enough: the look was scheduled past the horizon
    with ctx.store.transaction() as tx:
        row = tracked.peek(tx, row_id)
    if row is None or row.lease_owner != ctx.owner:
        return
    result = ctx.ibkr.get_client_instruction(row.client_instruction_id)
    ctx.observer.api_call(result)
    with ctx.store.transaction() as tx:
        held = tracked.lock_row(tx, row_id)
        if held is None or held.lease_owner != ctx.owner:
            return
        now = ctx.clock.now()
        held.lease_owner = None
        held.lease_expires_at = None
        if result.outcome in (Outcome.ACCEPTED, Outcome.FINAL, Outcome.DUPLICATE):
            held.next_poll_at = None
            decision = reconcile(tracked_of(held), result, set_owned_elsewhere=False)
            if decision.applied_twice is not None:
                record_applied_twice(tx, ctx, held, decision, api=api_call_of(result), now=now)
            return
        # No usable answer: try once more after the error delay.
        held.next_poll_at = now + timedelta(seconds=backoff.ERROR_INITIAL_DELAY_S * 5)


def poll_set(ctx: TrackingContext, instruction_set_id: int) -> None:
    """Read a bulk request's whole set with one `GET /instruction-sets/{id}` and record every
    non-final member of it, so no member needs a poll of its own."""
    result = ctx.ibkr.get_instruction_set(instruction_set_id)
    ctx.observer.api_call(result)
    now = ctx.clock.now()
    with ctx.store.transaction() as tx:
        for member in tracked.lock_unfinished_of_set(tx, instruction_set_id, ctx.owner, now):
            decision = after_set_read(tracked_of(member), result, member.position)
            apply_decision(tx, ctx, member, decision, result=result, now=now, counts_as_poll=True)
    if result.outcome not in (Outcome.ACCEPTED, Outcome.FINAL):
        log.warning(
            "instruction set read failed",
            instruction_set_id=instruction_set_id,
            outcome=result.outcome.value,
            http_status=result.http_status,
        )
