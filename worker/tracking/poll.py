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
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models import ClientInstruction, Submission, is_postgresql
from worker.ibkr.calendar import in_downtime
from worker.ibkr.responses import Outcome
from worker.logging import get_logger
from worker.tracking import backoff
from worker.tracking.apply import apply_decision, tracked_of
from worker.tracking.context import TrackingContext
from worker.tracking.decisions import Action, after_lookup, after_set_read
from worker.tracking.submit import send

log = get_logger(__name__)


@dataclass(frozen=True)
class Claimed:
    """A row this process now holds the lease of."""

    id: int
    status: str
    submission_id: int | None
    instruction_set_id: int | None
    is_bulk: bool


def claim_due(ctx: TrackingContext, *, limit: int) -> list[Claimed]:
    """Take the lease of up to `limit` rows whose next look is due, oldest first."""
    now = ctx.clock.now()
    lease_until = now + timedelta(seconds=ctx.lease_s)
    with ctx.session_factory.begin() as session:
        due = (
            select(ClientInstruction.id)
            .where(ClientInstruction.next_poll_at <= now)
            .order_by(ClientInstruction.next_poll_at)
            .limit(limit)
        )
        if is_postgresql(session):
            due = due.with_for_update(skip_locked=True)
        claimed_ids = list(
            session.execute(
                update(ClientInstruction)
                .where(ClientInstruction.id.in_(due.scalar_subquery()))
                .values(
                    next_poll_at=lease_until, lease_owner=ctx.owner, lease_expires_at=lease_until
                )
                .returning(ClientInstruction.id)
                .execution_options(synchronize_session=False)
            ).scalars()
        )
        if not claimed_ids:
            return []
        rows = session.execute(
            select(
                ClientInstruction.id,
                ClientInstruction.status,
                ClientInstruction.submission_id,
                ClientInstruction.instruction_set_id,
                Submission.is_bulk,
            )
            .outerjoin(Submission, Submission.id == ClientInstruction.submission_id)
            .where(ClientInstruction.id.in_(claimed_ids))
        ).all()
    return [
        Claimed(r.id, r.status, r.submission_id, r.instruction_set_id, bool(r.is_bulk))
        for r in rows
    ]


