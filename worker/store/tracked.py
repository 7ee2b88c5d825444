"""Reading, locking and claiming tracked instructions (`client_instructions` with their
`submissions`).

A row read to be changed is locked (PostgreSQL row locks; SQLite's transaction holds the
write lock from its BEGIN) and adopted by the transaction, which writes what changed at the
commit. A member is read with its submission (`ClientInstruction.submission`), a submission
locked with its members with them (`Submission.members`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update

from worker.status import SENDING, Status
from worker.store.database import Tx, row_from, table_of
from worker.store.rows import ClientInstruction, InboundMessage, Submission, columns

_MEMBERS = table_of(ClientInstruction)
_SUBMISSIONS = table_of(Submission)
_M = _MEMBERS.c
_WIDTH = len(columns(ClientInstruction))


def _with_submissions() -> Select[Any]:
    """Members and their submissions' columns (a member without one: None there)."""
    return select(*_MEMBERS.columns, *_SUBMISSIONS.columns).select_from(
        _MEMBERS.outerjoin(_SUBMISSIONS, _M.submission_id == _SUBMISSIONS.c.id)
    )


def _read(tx: Tx, query: Select[Any], *, adopt: bool) -> list[ClientInstruction]:
    """The members `query` (built on `_with_submissions`) finds, each with its submission;
    adopted by `tx` when they are to be changed."""
    found: list[ClientInstruction] = []
    for values in tx.execute(query).all():
        row = row_from(ClientInstruction, values[:_WIDTH])
        if adopt:
            row = tx.adopt(row)
        if row.submission is None and values[_WIDTH] is not None:
            submission = row_from(Submission, values[_WIDTH:])
            row.submission = tx.adopt(submission) if adopt else submission
        found.append(row)
    return found


def lock_members(tx: Tx, submission_ids: Sequence[int]) -> dict[int, Submission]:
    """The submissions and their members (in position order), the members locked; adopted.
    A submission that is not there (or has no member) is left out."""
    query = _with_submissions().where(tx.one_of(_M.submission_id, submission_ids))
    query = tx.locked(query.order_by(_M.submission_id, _M.position), of=_MEMBERS)
    submissions: dict[int, Submission] = {}
    for member in _read(tx, query, adopt=True):
        submission = member.submission
        assert submission is not None
        if submission.id not in submissions:
            submissions[submission.id] = submission
            submission.members = []
        submission.members.append(member)
    return submissions


def lock_row(tx: Tx, row_id: int) -> ClientInstruction | None:
    """One member, locked, with its submission; adopted."""
    query = tx.locked(_with_submissions().where(_M.id == row_id), of=_MEMBERS)
    found = _read(tx, query, adopt=True)
    return found[0] if found else None


def peek(tx: Tx, row_id: int) -> ClientInstruction | None:
    """One member as it is now, neither locked nor adopted (to decide whether to look)."""
    found = _read(tx, _with_submissions().where(_M.id == row_id), adopt=False)
    return found[0] if found else None


def lock_unfinished_of_set(
    tx: Tx, instruction_set_id: int, owner: str, now: datetime
) -> list[ClientInstruction]:
    """The members of an IBKR set that are not final and that `owner` may change (its own
    lease, nobody's, or one run out), locked, skipping those another transaction holds."""
    query = _with_submissions().where(
        _M.instruction_set_id == instruction_set_id,
        _M.final_at.is_(None),
        or_(
            _M.lease_owner == owner,
            _M.lease_owner.is_(None),
            and_(_M.lease_expires_at.is_not(None), _M.lease_expires_at < now),
        ),
    )
    return _read(tx, tx.locked(query, of=_MEMBERS, skip_locked=True), adopt=True)


