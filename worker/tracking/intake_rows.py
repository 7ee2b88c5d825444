"""The rows a received request makes: a submission, its members (RECEIVED, or FAILED with the
problem when it cannot be sent) and its message id. The rows of a batch of requests get their
ids together and are inserted when the transaction commits (`Batch.insert`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from worker import jsontext
from worker.config import KEPT_BODY_BYTES
from worker.ibkr.requests import (
    ParsedRequest,
    build_body,
    member_account_id,
    member_amount,
    member_currency,
    member_target_account_id,
)
from worker.status import Status
from worker.store import Tx, ids
from worker.store.rows import ClientInstruction, InboundMessage, Submission
from worker.tracking.apply import spread_past_downtime
from worker.tracking.checks import Checked, Identified
from worker.tracking.context import TrackingContext
from worker.tracking.decisions import INVALID_REQUEST_CODE
from worker.tracking.record import change_status
from worker.tracking.submit import Attempt, begin_attempt


@dataclass(frozen=True)
class Intake:
    """What receiving a request led to.

    `disposition`: `new` (RECEIVED rows committed; send `submission_id`, or `attempt` when
    it was begun), `same_intent` (a redelivery or a repeat: the existing state stands), or
    `failed` (recorded FAILED).
    """

    disposition: str
    submission_id: int | None
    client_instruction_ids: tuple[int, ...]
    #: With `begin_submission`: the attempt begun in the same transaction (SUBMITTING
    #: committed with RECEIVED), or None when the request is held for IBKR's downtime.
    attempt: Attempt | None = None


@dataclass
class Batch:
    """The requests of one `receive_all`: the ids they hold and the rows they make."""

    tx: Tx
    ctx: TrackingContext
    now: datetime
    now_mono: float
    owners: dict[int, ClientInstruction]
    #: clientInstructionIds the requests of this batch hold (an assigned id must not take one).
    held_ids: set[int] = field(default_factory=set)
    held_messages: set[str] = field(default_factory=set)
    submissions: list[Submission] = field(default_factory=list)
    members: list[ClientInstruction] = field(default_factory=list)
    messages: list[InboundMessage] = field(default_factory=list)
    #: The rows of this batch owning a clientInstructionId (no `duplicate_of_id`).
    made: dict[int, ClientInstruction] = field(default_factory=dict)
    #: Rows of this batch that duplicate another row of it (its id known only at `insert`).
    duplicates: list[tuple[ClientInstruction, ClientInstruction]] = field(default_factory=list)

    def owner_of(self, client_instruction_id: int) -> ClientInstruction | None:
        """The row owning `client_instruction_id`: stored, or made by this batch."""
        return self.owners.get(client_instruction_id) or self.made.get(client_instruction_id)

    def free_id(self) -> int:
        """An id from the sequence that neither a stored row nor this batch holds."""
        start = self.ctx.settings.client_instruction_id_start
        found = ids.free_client_instruction_id(self.tx, start, self.held_ids)
        self.held_ids.add(found)
        return found

    def add(
        self, submission: Submission, members: list[ClientInstruction], fingerprint: str | None
    ) -> None:
        """A request's new rows (`fingerprint`: the first request under its message id)."""
        submission.members = members
        for member in members:
            if member.duplicate_of_id is None:
                owner = self.owner_of(member.client_instruction_id)
                if owner is None:
                    self.made[member.client_instruction_id] = member
                else:
                    self.duplicates.append((member, owner))
        self.submissions.append(submission)
        self.members.extend(members)
        if submission.message_id is not None and fingerprint is not None:
            self.messages.append(
                InboundMessage(
                    message_id=submission.message_id,
                    request_sha256=fingerprint,
                    received_at=self.now,
                )
            )

    def insert(self) -> None:
        """Ids for every new row with one query at most, then the rows, inserted at the commit
        in the order the requests came."""
        allocated = ids.allocate(
            self.tx,
            {Submission: len(self.submissions), ClientInstruction: len(self.members)},
            ahead=ids.IDS_DRAWN_AHEAD,
        )
        for submission, submission_id in zip(self.submissions, allocated[Submission], strict=True):
            submission.id = submission_id
            for member in submission.members:
                member.submission_id = submission_id
        for member, member_id in zip(self.members, allocated[ClientInstruction], strict=True):
            member.id = member_id
        for member, owner in self.duplicates:
            member.duplicate_of_id = owner.id
        by_message = {s.message_id: s.id for s in self.submissions if s.message_id is not None}
        for message in self.messages:
            message.submission_id = by_message[message.message_id]
        for submission in self.submissions:
            self.tx.insert(submission)
        for member in self.members:
            self.tx.insert(member)
        for message in self.messages:
            self.tx.insert(message)


