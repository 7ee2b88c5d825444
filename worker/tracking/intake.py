"""Persist the intent of an inbound request before anything is sent.

Validate, recognise a redelivery or a repeated clientInstructionId, assign ids for requests that
came without one, and commit RECEIVED rows (with their audit and outbox events). An invalid
request that still names a request ends FAILED here with the field named and costs no API call;
one that cannot even be identified is refused with `Unprocessable` (it becomes a dead letter).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Numeric, and_, or_, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from models import ClientInstruction, InboundMessage, Submission, next_client_instruction_id
from models.db import allocate_ids, one_of
from models.unsaved import insert_unsaved, new_unsaved, table_of
from worker import jsontext
from worker.ibkr.ids import ID_DOMAIN, as_client_instruction_id
from worker.ibkr.requests import (
    ParsedRequest,
    RequestValidationError,
    build_body,
    member_account_id,
    member_amount,
    member_currency,
    member_target_account_id,
    parse_request,
)
from worker.tracking.apply import spread_past_downtime
from worker.tracking.context import TrackingContext
from worker.tracking.decisions import (
    DUPLICATE_MESSAGE_CODE,
    DUPLICATE_REQUEST_CODE,
    INVALID_REQUEST_CODE,
    same_intent,
)
from worker.tracking.record import change_status
from worker.tracking.submit import Attempt, begin_attempt

MAX_CORRELATION_ID = 128
#: Longest message id kept (dramatiq's are 36-character UUIDs).
MAX_MESSAGE_ID = 64
MAX_REQUEST_BYTES = 20 * 1024 * 1024  # IBKR's limit for one request
STORED_INVALID_BODY_BYTES = 64 * 1024
#: Ids for new submissions and client instructions a process draws from the sequences beyond
#: what a batch needs, for its next batches.
IDS_DRAWN_AHEAD = 256


class Unprocessable(Exception):
    """The message names no request we could track; it is set aside as a dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """(request, correlation_id) from the actor's arguments; Unprocessable names what is wrong."""
    if args:
        raise Unprocessable(
            "submit_instruction takes keyword arguments only (request, correlation_id); "
            f"got {len(args)} positional"
        )
    unexpected = sorted(set(kwargs) - {"request", "correlation_id"})
    if unexpected:
        raise Unprocessable(
            f"submit_instruction got unexpected keyword arguments: {', '.join(unexpected)}"
        )
    if "request" not in kwargs:
        raise Unprocessable("submit_instruction needs the keyword argument 'request'")
    return kwargs["request"], kwargs.get("correlation_id")


def _correlation_problem(correlation_id: Any) -> str | None:
    if correlation_id is None:
        return None
    if not isinstance(correlation_id, str):
        return "correlation_id must be a string"
    if len(correlation_id) > MAX_CORRELATION_ID:
        return f"correlation_id is longer than {MAX_CORRELATION_ID} characters"
    if not correlation_id.isascii():
        return "correlation_id must be ASCII"
    return None


def _as_id(value: Any) -> int | None:
    """A usable clientInstructionId, or None when the value cannot be one."""
    return as_client_instruction_id(value)


def _identify(raw: Any) -> tuple[str, bool, list[dict[str, Any]], list[int | None]]:
    """(type, bulk, members, given ids) of a request that failed validation but still names
    instructions we can record; Unprocessable when it does not."""
    if not isinstance(raw, dict):
        raise Unprocessable(f"'request' must be a JSON object, got {type(raw).__name__}")
    kind = raw.get("instructionType")
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise Unprocessable("'request' has no usable instructionType")
    if isinstance(raw.get("instruction"), dict):
        members, bulk = [raw["instruction"]], False
    elif isinstance(raw.get("instructions"), list) and raw["instructions"]:
        if not all(isinstance(member, dict) for member in raw["instructions"]):
            raise Unprocessable("'request.instructions' must be a list of JSON objects")
        members, bulk = list(raw["instructions"]), True
    else:
        raise Unprocessable(
            "'request' has neither an 'instruction' object nor an 'instructions' list"
        )
    ids: list[int | None] = []
    for index, member in enumerate(members):
        if "clientInstructionId" not in member or member["clientInstructionId"] is None:
            ids.append(None)
            continue
        number = _as_id(member["clientInstructionId"])
        if number is None:
            where = f"instructions[{index}]" if bulk else "instruction"
            raise Unprocessable(
                f"{where}.clientInstructionId {member['clientInstructionId']!r} is not an id "
                f"({ID_DOMAIN}), so the request cannot be tracked"
            )
        ids.append(number)
    return kind, bulk, members, ids