def next_due_in_s(ctx: TrackingContext, cap_s: float) -> float:
    """Seconds until the earliest scheduled look (at most `cap_s`), for the scheduler's sleep."""
    with ctx.session_factory() as session:
        earliest = session.execute(
            select(ClientInstruction.next_poll_at)
            .where(ClientInstruction.next_poll_at.is_not(None))
            .order_by(ClientInstruction.next_poll_at)
            .limit(1)
        ).scalar_one_or_none()
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
        if row.status in ("RECEIVED", "SUBMITTING") and row.submission_id is not None:
            by_submission[row.submission_id].append(row)
        elif row.is_bulk and row.instruction_set_id is not None:
            by_set[row.instruction_set_id].append(row)
        else:
            tasks.append(_bind(poll_one, ctx, row.id))
    for submission_id, rows in by_submission.items():
        if any(r.status == "SUBMITTING" for r in rows):
            tasks.append(_bind(resolve_submission, ctx, submission_id))
        else:
            tasks.append(_bind(send, ctx, submission_id))
    for set_id in by_set:
        tasks.append(_bind(poll_set, ctx, set_id))
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
        with ctx.session_factory.begin() as session:
            session.execute(
                update(ClientInstruction)
                .where(
                    ClientInstruction.id.in_(row_ids), ClientInstruction.lease_owner == ctx.owner
                )
                .values(next_poll_at=later, lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )
    except SQLAlchemyError:
        log.warning("could not release the rows of failed steps; their leases will run out")


def _bind(
    function: Callable[[TrackingContext, int], object], ctx: TrackingContext, key: int
) -> Callable[[], object]:
    return lambda: function(ctx, key)


def _guarded(task: Callable[[], object]) -> bool:
    # One instruction's trouble (a database hiccup, a bug) must not stop the round; the row is
    # released at the end of the round (or its lease runs out) and it is looked at again.
    try:
        task()
    except Exception:
        log.exception("scheduler step failed; the row will be looked at again")
        return False
    return True


def _held(session: Session, ctx: TrackingContext, row_id: int) -> ClientInstruction | None:
    query = select(ClientInstruction).where(ClientInstruction.id == row_id)
    if is_postgresql(session):
        query = query.with_for_update()
    row = session.execute(query).scalar_one_or_none()
    if row is None or row.lease_owner != ctx.owner or row.final_at is not None:
        return None
    return row


def _set_owned_elsewhere(session: Session, row: ClientInstruction, set_id: int | None) -> bool:
    if set_id is None:
        return False
    other = session.execute(
        select(ClientInstruction.id)
        .where(
            ClientInstruction.instruction_set_id == set_id,
            ClientInstruction.id != row.id,
            or_(
                ClientInstruction.submission_id.is_(None),
                ClientInstruction.submission_id != row.submission_id,
            ),
        )
        .limit(1)
    ).first()
    return other is not None


def poll_one(ctx: TrackingContext, row_id: int) -> None:
    """Look at one instruction with `GET /client-instructions/{id}` and record what it shows."""
    with ctx.session_factory() as session:
        row = session.get(ClientInstruction, row_id)
        if row is None or row.lease_owner != ctx.owner or row.final_at is not None:
            return
        client_instruction_id = row.client_instruction_id
    result = ctx.ibkr.get_client_instruction(client_instruction_id)
    ctx.observer.api_call(result)
    resend_submission: int | None = None
    with ctx.session_factory.begin() as session:
        held = _held(session, ctx, row_id)
        if held is None:
            return
        decision = after_lookup(
            tracked_of(held),
            result,
            set_owned_elsewhere=_set_owned_elsewhere(session, held, result.instruction_set_id),
        )
        apply_decision(
            session,
            ctx,
            held,
            decision,
            result=result,
            now=ctx.clock.now(),
            counts_as_poll=held.status not in ("RECEIVED", "SUBMITTING"),
        )
        if decision.action is Action.RESEND and held.submission_id is not None:
            held.lease_owner = ctx.owner  # keep it ours until the resend below commits SUBMITTING
            resend_submission = held.submission_id
    if resend_submission is not None:
        send(ctx, resend_submission)


def resolve_submission(ctx: TrackingContext, submission_id: int) -> None:
    """Find out what became of a POST whose answer we never recorded (a lost answer, a 5xx, a
    crash): ask for the first member's status; 404 means IBKR never got it (resend the same
    body), anything else is reconciled member by member."""
    with ctx.session_factory() as session:
        members = list(
            session.execute(
                select(
                    ClientInstruction.id, ClientInstruction.status, ClientInstruction.lease_owner
                )
                .where(ClientInstruction.submission_id == submission_id)
                .order_by(ClientInstruction.position)
            ).all()
        )
    # The first look decides for a bulk request too (IBKR registers all its members or none):
    # after a 404 it is resent whole, and the later members are no longer ours to look at.
    for member in members:
        if member.status == "SUBMITTING" and member.lease_owner == ctx.owner:
            poll_one(ctx, member.id)


def poll_set(ctx: TrackingContext, instruction_set_id: int) -> None:
    """Read a bulk request's whole set with one `GET /instruction-sets/{id}` and record every
    non-final member of it, so no member needs a poll of its own."""
    result = ctx.ibkr.get_instruction_set(instruction_set_id)
    ctx.observer.api_call(result)
    now = ctx.clock.now()
    with ctx.session_factory.begin() as session:
        query = select(ClientInstruction).where(
            ClientInstruction.instruction_set_id == instruction_set_id,
            ClientInstruction.final_at.is_(None),
            or_(
                ClientInstruction.lease_owner == ctx.owner,
                ClientInstruction.lease_owner.is_(None),
                and_(
                    ClientInstruction.lease_expires_at.is_not(None),
                    ClientInstruction.lease_expires_at < now,
                ),
            ),
        )
        if is_postgresql(session):
            query = query.with_for_update(skip_locked=True)
        members = list(session.execute(query).scalars())
        for member in members:
            decision = after_set_read(tracked_of(member), result, member.position)
            apply_decision(
                session, ctx, member, decision, result=result, now=now, counts_as_poll=True
            )
    if result.outcome not in (Outcome.ACCEPTED, Outcome.FINAL):
        log.warning(
            "instruction set read failed",
            instruction_set_id=instruction_set_id,
            outcome=result.outcome.value,
            http_status=result.http_status,
        )
