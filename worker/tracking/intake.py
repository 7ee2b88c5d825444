"""Persist the intent of an inbound request before anything is sent.

Validate, recognise a redelivery or a repeated clientInstructionId, assign ids for requests that
came without one, and commit RECEIVED rows (with their audit and outbox events). An invalid
request that still names a request ends FAILED here with the field named and costs no API call;
one that cannot even be identified is refused with `Unprocessable` (it becomes a dead letter).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from models import ClientInstruction, Submission, next_client_instruction_id
from worker import jsontext
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
from worker.tracking.decisions import DUPLICATE_REQUEST_CODE, INVALID_REQUEST_CODE, same_intent
from worker.tracking.record import change_status
from worker.tracking.submit import Attempt, begin_attempt

MAX_CORRELATION_ID = 128
MAX_REQUEST_BYTES = 20 * 1024 * 1024  # IBKR's limit for one request
MAX_ID = 2**53 - 1
STORED_INVALID_BODY_BYTES = 64 * 1024


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
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isdigit() and len(value) <= 20:
        number = int(value)
    else:
        return None
    return number if 0 < number <= MAX_ID else None


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
                f"{where}.clientInstructionId {member['clientInstructionId']!r} is not a positive "
                "integer below 2^53, so the request cannot be tracked"
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
    for attempt in range(3):
        try:
            with ctx.session_factory.begin() as session:
                return _receive(session, ctx, request, correlation_id, message_id, begin_submission)
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


def _receive(
    session: Session,
    ctx: TrackingContext,
    raw: Any,
    correlation_id: Any,
    message_id: str | None,
    begin_submission: bool = False,
) -> Intake:
    now = ctx.clock.now()
    if message_id is not None:
        known = session.execute(
            select(Submission).where(Submission.message_id == message_id).limit(1)
        ).scalar_one_or_none()
        if known is not None:
            return Intake(
                "same_intent", None, tuple(m.client_instruction_id for m in known.members)
            )
    problem = _correlation_problem(correlation_id)
    parsed: ParsedRequest | None = None
    if problem is None:
        size = len(jsontext.dumps(raw)) if _plain_json(raw) else MAX_REQUEST_BYTES + 1
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
    stored_correlation = correlation_id if _correlation_problem(correlation_id) is None else None
    if parsed is None:
        kind, bulk, members, ids = _identify(raw)
        return _record_failed(
            session,
            ctx,
            kind,
            bulk,
            members,
            ids,
            raw,
            problem or "invalid request",
            stored_correlation,
            message_id,
            now,
        )
    ids = [member.get("clientInstructionId") for member in parsed.members]
    given = [i for i in ids if i is not None]
    if len(set(given)) != len(given):
        return _record_failed(
            session,
            ctx,
            parsed.instruction_type,
            parsed.bulk,
            list(parsed.members),
            ids,
            raw,
            "instructions: a clientInstructionId appears more than once in this bulk request",
            stored_correlation,
            message_id,
            now,
        )
    owners: dict[int, ClientInstruction] = {}
    if given:
        for owner in session.execute(
            select(ClientInstruction).where(
                ClientInstruction.client_instruction_id.in_(given),
                ClientInstruction.duplicate_of_id.is_(None),
            )
        ).scalars():
            owners[owner.client_instruction_id] = owner
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
            return Intake("same_intent", None, tuple(int(i) for i in ids if i is not None))
        used = ", ".join(str(i) for i in sorted(owners))
        return _record_failed(
            session,
            ctx,
            parsed.instruction_type,
            parsed.bulk,
            list(parsed.members),
            ids,
            raw,
            f"clientInstructionId {used} is already used by another request; a clientInstructionId "
            "is never reused for a different request",
            stored_correlation,
            message_id,
            now,
            code=DUPLICATE_REQUEST_CODE,
            owners=owners,
        )
    taken = set(given)
    final_ids: list[int] = []
    for i in ids:
        if i is None:
            i = _free_id(session, ctx, taken)
            taken.add(i)
        final_ids.append(int(i))
    body = build_body(parsed, final_ids)
    submission = Submission(
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
    session.add(submission)
    session.flush()
    first_look = spread_past_downtime(ctx, now + timedelta(seconds=ctx.received_grace_s))
    rows: list[ClientInstruction] = []
    for position, (member, cid) in enumerate(zip(parsed.members, final_ids, strict=True)):
        row = ClientInstruction(
            client_instruction_id=cid,
            submission_id=submission.id,
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
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        rows.append(row)
        change_status(
            session,
            row,
            "RECEIVED",
            reason=_received_reason(parsed, position, ids[position] is None, message_id),
            actor=ctx.actor,
            now=now,
        )
    attempt = begin_attempt(session, ctx, submission, rows, now) if begin_submission else None
    return Intake("new", submission.id, tuple(final_ids), attempt)


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


def _plain_json(raw: Any) -> bool:
    try:
        jsontext.dumps(raw)
    except (TypeError, ValueError):
        return False
    return True


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
) -> Intake:
    """Record every member of a request that cannot be sent as FAILED (no API call)."""
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