def _member_json(instruction_type: str, member: dict[str, Any]) -> str:
    return jsontext.dumps({"instructionType": instruction_type, "instruction": member})


def _stored_member_json(owner: ClientInstruction) -> str | None:
    submission = owner.submission
    if submission is None:
        return None
    body = jsontext.loads(submission.request_json)
    if not isinstance(body, dict):
        return None
    member = body["instructions"][owner.position] if submission.is_bulk else body.get("instruction")
    return _member_json(submission.instruction_type, member) if isinstance(member, dict) else None


def _free_id(session: Session, ctx: TrackingContext, taken: set[int]) -> int:
    """The next id from the sequence that no instruction of ours already holds."""
    while True:
        candidate = next_client_instruction_id(session, ctx.settings.client_instruction_id_start)
        if candidate in taken:
            continue
        exists = session.execute(
            select(ClientInstruction.id)
            .where(ClientInstruction.client_instruction_id == candidate)
            .limit(1)
        ).first()
        if exists is None:
            return candidate


@dataclass(frozen=True)
class Inbound:
    """One inbound request as the actor got it (`begin_submission`: see `receive`).

    `message_id` None: the message carried none (or an empty one); such a request can only be
    received when every member names its clientInstructionId, the idempotency key then.
    """

    request: Any
    correlation_id: Any
    message_id: str | None
    begin_submission: bool = False

    def fingerprint(self) -> str:
        """SHA-256 of `request` and `correlation_id` (keys sorted): what a message id stands
        for. The same id with another fingerprint is another request."""
        text = json.dumps(
            [self.request, self.correlation_id],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            default=repr,
        )
        return hashlib.sha256(text.encode("ascii")).hexdigest()


#: What `receive_all` gives for each request: a call that returns its `Intake` (or raises
#: `Unprocessable`) once the transaction has committed, or None when the request must be
#: received on its own after that commit (an earlier request of the batch holds its ids).
Received = Callable[[], Intake] | None


def receive(
    ctx: TrackingContext,
    *,
    request: Any,
    correlation_id: Any,
    message_id: str | None,
    begin_submission: bool = False,
) -> Intake:
    """Persist the intent of one inbound request (see the module docstring).

    `begin_submission`: also mark a new request's members SUBMITTING for its first attempt in
    the same transaction (`submit.begin_attempt`), so the caller can POST right after the
    commit without another transaction.
    """
    inbound = Inbound(request, correlation_id, message_id, begin_submission)
    for attempt in range(3):
        try:
            with ctx.session_factory.begin() as session:
                [finish] = receive_all(session, ctx, [inbound])
            assert finish is not None, "a request received alone is never deferred"
            return finish()
        except DataError as error:
            # The database refuses a value of this request (SQLSTATE class 22): it would refuse
            # it on every retry, so the message is set aside now instead of retried.
            detail = str(error.orig).splitlines()[0][:300] if error.orig else type(error).__name__
            raise Unprocessable(f"the database refused a value of the request: {detail}") from None
        except IntegrityError:
            # Another process stored the same clientInstructionId at the same moment: look again,
            # the repeat is then recognised as such.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def receive_all(
    session: Session, ctx: TrackingContext, inbounds: Sequence[Inbound]
) -> list[Received]:
    """Persist the intent of several inbound requests in the caller's transaction.

    Redeliveries and owners of the clientInstructionIds are looked up with one query each for
    the whole batch, and the new rows are written when the transaction flushes, so receiving
    many requests together costs a few statements, not a few per request.
    """
    now, now_mono = ctx.clock.now(), ctx.clock.monotonic()
    checked = [_check(inbound) for inbound in inbounds]
    known, owners, fingerprints = _look_up(
        session,
        [c.inbound.message_id for c in checked],
        [i for c in checked for i in c.ids if i is not None],
    )
    held_ids: set[int] = set()
    held_messages: set[str] = set()
    new: list[_NewRequest] = []
    received: list[Received] = []
    for item in checked:
        message_id = item.inbound.message_id
        if message_id is not None and message_id in fingerprints:
            if item.unprocessable is None and fingerprints[message_id] not in (
                "",
                item.fingerprint,
            ):
                # The message id is the request's idempotency key: another request under it
                # is never taken for the first one, nor silently dropped.
                received.append(_duplicate_message(session, ctx, item, message_id, now))
            else:
                received.append(_done(Intake("same_intent", None, known.get(message_id, ()))))
            continue
        if item.unprocessable is not None:
            received.append(_raise(item.unprocessable))
            continue
        given = {i for i in item.ids if i is not None}
        if (message_id is not None and message_id in held_messages) or given & held_ids:
            received.append(None)
            continue
        held_ids |= given
        if message_id is not None:
            held_messages.add(message_id)
        received.append(_receive(session, ctx, item, owners, held_ids, new, now, now_mono))
    _insert_new(session, new)
    return received