def unfinished_by_instruction_id(tx: Tx, instruction_id: int) -> ClientInstruction | None:
    """The member IBKR knows as `instruction_id`, if it is not final; adopted."""
    found = _read(
        tx,
        _with_submissions().where(_M.instruction_id == instruction_id, _M.final_at.is_(None)),
        adopt=True,
    )
    if len(found) > 1:
        raise LookupError(
            f"more than one unfinished instruction has instructionId {instruction_id}"
        )
    return found[0] if found else None


def sibling_registered(tx: Tx, row: ClientInstruction) -> bool:
    """Another member of the row's submission already has a status from IBKR (so the POST
    registered: IBKR registers a bulk request's members all or none)."""
    if row.submission_id is None:
        return False
    not_ibkrs = [*SENDING, Status.FAILED]
    query = (
        select(_M.id)
        .where(_M.submission_id == row.submission_id, _M.id != row.id, _M.status.not_in(not_ibkrs))
        .limit(1)
    )
    return tx.execute(query).first() is not None


def set_owned_elsewhere(tx: Tx, row: ClientInstruction, instruction_set_id: int | None) -> bool:
    """A member of another submission already names the IBKR set `instruction_set_id`."""
    if instruction_set_id is None:
        return False
    query = (
        select(_M.id)
        .where(
            _M.instruction_set_id == instruction_set_id,
            _M.id != row.id,
            or_(_M.submission_id.is_(None), _M.submission_id != row.submission_id),
        )
        .limit(1)
    )
    return tx.execute(query).first() is not None


def count_members(tx: Tx, submission_id: int) -> int:
    """How many members a submission has."""
    query = select(func.count()).where(_M.submission_id == submission_id)
    return int(tx.execute(query).scalar_one())


@dataclass(frozen=True)
class MemberState:
    """What `submission_state` tells of one member."""

    id: int
    status: str
    lease_owner: str | None


def submission_state(tx: Tx, submission_id: int) -> tuple[bool, list[MemberState]] | None:
    """Whether the submission's latest attempt may still register (`inflight_until` set), and
    its members in position order; None when there is no such submission."""
    inflight = tx.execute(
        select(_SUBMISSIONS.c.inflight_until).where(_SUBMISSIONS.c.id == submission_id)
    ).first()
    if inflight is None:
        return None
    members = tx.execute(
        select(_M.id, _M.status, _M.lease_owner)
        .where(_M.submission_id == submission_id)
        .order_by(_M.position)
    ).all()
    return inflight[0] is not None, [MemberState(*member) for member in members]


@dataclass(frozen=True)
class Claimed:
    """A row this process now holds the lease of; `claimed_at`: when (the shared clock), the
    earliest moment anything this process then asks IBKR about it can have left."""

    id: int
    status: str
    submission_id: int | None
    instruction_set_id: int | None
    is_bulk: bool
    claimed_at: datetime
    final: bool = False
    applied_twice: bool = False


def claim_due(
    tx: Tx, *, now: datetime, owner: str, lease_until: datetime, limit: int
) -> list[Claimed]:
    """Take the lease of up to `limit` rows whose next look is due, oldest first (on
    PostgreSQL skipping rows another scheduler is claiming)."""
    due = select(_M.id).where(_M.next_poll_at <= now).order_by(_M.next_poll_at).limit(limit)
    due = tx.locked(due, skip_locked=True)
    claimed_ids = list(
        tx.execute(
            update(_MEMBERS)
            .where(_M.id.in_(due.scalar_subquery()))
            .values(next_poll_at=lease_until, lease_owner=owner, lease_expires_at=lease_until)
            .returning(_M.id)
        ).scalars()
    )
    if not claimed_ids:
        return []
    rows = tx.execute(
        select(
            _M.id,
            _M.status,
            _M.submission_id,
            _M.instruction_set_id,
            _M.final_at,
            _M.applied_twice_at,
            _SUBMISSIONS.c.is_bulk,
        )
        .select_from(_MEMBERS.outerjoin(_SUBMISSIONS, _SUBMISSIONS.c.id == _M.submission_id))
        .where(tx.one_of(_M.id, claimed_ids))
    ).all()
    return [
        Claimed(
            r.id,
            r.status,
            r.submission_id,
            r.instruction_set_id,
            bool(r.is_bulk),
            now,
            final=r.final_at is not None,
            applied_twice=r.applied_twice_at is not None,
        )
        for r in rows
    ]


