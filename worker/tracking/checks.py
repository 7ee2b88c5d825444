"""What an inbound request is, judged without the database: its arguments, its fields, and
what still identifies a request that cannot be sent.

A request that parses is ready to be received. One that does not, but still names its type and
its instructions, is recorded FAILED with the problem (`Checked.problem`); one that names no
request we could track is refused with `Unprocessable` (it becomes a dead letter).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from worker import jsontext
from worker.ibkr.ids import ID_DOMAIN, as_client_instruction_id
from worker.ibkr.requests import (
    ParsedRequest,
    RequestValidationError,
    member_amount,
    parse_request,
)
from worker.store.database import AMOUNT_LIMIT

MAX_CORRELATION_ID = 128
#: Longest message id kept (dramatiq's are 36-character UUIDs).
MAX_MESSAGE_ID = 64
MAX_REQUEST_BYTES = 20 * 1024 * 1024  # IBKR's limit for one request


class Unprocessable(Exception):
    """The message names no request we could track; it is set aside as a dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Inbound:
    """One inbound request as the actor got it (`begin_submission`: see `intake.receive`).

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


@dataclass(frozen=True)
class Identified:
    """What a request that cannot be sent still says of itself."""

    instruction_type: str
    bulk: bool
    members: list[dict[str, Any]]


@dataclass(frozen=True)
class Checked:
    """A request checked without the database: parsed, or the problem that keeps it from
    being sent (with what still identifies it), or why it cannot even be recorded."""

    inbound: Inbound
    parsed: ParsedRequest | None = None
    problem: str | None = None
    stored_correlation: str | None = None
    #: The failed request's type, bulk flag and members when it still names instructions.
    identified: Identified | None = None
    ids: tuple[int | None, ...] = ()
    unprocessable: Unprocessable | None = None
    fingerprint: str = ""

    def described(self) -> Identified:
        """Type, bulk flag and members, parsed or not."""
        if self.parsed is not None:
            parsed = self.parsed
            return Identified(parsed.instruction_type, parsed.bulk, list(parsed.members))
        assert self.identified is not None
        return self.identified


def check(inbound: Inbound) -> Checked:
    """Judge one inbound request (see the module docstring)."""
    checked = _check_request(inbound)
    if checked.unprocessable is not None:
        return checked
    if inbound.message_id is None and any(i is None for i in checked.ids):
        return Checked(
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
        return Checked(
            inbound,
            unprocessable=Unprocessable(
                f"the message id is not an ASCII string of at most {MAX_MESSAGE_ID} characters"
            ),
        )
    return replace(checked, fingerprint=inbound.fingerprint())


def _check_request(inbound: Inbound) -> Checked:
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
        return Checked(inbound, parsed, None, stored_correlation, None, ids)
    try:
        identified, given = _identify(raw)
    except Unprocessable as error:
        return Checked(inbound, unprocessable=error)
    return Checked(
        inbound, None, problem or "invalid request", stored_correlation, identified, tuple(given)
    )


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


def _identify(raw: Any) -> tuple[Identified, list[int | None]]:
    """What a request that failed validation still names, and its given ids; Unprocessable
    when it names no instructions we can record."""
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
        number = as_client_instruction_id(member["clientInstructionId"])
        if number is None:
            where = f"instructions[{index}]" if bulk else "instruction"
            raise Unprocessable(
                f"{where}.clientInstructionId {member['clientInstructionId']!r} is not an id "
                f"({ID_DOMAIN}), so the request cannot be tracked"
            )
        ids.append(number)
    return Identified(kind, bulk, members), ids


def _amount_problem(parsed: ParsedRequest) -> str | None:
    """Why an amount cannot be stored (it would overflow the amount column), or None. Such an
    amount is no payment anyone means, and storing it would fail on every retry."""
    for index, member in enumerate(parsed.members):
        amount = member_amount(member)
        if amount is not None and (not amount.is_finite() or abs(amount) >= AMOUNT_LIMIT):
            where = f"instructions[{index}]" if parsed.bulk else "instruction"
            return f"{where}.amount {amount} is out of range (must be below {AMOUNT_LIMIT:,})."
    return None


def _json_size(raw: Any) -> int:
    """The size of `raw` as JSON text; past IBKR's limit when it is no plain JSON value."""
    try:
        return len(jsontext.dumps(raw))
    except (TypeError, ValueError):
        return MAX_REQUEST_BYTES + 1


def member_json(instruction_type: str, member: dict[str, Any]) -> str:
    """One member as a request of its own: what `same_intent` compares."""
    return jsontext.dumps({"instructionType": instruction_type, "instruction": member})