def _duplicate_message(
    session: Session, ctx: TrackingContext, item: _Checked, message_id: str, now: datetime
) -> Callable[[], Intake]:
    """Record a request that came under a message id another request already used: FAILED
    (DUPLICATE_MESSAGE_ID), nothing sent."""
    problem = (
        f"message id {message_id} was already used for a different request; a message id "
        "names one request (publish a new request with a new message id)"
    )
    members: Sequence[dict[str, Any]]
    if item.parsed is not None:
        kind, bulk, members = item.parsed.instruction_type, item.parsed.bulk, item.parsed.members
    else:
        assert item.identified is not None
        kind, bulk, members = item.identified
    return _done(
        _record_failed(
            session,
            ctx,
            kind,
            bulk,
            list(members),
            list(item.ids),
            item.inbound.request,
            problem,
            item.stored_correlation,
            message_id,
            now,
            code=DUPLICATE_MESSAGE_CODE,
            first_of_message=False,
        )
    )


@dataclass(frozen=True)
class _NewRequest:
    """A new request's rows, made without the ORM's unit of work (`models.unsaved`)."""

    submission: Submission
    members: list[ClientInstruction]
    message: InboundMessage | None


def _insert_new(session: Session, new: list[_NewRequest]) -> None:
    """Write the new requests' rows: ids for all of them with one query, then one INSERT for
    the submissions and their members, in the order the requests came."""
    if not new:
        return
    members = [member for request in new for member in request.members]
    submissions, clients = table_of(Submission), table_of(ClientInstruction)
    # Drawn ahead: most batches then need no query for their ids.
    allocated = allocate_ids(
        session, {submissions: len(new), clients: len(members)}, ahead=IDS_DRAWN_AHEAD
    )
    for request, submission_id in zip(new, allocated[submissions], strict=True):
        request.submission.id = submission_id
        for member in request.members:
            member.submission_id = submission_id
    for member, member_id in zip(members, allocated[clients], strict=True):
        member.id = member_id
    messages = []
    for request in new:
        if request.message is not None:
            request.message.submission_id = request.submission.id
            messages.append(request.message)
    insert_unsaved(session, [request.submission for request in new], members, messages)


@dataclass(frozen=True)
class _Checked:
    """A request checked without the database: parsed, or the problem that keeps it from
    being sent (with what still identifies it), or why it cannot even be recorded."""

    inbound: Inbound
    parsed: ParsedRequest | None = None
    problem: str | None = None
    stored_correlation: str | None = None
    #: The failed request's (type, bulk, members) when it still names instructions.
    identified: tuple[str, bool, list[dict[str, Any]]] | None = None
    ids: tuple[int | None, ...] = ()
    unprocessable: Unprocessable | None = None
    fingerprint: str = ""