def new_request(
    batch: Batch, item: Checked, parsed: ParsedRequest, final_ids: list[int]
) -> Callable[[], Intake]:
    """The rows of a request to send, RECEIVED (and SUBMITTING when its first attempt begins
    in the same transaction)."""
    ctx, now = batch.ctx, batch.now
    message_id, correlation_id = item.inbound.message_id, item.stored_correlation
    body = build_body(parsed, final_ids)
    submission = Submission(
        message_id=message_id,
        correlation_id=correlation_id,
        instruction_type=parsed.instruction_type,
        is_bulk=parsed.bulk,
        endpoint_path=parsed.endpoint.path,
        request_json=jsontext.dumps(body),
        created_at=now,
        updated_at=now,
    )
    first_look = spread_past_downtime(ctx, now + timedelta(seconds=ctx.received_grace_s))
    members: list[ClientInstruction] = []
    for position, (member, cid) in enumerate(zip(parsed.members, final_ids, strict=True)):
        row = ClientInstruction(
            client_instruction_id=cid,
            position=position,
            instruction_type=parsed.instruction_type,
            account_id=member_account_id(member),
            target_account_id=member_target_account_id(member),
            amount=member_amount(member),
            currency=member_currency(member),
            correlation_id=correlation_id,
            message_id=message_id,
            status="",  # change_status records the move from nothing to RECEIVED
            pending_instruction_id=_int_or_none(member.get("pendingInstructionId")),
            next_poll_at=first_look,
            lease_owner=ctx.owner,
            lease_expires_at=first_look,
            created_at=now,
            updated_at=now,
            submission=submission,
        )
        members.append(row)
        reason = _received_reason(parsed, position, item.ids[position] is None, message_id)
        change_status(batch.tx, row, Status.RECEIVED, reason=reason, actor=ctx.actor, now=now)
    batch.add(submission, members, item.fingerprint)
    attempt = (
        begin_attempt(batch.tx, ctx, submission, members, now, body, now_mono=batch.now_mono)
        if item.inbound.begin_submission
        else None
    )
    return lambda: Intake("new", submission.id, tuple(final_ids), attempt)


def record_failed(
    batch: Batch,
    item: Checked,
    problem: str,
    *,
    code: str = INVALID_REQUEST_CODE,
    first_of_message: bool = True,
) -> Intake:
    """Record every member of a request that cannot be sent as FAILED (no API call), a member
    whose clientInstructionId another row owns (stored, or made by this batch) as a duplicate
    of it (`Batch.add`). `first_of_message`: the first request under its message id (which it
    then holds)."""
    ctx, now = batch.ctx, batch.now
    described: Identified = item.described()
    try:
        stored = jsontext.dumps(item.inbound.request)
    except (TypeError, ValueError):
        stored = repr(item.inbound.request)
    submission = Submission(
        message_id=item.inbound.message_id,
        correlation_id=item.stored_correlation,
        instruction_type=described.instruction_type[:64],
        is_bulk=described.bulk,
        endpoint_path="",
        request_json=stored[:KEPT_BODY_BYTES],
        created_at=now,
        updated_at=now,
    )
    taken = {i for i in item.ids if i is not None}
    batch.held_ids |= taken
    members: list[ClientInstruction] = []
    for position, (member, given) in enumerate(zip(described.members, item.ids, strict=True)):
        cid = given if given is not None else batch.free_id()
        account = member.get("sourceAccountId") or member.get("accountId")
        row = ClientInstruction(
            client_instruction_id=cid,
            position=position,
            instruction_type=described.instruction_type[:64],
            account_id=account[:64] if isinstance(account, str) else None,
            correlation_id=item.stored_correlation,
            message_id=item.inbound.message_id,
            status="",
            error_code=code,
            error_message=problem,
            created_at=now,
            updated_at=now,
            submission=submission,
        )
        members.append(row)
        change_status(
            batch.tx,
            row,
            Status.RECEIVED,
            reason="received a request that cannot be sent",
            actor=ctx.actor,
            now=now,
        )
        change_status(
            batch.tx,
            row,
            Status.FAILED,
            reason=f"not sent: {problem}" + (f" (member {position + 1})" if described.bulk else ""),
            actor=ctx.actor,
            now=now,
        )
    batch.add(submission, members, item.fingerprint if first_of_message else None)
    return Intake("failed", None, tuple(row.client_instruction_id for row in members))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _received_reason(
    parsed: ParsedRequest, position: int, assigned: bool, message_id: str | None
) -> str:
    where = (
        f"member {position + 1} of {len(parsed.members)} of a bulk request"
        if parsed.bulk
        else "request"
    )
    source = f"message {message_id}" if message_id else "a direct call"
    id_note = "; clientInstructionId assigned from the sequence" if assigned else ""
    return f"received {parsed.instruction_type} {where} from {source}{id_note}"