def next_due_at(tx: Tx) -> datetime | None:
    """The earliest scheduled look, if any."""
    query = (
        select(_M.next_poll_at)
        .where(_M.next_poll_at.is_not(None))
        .order_by(_M.next_poll_at)
        .limit(1)
    )
    found: datetime | None = tx.execute(query).scalar_one_or_none()
    return found


def release(tx: Tx, row_ids: Sequence[int], owner: str, look_at: datetime) -> None:
    """Give up `owner`'s leases of these rows; they are due again at `look_at`."""
    tx.execute(
        update(_MEMBERS)
        .where(tx.one_of(_M.id, row_ids), _M.lease_owner == owner)
        .values(next_poll_at=look_at, lease_owner=None, lease_expires_at=None)
    )


def release_submitting_of_message(tx: Tx, message_id: str, owner: str, now: datetime) -> int:
    """Hand a message's SUBMITTING rows that `owner` leases to the scheduler now; returns how
    many."""
    released = tx.execute(
        update(_MEMBERS)
        .where(
            _M.message_id == message_id,
            _M.status == Status.SUBMITTING,
            _M.lease_owner == owner,
        )
        .values(next_poll_at=now, lease_owner=None, lease_expires_at=None)
        .returning(_M.id)
    ).all()
    return len(released)


@dataclass(frozen=True)
class Received:
    """What the store already holds of a batch of inbound requests (`look_up_received`)."""

    #: The clientInstructionIds of the request first received under each known message id.
    known: dict[str, tuple[int, ...]]
    #: The rows owning these clientInstructionIds (with their submissions).
    owners: dict[int, ClientInstruction]
    #: The fingerprint of each known message id.
    fingerprints: dict[str, str]


def look_up_received(tx: Tx, message_ids: Sequence[str | None], ids: Sequence[int]) -> Received:
    """The requests already received from these messages and the owners of these
    clientInstructionIds (two queries at most)."""
    messages = table_of(InboundMessage)
    wanted_messages = {m for m in message_ids if m is not None}
    wanted_ids = set(ids)
    fingerprints: dict[str, str] = {}
    if wanted_messages:
        fingerprints = {
            message_id: fingerprint
            for message_id, fingerprint in tx.execute(
                select(messages.c.message_id, messages.c.request_sha256).where(
                    tx.one_of(messages.c.message_id, wanted_messages)
                )
            )
        }
    conditions = []
    if fingerprints:
        conditions.append(tx.one_of(_M.message_id, set(fingerprints)))
    if wanted_ids:
        conditions.append(
            and_(tx.one_of(_M.client_instruction_id, wanted_ids), _M.duplicate_of_id.is_(None))
        )
    if not conditions:
        return Received({}, {}, fingerprints)
    first: dict[str, int | None] = {}
    members: dict[int | None, list[int]] = {}
    owners: dict[int, ClientInstruction] = {}
    query = _with_submissions().where(or_(*conditions)).order_by(_M.submission_id, _M.position)
    for row in _read(tx, query, adopt=False):
        if row.message_id is not None and row.message_id in fingerprints:
            first.setdefault(row.message_id, row.submission_id)
            if first[row.message_id] == row.submission_id:
                members.setdefault(row.submission_id, []).append(row.client_instruction_id)
        if row.client_instruction_id in wanted_ids and row.duplicate_of_id is None:
            owners[row.client_instruction_id] = row
    known = {m: tuple(members.get(submission_id, ())) for m, submission_id in first.items()}
    return Received(known, owners, fingerprints)