def _check(inbound: Inbound) -> _Checked:
    checked = _check_request(inbound)
    if checked.unprocessable is not None:
        return checked
    if inbound.message_id is None and any(i is None for i in checked.ids):
        return _Checked(
            inbound,
            unprocessable=Unprocessable(
                "the message has no message id and the request no clientInstructionId (in "
                "every member): nothing would keep a redelivery from being sent twice; give "
                "the message a message_id or each instruction a clientInstructionId"
            ),
        )
    if inbound.message_id is not None and (
        len(inbound.message_id) > MAX_MESSAGE_ID or not inbound.message_id.isascii()
    ):
        return _Checked(
            inbound,
            unprocessable=Unprocessable(
                f"the message id is not an ASCII string of at most {MAX_MESSAGE_ID} characters"
            ),
        )
    return replace(checked, fingerprint=inbound.fingerprint())


def _check_request(inbound: Inbound) -> _Checked:
    raw, correlation_id = inbound.request, inbound.correlation_id
    problem = _correlation_problem(correlation_id)
    stored_correlation = correlation_id if problem is None else None
    parsed: ParsedRequest | None = None
    if problem is None:
        size = _json_size(raw)
        if size > MAX_REQUEST_BYTES:
            problem = f"request: the body is larger than IBKR's limit of {MAX_REQUEST_BYTES} bytes"
        else:
            try:
                parsed = parse_request(raw)
            except RequestValidationError as error:
                problem = str(error)
            else:
                problem = _amount_problem(parsed)
                parsed = parsed if problem is None else None
    if parsed is not None:
        ids = tuple(member.get("clientInstructionId") for member in parsed.members)
        return _Checked(inbound, parsed, None, stored_correlation, None, ids)
    try:
        kind, bulk, members, given = _identify(raw)
    except Unprocessable as error:
        return _Checked(inbound, unprocessable=error)
    return _Checked(
        inbound,
        None,
        problem or "invalid request",
        stored_correlation,
        (kind, bulk, members),
        tuple(given),
    )


def _look_up(
    session: Session, message_ids: list[str | None], ids: list[int]
) -> tuple[dict[str, tuple[int, ...]], dict[int, ClientInstruction], dict[str, str]]:
    """The clientInstructionIds of the requests already received from these messages, the
    rows that own these clientInstructionIds, and the fingerprints of the known message ids
    (two queries at most)."""
    wanted_messages = {m for m in message_ids if m is not None}
    wanted_ids = set(ids)
    fingerprints: dict[str, str] = {}
    if wanted_messages:
        fingerprints = {
            row.message_id: row.request_sha256
            for row in session.execute(
                select(InboundMessage.message_id, InboundMessage.request_sha256).where(
                    one_of(session, InboundMessage.message_id, wanted_messages)
                )
            )
        }
    conditions: list[ColumnElement[bool]] = []
    if fingerprints:
        conditions.append(one_of(session, ClientInstruction.message_id, set(fingerprints)))
    if wanted_ids:
        conditions.append(
            and_(
                one_of(session, ClientInstruction.client_instruction_id, wanted_ids),
                ClientInstruction.duplicate_of_id.is_(None),
            )
        )
    if not conditions:
        return {}, {}, fingerprints
    first: dict[str, int | None] = {}
    members: dict[int | None, list[int]] = {}
    owners: dict[int, ClientInstruction] = {}
    for row in session.execute(
        select(ClientInstruction)
        .where(or_(*conditions))
        .order_by(ClientInstruction.submission_id, ClientInstruction.position)
    ).scalars():
        if row.message_id in fingerprints:
            first.setdefault(row.message_id, row.submission_id)
            if first[row.message_id] == row.submission_id:
                members.setdefault(row.submission_id, []).append(row.client_instruction_id)
        if row.client_instruction_id in wanted_ids and row.duplicate_of_id is None:
            owners[row.client_instruction_id] = row
    known = {m: tuple(members.get(submission_id, ())) for m, submission_id in first.items()}
    return known, owners, fingerprints


def _done(intake: Intake) -> Callable[[], Intake]:
    return lambda: intake


def _raise(error: Unprocessable) -> Callable[[], Intake]:
    def finish() -> Intake:
        raise error

    return finish


def _receive(
    session: Session,
    ctx: TrackingContext,
    item: _Checked,
    all_owners: dict[int, ClientInstruction],
    held_ids: set[int],
    new: list[_NewRequest],
    now: datetime,
    now_mono: float,
) -> Callable[[], Intake]:
    """Receive one checked request; a new one's rows are added to `new` (written by
    `_insert_new` once the whole batch is received). `held_ids`: the clientInstructionIds the
    requests of this batch hold, which an assigned id must not take. The rows are this
    process's (its lease) until the scheduler's first look at them."""
    raw, message_id = item.inbound.request, item.inbound.message_id
    parsed, ids, stored_correlation = item.parsed, list(item.ids), item.stored_correlation
    if parsed is None:
        assert item.identified is not None and item.problem is not None
        kind, bulk, members = item.identified
        return _done(
            _record_failed(
                session,
                ctx,
                kind,
                bulk,
                members,
                ids,
                raw,
                item.problem,
                stored_correlation,
                message_id,
                now,
                fingerprint=item.fingerprint,
            )
        )

    def failed(problem: str, **kwargs: Any) -> Callable[[], Intake]:
        assert parsed is not None
        return _done(
            _record_failed(
                session,
                ctx,
                parsed.instruction_type,
                parsed.bulk,
                list(parsed.members),
                ids,
                raw,
                problem,
                stored_correlation,
                message_id,
                now,
                fingerprint=item.fingerprint,
                **kwargs,
            )
        )

    given = [i for i in ids if i is not None]
    if len(set(given)) != len(given):
        return failed(
            "instructions: a clientInstructionId appears more than once in this bulk request"
        )
    owners = {i: all_owners[i] for i in given if i in all_owners}
    if owners:
        repeats = [
            owners.get(i) is not None
            and same_intent(
                _stored_member_json(owners[i]) or "",
                _member_json(parsed.instruction_type, parsed.members[index]),
            )
            for index, i in enumerate(ids)
            if i is not None
        ]
        if len(owners) == len(ids) and all(repeats):
            return _done(Intake("same_intent", None, tuple(int(i) for i in ids if i is not None)))
        used = ", ".join(str(i) for i in sorted(owners))
        return failed(
            f"clientInstructionId {used} is already used by another request; a "
            "clientInstructionId is never reused for a different request",
            code=DUPLICATE_REQUEST_CODE,
            owners=owners,
        )
    final_ids: list[int] = []
    for i in ids:
        if i is None:
            i = _free_id(session, ctx, held_ids)
            held_ids.add(i)
        final_ids.append(int(i))
    body = build_body(parsed, final_ids)
    submission = new_unsaved(
        Submission,
        message_id=message_id,
        correlation_id=stored_correlation,
        instruction_type=parsed.instruction_type,
        is_bulk=parsed.bulk,
        endpoint_path=parsed.endpoint.path,
        request_json=jsontext.dumps(body),
        attempt_count=0,
        created_at=now,
        updated_at=now,
    )
    first_look = spread_past_downtime(ctx, now + timedelta(seconds=ctx.received_grace_s))
    message = (
        new_unsaved(
            InboundMessage,
            message_id=message_id,
            request_sha256=item.fingerprint,
            received_at=now,
        )
        if message_id is not None
        else None
    )
    rows: list[ClientInstruction] = []
    for position, (member, cid) in enumerate(zip(parsed.members, final_ids, strict=True)):
        # Written with the other new rows of the batch (`_insert_new`), ids given then.
        row = new_unsaved(
            ClientInstruction,
            client_instruction_id=cid,
            position=position,
            instruction_type=parsed.instruction_type,
            account_id=member_account_id(member),
            target_account_id=member_target_account_id(member),
            amount=member_amount(member),
            currency=member_currency(member),
            correlation_id=stored_correlation,
            message_id=message_id,
            status="",  # change_status records the move from nothing to RECEIVED
            pending_instruction_id=_int_or_none(member.get("pendingInstructionId")),
            attempt_count=0,
            poll_count=0,
            error_retry_count=0,
            api_call_count=0,
            event_sequence=0,
            next_poll_at=first_look,
            lease_owner=ctx.owner,
            lease_expires_at=first_look,
            created_at=now,
            updated_at=now,
        )
        rows.append(row)
        change_status(
            session,
            row,
            "RECEIVED",
            reason=_received_reason(parsed, position, ids[position] is None, message_id),
            actor=ctx.actor,
            now=now,
        )
    new.append(_NewRequest(submission, rows, message))
    attempt = (
        begin_attempt(session, ctx, submission, rows, now, body, now_mono=now_mono)
        if item.inbound.begin_submission
        else None
    )
    return lambda: Intake("new", submission.id, tuple(final_ids), attempt)


def _amount_problem(parsed: ParsedRequest) -> str | None:
    """Why an amount cannot be stored (it would overflow the amount column), or None. Such an
    amount is no payment anyone means, and storing it would fail on every retry."""
    column = ClientInstruction.__table__.c.amount.type
    assert isinstance(column, Numeric) and column.precision and column.scale is not None
    limit = Decimal(10) ** (column.precision - column.scale)
    for index, member in enumerate(parsed.members):
        amount = member_amount(member)
        if amount is not None and (not amount.is_finite() or abs(amount) >= limit):
            where = f"instructions[{index}]" if parsed.bulk else "instruction"
            return f"{where}.amount {amount} is out of range (must be below {limit:,})."
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json_size(raw: Any) -> int:
    """The size of `raw` as JSON text; past IBKR's limit when it is no plain JSON value."""
    try:
        return len(jsontext.dumps(raw))
    except (TypeError, ValueError):
        return MAX_REQUEST_BYTES + 1


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


def _record_failed(
    session: Session,
    ctx: TrackingContext,
    instruction_type: str,
    bulk: bool,
    members: list[dict[str, Any]],
    ids: list[int | None],
    raw: Any,
    problem: str,
    correlation_id: str | None,
    message_id: str | None,
    now: datetime,
    *,
    code: str = INVALID_REQUEST_CODE,
    owners: dict[int, ClientInstruction] | None = None,
    first_of_message: bool = True,
    fingerprint: str = "",
) -> Intake:
    """Record every member of a request that cannot be sent as FAILED (no API call).
    `first_of_message`: the first request under its message id (which it then holds)."""
    owners = owners or {}
    try:
        stored = jsontext.dumps(raw)
    except (TypeError, ValueError):
        stored = repr(raw)
    if len(stored) > STORED_INVALID_BODY_BYTES:
        stored = stored[:STORED_INVALID_BODY_BYTES]
    submission = Submission(
        message_id=message_id,
        correlation_id=correlation_id,
        instruction_type=instruction_type[:64],
        is_bulk=bulk,
        endpoint_path="",
        request_json=stored,
        attempt_count=0,
        created_at=now,
        updated_at=now,
    )
    session.add(submission)
    session.flush()
    if message_id is not None and first_of_message:
        session.add(
            InboundMessage(
                message_id=message_id,
                request_sha256=fingerprint,
                submission_id=submission.id,
                received_at=now,
            )
        )
    final_ids: list[int] = []
    taken = {i for i in ids if i is not None}
    for position, (member, given) in enumerate(zip(members, ids, strict=True)):
        cid = given if given is not None else _free_id(session, ctx, taken)
        taken.add(cid)
        final_ids.append(cid)
        owner = owners.get(cid) if given is not None else None
        if owner is None and given is not None:
            owner = session.execute(
                select(ClientInstruction).where(
                    ClientInstruction.client_instruction_id == cid,
                    ClientInstruction.duplicate_of_id.is_(None),
                )
            ).scalar_one_or_none()
        account = member.get("sourceAccountId") or member.get("accountId")
        row = ClientInstruction(
            client_instruction_id=cid,
            duplicate_of_id=owner.id if owner is not None else None,
            submission_id=submission.id,
            position=position,
            instruction_type=instruction_type[:64],
            account_id=account[:64] if isinstance(account, str) else None,
            correlation_id=correlation_id,
            message_id=message_id,
            status="",
            error_code=code,
            error_message=problem,
            attempt_count=0,
            poll_count=0,
            error_retry_count=0,
            api_call_count=0,
            event_sequence=0,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        change_status(
            session,
            row,
            "RECEIVED",
            reason="received a request that cannot be sent",
            actor=ctx.actor,
            now=now,
        )
        change_status(
            session,
            row,
            "FAILED",
            reason=f"not sent: {problem}" + (f" (member {position + 1})" if bulk else ""),
            actor=ctx.actor,
            now=now,
        )
    return Intake("failed", None, tuple(final_ids))
