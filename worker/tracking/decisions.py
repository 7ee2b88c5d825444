"""Pure: from what we know of an instruction and what IBKR answered, decide what happens next.

No I/O here. Every function takes plain values (the tracked facts and a parsed `ApiResult`) and
returns a `Decision`: the next tracked status (or none), the audit reason, the ids and result to
record, and the next step (done, poll, resolve a lost answer, resend, retry after an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from worker.ibkr.responses import ApiResult, InstructionResult, Outcome

FINAL_STATUSES = frozenset({"PROCESSED", "REJECTED", "FAILED", "CONFLICT"})
NOT_FINAL_IBKR_STATUSES = frozenset({"PENDING", "PENDING_VERIFICATION"})
DUPLICATE_POST_CODE = "CORRUPT_DATA_DUBPLICATE_CP"
CONFLICT_CODE = "CLIENT_INSTRUCTION_ID_CONFLICT"
DUPLICATE_REQUEST_CODE = "DUPLICATE_CLIENT_INSTRUCTION_ID"
INVALID_REQUEST_CODE = "INVALID_REQUEST"
INVALID_ARGUMENT_CODE = "INVALID_ARGUMENT"
DUPLICATE_MESSAGE_CODE = "DUPLICATE_MESSAGE_ID"
APPLIED_TWICE_CODE = "APPLIED_TWICE"
#: How far apart in time two 404s must be before IBKR's not knowing an id counts (after the
#: last attempt's in-flight horizon): one answer may come from a view that lags behind.
ABSENCE_CONFIRM_GAP_S = 5.0


class Action(StrEnum):
    """The next step for an instruction."""

    DONE = "done"  # final: nothing more to do
    POLL = "poll"  # pending at IBKR: look again on the type's cadence
    RESOLVE = "resolve"  # our POST's outcome is unknown: GET /client-instructions/{id}
    RESEND = "resend"  # IBKR has not got it: POST again, same clientInstructionId and body
    RETRY = "retry"  # an error (429, 5xx, lost answer) interrupted a look: look again later


class AttemptFate(StrEnum):
    """What an answer shows about the latest attempt to send the instruction."""

    UNCHANGED = "unchanged"  # nothing new about it (a poll of an instruction IBKR has)
    OPEN = "open"  # it may still register: its answer is unknown (lost, 5xx, ...)
    REGISTERED = "registered"  # IBKR has a transaction for it
    NOT_REGISTERED = "not_registered"  # it never left, or IBKR refused it before registering


@dataclass(frozen=True)
class Tracked:
    """What we know of one client instruction when an answer arrives.

    `inflight_until`: until when the latest attempt may still register at IBKR (None: no
    attempt is open); `absent_since`: when IBKR was first seen not to know the id after that;
    `sent_attempts`: attempts that left and were not refused outright (two of them may both
    have registered); `expected`: the business content of our request (accounts, amount,
    currency, asset), to tell our transaction from another's under the same id.
    """

    client_instruction_id: int
    instruction_type: str
    status: str
    attempt_count: int
    instruction_set_id: int | None = None
    inflight_until: datetime | None = None
    absent_since: datetime | None = None
    sent_attempts: int = 0
    instruction_id: int | None = None
    applied_twice: bool = False
    expected: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """What to record and what to do next.

    `to_status` None keeps the current status (no event); `is_error` marks answers that consume
    the error budget (a 5xx, 429 or lost answer), never "still pending".
    """

    action: Action
    reason: str
    to_status: str | None = None
    instruction_id: int | None = None
    instruction_set_id: int | None = None
    ib_reference_id: int | None = None
    ibkr_status: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None
    retry_after_s: float | None = None
    is_error: bool = False
    processed_timestamp: str | None = None
    extra_audit: dict[str, Any] = field(default_factory=dict)
    #: What this answer shows about the latest attempt (see AttemptFate).
    fate: AttemptFate = AttemptFate.UNCHANGED
    #: Look again exactly then (instead of the cadence the action implies).
    look_at: datetime | None = None
    #: Record that IBKR does not know the id (first 404 after the attempt's horizon).
    absent_since: datetime | None = None
    #: IBKR shows two transactions of ours under the id: what it shows (for the audit).
    applied_twice: dict[str, Any] | None = None


def same_intent(stored_request_json: str, new_request_json: str) -> bool:
    """A clientInstructionId seen again is the same intent only with the very same request
    (both sides written by `worker.jsontext.dumps` from validated requests)."""
    return stored_request_json == new_request_json


def member_result(
    result: ApiResult, client_instruction_id: int, position: int
) -> InstructionResult | None:
    """The result that belongs to one member: by clientInstructionId, else by position when the
    answer lists one result per member without ids."""
    for item in result.results:
        if item.client_instruction_id == client_instruction_id:
            return item
    if (
        0 <= position < len(result.results)
        and result.results[position].client_instruction_id is None
    ):
        return result.results[position]
    if len(result.results) == 1 and result.results[0].client_instruction_id is None:
        return result.results[0]
    return None


def _normalised_status(raw: str | None) -> str | None:
    return raw.strip().upper() if raw else None


def adopt(
    item: InstructionResult, instruction_set_id: int | None, http_status: int | None, why: str
) -> Decision:
    """Take IBKR's status of our instruction as ours."""
    status = _normalised_status(item.status)
    common: dict[str, Any] = {
        "instruction_id": item.instruction_id,
        "instruction_set_id": instruction_set_id,
        "ib_reference_id": item.ib_reference_id,
        "ibkr_status": item.status,
        "result": dict(item.extra) or None,
        "processed_timestamp": _processed_timestamp(item),
    }
    if status == "PROCESSED":
        return Decision(
            Action.DONE, f"{why}: IBKR reports PROCESSED", to_status="PROCESSED", **common
        )
    if status == "REJECTED":
        return Decision(
            Action.DONE,
            f"{why}: IBKR reports REJECTED ({item.error_code or 'no error code'})",
            to_status="REJECTED",
            error_code=item.error_code or "REJECTED",
            error_message=item.error_message or item.description,
            **common,
        )
    if status in NOT_FINAL_IBKR_STATUSES:
        return Decision(Action.POLL, f"{why}: IBKR reports {status}", to_status=status, **common)
    # A status this version does not know (IBKR adds values): keep looking, say so.
    return Decision(
        Action.POLL,
        f"{why}: IBKR reports the unknown status {item.status!r}; tracking it as PENDING",
        to_status="PENDING",
        **common,
    )


def _processed_timestamp(item: InstructionResult) -> str | None:
    value = item.extra.get("processedTimestamp") if item.extra else None
    return str(value) if value is not None else None


def _http(result: ApiResult) -> str:
    return str(result.http_status) if result.http_status is not None else "no response"


def after_submit(tracked: Tracked, result: ApiResult, position: int = 0) -> Decision:
    """Decide from the answer to our POST of this instruction (attempt `tracked.attempt_count`)."""
    decision = _after_submit(tracked, result, position)
    if decision.fate is AttemptFate.UNCHANGED:
        decision = replace(decision, fate=AttemptFate.REGISTERED)
    return decision


def _after_submit(tracked: Tracked, result: ApiResult, position: int) -> Decision:
    outcome = result.outcome
    item = member_result(result, tracked.client_instruction_id, position)
    if outcome in (Outcome.FINAL, Outcome.ACCEPTED):
        if item is None:
            return Decision(
                Action.RESOLVE,
                f"IBKR answered {_http(result)} without a result for this instruction; "
                "asking for its status",
                instruction_set_id=result.instruction_set_id,
            )
        if item.item_http_status == 400 or (
            item.status is None
            and item.error_code is None
            and item.item_http_status
            and item.item_http_status >= 400
        ):
            return _invalid(result, item)
        if item.error_code == DUPLICATE_POST_CODE:
            return _duplicate_post(tracked, result, item)
        return adopt(
            item, result.instruction_set_id, result.http_status, f"IBKR answered {_http(result)}"
        )
    if outcome is Outcome.DUPLICATE:
        return reconcile(tracked, result, set_owned_elsewhere=False)
    if outcome is Outcome.REJECTED:
        if item is not None and item.error_code == DUPLICATE_POST_CODE:
            return _duplicate_post(tracked, result, item)
        return _rejected(result, item)
    if outcome is Outcome.INVALID:
        # Refused as a whole (400, 413): nothing was registered.
        return replace(_invalid(result, item), fate=AttemptFate.NOT_REGISTERED)
    if outcome is Outcome.THROTTLED:
        # A 429 means IBKR processed nothing: the same body may go again after the wait.
        return Decision(
            Action.RESEND,
            "IBKR answered 429 (too many requests); sending again after the wait",
            retry_after_s=result.retry_after_s,
            is_error=True,
            fate=AttemptFate.NOT_REGISTERED,
        )
    if outcome is Outcome.AUTH_FAILED:
        return Decision(
            Action.RESEND,
            f"IBKR refused our credentials ({_http(result)}: "
            f"{result.error_detail or 'no detail'}); "
            "nothing was processed, sending again later",
            is_error=True,
            fate=AttemptFate.NOT_REGISTERED,
        )
    if outcome is Outcome.NOT_SENT:
        # Nothing reached IBKR. When no rate-limit slot came in time, the next try waits for
        # the earliest one there would have been (`retry_after_s`).
        return Decision(
            Action.RESEND,
            f"attempt {tracked.attempt_count} never left ({result.error_detail or 'not sent'}); "
            "nothing reached IBKR, sending again later",
            retry_after_s=result.retry_after_s,
            # Waiting for IBKR's limits is no error: it must not grow the error backoff.
            is_error=result.retry_after_s is None,
            fate=AttemptFate.NOT_REGISTERED,
        )
    if outcome is Outcome.UNKNOWN:
        return Decision(
            Action.RESOLVE,
            "the answer to our POST was lost (timeout or broken connection); "
            "asking IBKR whether it got the instruction",
            is_error=True,
            fate=AttemptFate.OPEN,
        )
    # 5xx, 404 or anything unexpected on a POST: IBKR may or may not have applied it. A 503's
    # Retry-After says when asking makes sense again.
    return Decision(
        Action.RESOLVE,
        f"IBKR answered {_http(result)} ({result.error_detail or 'no detail'}); the outcome is "
        "uncertain, asking IBKR whether it got the instruction",
        retry_after_s=result.retry_after_s,
        is_error=True,
        fate=AttemptFate.OPEN,
    )


def _duplicate_post(tracked: Tracked, result: ApiResult, item: InstructionResult) -> Decision:
    if tracked.attempt_count <= 1:
        return Decision(
            Action.DONE,
            f"IBKR answered {_http(result)} {DUPLICATE_POST_CODE} to our first submission: "
            f"clientInstructionId {tracked.client_instruction_id} belongs to another transaction",
            to_status="CONFLICT",
            error_code=DUPLICATE_POST_CODE,
            error_message=item.error_message
            or f"clientInstructionId {tracked.client_instruction_id} already exists at IBKR",
            instruction_id=item.instruction_id,
            instruction_set_id=None,
            ibkr_status=item.status,
            extra_audit={"rejectedInstructionSetId": result.instruction_set_id},
            fate=AttemptFate.NOT_REGISTERED,
        )
    # This attempt was refused, an earlier one of ours registered: the lookup finds it (the
    # attempt stays open until it does, so nothing is sent meanwhile).
    return Decision(
        Action.RESOLVE,
        f"IBKR answered {DUPLICATE_POST_CODE} to attempt {tracked.attempt_count}: an earlier "
        "attempt of ours landed; asking for its status",
        fate=AttemptFate.OPEN,
    )


def _rejected(result: ApiResult, item: InstructionResult | None) -> Decision:
    code = (item.error_code if item else None) or f"HTTP_{result.http_status}"
    message = (item.error_message or item.description if item else None) or result.error_detail
    return Decision(
        Action.DONE,
        f"IBKR rejected the instruction with {_http(result)} {code}",
        to_status="REJECTED",
        instruction_id=item.instruction_id if item else None,
        instruction_set_id=result.instruction_set_id,
        ib_reference_id=item.ib_reference_id if item else None,
        ibkr_status=item.status if item else "REJECTED",
        error_code=code,
        error_message=message,
    )


def _invalid(result: ApiResult, item: InstructionResult | None) -> Decision:
    fields = "; ".join(f"{name}: {why}" for name, why in result.invalid_arguments)
    message = (
        fields or (item.error_message if item else None) or result.error_detail or "invalid request"
    )
    return Decision(
        Action.DONE,
        f"IBKR refused the request as invalid ({_http(result)}): {message}",
        to_status="FAILED",
        error_code=INVALID_ARGUMENT_CODE,
        error_message=message,
    )


#: Fields of a request that say what it moves, compared when IBKR's answer carries them.
_BUSINESS_FIELDS = (
    "sourceAccountId",
    "targetAccountId",
    "accountId",
    "amount",
    "currency",
    "conid",
    "transferQuantity",
    "quantity",
    "direction",
)


def business_content(member: Mapping[str, Any]) -> dict[str, Any]:
    """What a request member moves (accounts, amount, currency, asset), for `business_mismatch`."""
    content = {key: member[key] for key in _BUSINESS_FIELDS if member.get(key) is not None}
    instrument = member.get("tradingInstrument")
    if isinstance(instrument, Mapping) and instrument.get("conid") is not None:
        content["conid"] = instrument["conid"]
    return content


def business_mismatch(expected: Mapping[str, Any] | None, item: InstructionResult) -> list[str]:
    """The fields of `expected` (our request's business content) that IBKR's result carries
    with another value: `["amount 50 (ours 123.45)", ...]`; empty when nothing disagrees."""
    if not expected:
        return []
    found = business_content(item.extra)
    return [
        f"{key} {found[key]} (ours {expected[key]})"
        for key in _BUSINESS_FIELDS
        if key in expected and key in found and not _same_value(expected[key], found[key])
    ]


def _same_value(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours is theirs
    if isinstance(ours, int | float | Decimal) or isinstance(theirs, int | float | Decimal):
        try:
            return Decimal(str(ours)) == Decimal(str(theirs))
        except (InvalidOperation, ValueError):
            return False
    return str(ours).strip() == str(theirs).strip()


def reconcile(tracked: Tracked, result: ApiResult, *, set_owned_elsewhere: bool) -> Decision:
    """A status answer (200 or 208) about our clientInstructionId: is the transaction it
    describes ours, and is it the only one of ours?

    A 208 (several transactions hold the id; it describes the first) after two or more
    attempts of ours left: money may have moved twice, said loudly (APPLIED_TWICE), never hidden
    behind the first answer. Otherwise: same instructionSetId as recorded at submission, ours,
    adopt it; another one: the id belongs to another transaction, CONFLICT (its status is never
    adopted). None recorded (the submit answer was lost): a 208 after our only POST is another
    system's transaction, CONFLICT; otherwise adopt only when the instructionType and every
    business field IBKR shows (accounts, amount, currency, asset) are ours and no other local
    instruction claims that set.
    """
    item = member_result(result, tracked.client_instruction_id, 0)
    their_set = result.instruction_set_id
    what = (
        "208 (duplicate clientInstructionId)"
        if result.outcome is Outcome.DUPLICATE
        else _http(result)
    )
    if item is None:
        return Decision(
            Action.RETRY,
            f"IBKR answered {what} without an instruction result; looking again later",
            is_error=True,
        )
    if result.outcome is Outcome.DUPLICATE and tracked.sent_attempts >= 2:
        return _applied_twice(tracked, result, item, their_set, what)
    if tracked.instruction_set_id is not None:
        if their_set == tracked.instruction_set_id:
            return adopt(
                item,
                their_set,
                result.http_status,
                f"IBKR answered {what} for our instructionSetId {their_set}",
            )
        return _conflict(
            tracked, their_set, what, f"we recorded instructionSetId {tracked.instruction_set_id}"
        )
    if result.outcome is Outcome.DUPLICATE and tracked.attempt_count <= 1:
        # A 208 says several transactions hold this id and describes the first. We sent one
        # POST, so another system holds it too, and (its use was almost surely earlier) the
        # first is theirs: adopting it would report their money movement as ours.
        return _conflict(
            tracked,
            their_set,
            what,
            "our only POST's answer was lost, so nothing shows that the first transaction under "
            "this id is ours",
        )
    type_matches = (
        item.instruction_type is None or item.instruction_type.upper() == tracked.instruction_type
    )
    mismatch = business_mismatch(tracked.expected, item)
    if type_matches and not mismatch and not set_owned_elsewhere:
        return adopt(
            item,
            their_set,
            result.http_status,
            f"IBKR answered {what}; our submit answer was lost and instructionSetId {their_set} "
            f"({item.instruction_type or tracked.instruction_type}) is claimed by no other "
            "instruction of ours",
        )
    if not type_matches:
        why = (
            f"its instructionType {item.instruction_type} is not ours ({tracked.instruction_type})"
        )
    elif mismatch:
        why = "it moves something else: " + ", ".join(mismatch)
    else:
        why = f"instructionSetId {their_set} is already claimed by another instruction of ours"
    return _conflict(tracked, their_set, what, why)


def _applied_twice(
    tracked: Tracked,
    result: ApiResult,
    item: InstructionResult,
    their_set: int | None,
    what: str,
) -> Decision:
    """Two of our attempts left and IBKR reports several transactions under our id."""
    ours = tracked.instruction_set_id
    details = {
        "clientInstructionId": tracked.client_instruction_id,
        "firstTransaction": {"instructionSetId": their_set, "instructionId": item.instruction_id},
        "ourRecordedTransaction": {
            "instructionSetId": ours,
            "instructionId": tracked.instruction_id,
        },
        "attemptsSent": tracked.sent_attempts,
    }
    reason = (
        f"IBKR answered {what} after {tracked.sent_attempts} of our attempts left: more than one "
        f"transaction holds clientInstructionId {tracked.client_instruction_id} (the first is "
        f"instructionSetId {their_set}"
        + (f", ours recorded {ours}" if ours is not None and ours != their_set else "")
        + "); the money may have moved twice"
    )
    flag = None if tracked.applied_twice else details
    if ours is None or ours == their_set:
        # The first transaction is ours (or the only one we can know): keep following it.
        decision = adopt(item, their_set, result.http_status, reason)
        return replace(decision, applied_twice=flag, extra_audit={"appliedTwice": details})
    # Ours is another one: keep following ours (by its set), never adopt the first's status.
    return Decision(
        Action.POLL,
        reason,
        applied_twice=flag,
        extra_audit={"appliedTwice": details},
    )


def _conflict(tracked: Tracked, their_set: int | None, what: str, why: str) -> Decision:
    ours = tracked.instruction_set_id
    return Decision(
        Action.DONE,
        f"IBKR answered {what}: clientInstructionId {tracked.client_instruction_id} belongs to "
        f"another transaction (instructionSetId {their_set}); {why}",
        to_status="CONFLICT",
        error_code=CONFLICT_CODE,
        error_message=(
            f"clientInstructionId {tracked.client_instruction_id} belongs to instructionSetId "
            f"{their_set}, not to ours ({ours if ours is not None else 'unknown'})"
        ),
        instruction_set_id=ours,
        extra_audit={"theirInstructionSetId": their_set, "ourInstructionSetId": ours},
    )


def after_lookup(
    tracked: Tracked,
    result: ApiResult,
    *,
    set_owned_elsewhere: bool,
    looked_at: datetime | None = None,
    now: datetime | None = None,
    decides_attempt: bool = True,
) -> Decision:
    """Decide from `GET /client-instructions/{id}` (a poll, or the resolution of a lost answer).

    `looked_at`: the earliest the GET can have left (the claim of the row; on the shared
    clock); `now`: when the answer is recorded. A 404 about an instruction whose latest
    attempt may still register (`tracked.inflight_until`) proves nothing until that time has
    passed; after it, two 404s `ABSENCE_CONFIRM_GAP_S` apart let the same body go again.
    `decides_attempt` False: a later member of a bulk request, whose first member's answer
    decides what became of the POST (a 404 for it alone proves nothing).
    """
    outcome = result.outcome
    sending = tracked.status in ("RECEIVED", "SUBMITTING")
    if outcome in (Outcome.ACCEPTED, Outcome.FINAL, Outcome.DUPLICATE):
        decision = reconcile(tracked, result, set_owned_elsewhere=set_owned_elsewhere)
        if sending:
            decision = replace(decision, fate=AttemptFate.REGISTERED)
        return decision
    if outcome is Outcome.NOT_FOUND:
        if sending and decides_attempt:
            return _absent(tracked, looked_at, now)
        return Decision(
            Action.RETRY,
            f"IBKR answered 404 for clientInstructionId {tracked.client_instruction_id}, which it "
            f"had accepted as {tracked.status}; looking again later",
            is_error=True,
        )
    return _lookup_error(result)


def _absent(tracked: Tracked, looked_at: datetime | None, now: datetime | None) -> Decision:
    cid = tracked.client_instruction_id
    until = tracked.inflight_until
    if tracked.status == "RECEIVED" or until is None:
        return Decision(
            Action.RESEND,
            f"IBKR does not know clientInstructionId {cid} (404) and no attempt of ours can "
            "still register: sending the same body again",
        )
    if looked_at is None or now is None:
        raise ValueError("a 404 about an open attempt needs looked_at and now")
    attempt = tracked.attempt_count
    if looked_at < until:
        return Decision(
            Action.RESOLVE,
            f"IBKR does not know clientInstructionId {cid} yet (404), but attempt {attempt} "
            f"may still register until {until.isoformat()}: nothing is sent before; "
            "looking again then",
            look_at=until,
            fate=AttemptFate.OPEN,
        )
    if tracked.absent_since is None:
        confirm_at = now + timedelta(seconds=ABSENCE_CONFIRM_GAP_S)
        return Decision(
            Action.RESOLVE,
            f"IBKR does not know clientInstructionId {cid} (404) after attempt {attempt}'s "
            "in-flight horizon; confirming with a second look before sending again",
            look_at=confirm_at,
            absent_since=now,
            fate=AttemptFate.OPEN,
        )
    confirm_at = tracked.absent_since + timedelta(seconds=ABSENCE_CONFIRM_GAP_S)
    if looked_at < confirm_at:
        return Decision(
            Action.RESOLVE,
            f"IBKR does not know clientInstructionId {cid} (404); the confirming look is due "
            f"at {confirm_at.isoformat()}",
            look_at=confirm_at,
            fate=AttemptFate.OPEN,
        )
    return Decision(
        Action.RESEND,
        f"IBKR does not know clientInstructionId {cid} (404 twice, {ABSENCE_CONFIRM_GAP_S:g} s "
        f"apart, after attempt {attempt}'s in-flight horizon): it never got it; sending the "
        "same body again",
        fate=AttemptFate.NOT_REGISTERED,
    )


def after_set_read(tracked: Tracked, result: ApiResult, position: int) -> Decision:
    """Decide one member's fate from `GET /instruction-sets/{id}` of its own set."""
    if result.outcome not in (Outcome.ACCEPTED, Outcome.FINAL):
        return _lookup_error(result)
    item = member_result(result, tracked.client_instruction_id, position)
    if item is None:
        return Decision(
            Action.RETRY,
            f"instructionSetId {result.instruction_set_id} lists no result for clientInstructionId "
            f"{tracked.client_instruction_id}; looking again later",
            is_error=True,
        )
    if item.item_http_status == 400:
        return _invalid(result, item)
    if item.item_http_status in (403, 422) and _normalised_status(item.status) in (
        None,
        "REJECTED",
    ):
        return _rejected(result, item)
    decision = adopt(
        item,
        result.instruction_set_id,
        result.http_status,
        f"instructionSetId {result.instruction_set_id} read",
    )
    if (
        tracked.instruction_id is not None
        and item.instruction_id is not None
        and item.instruction_id != tracked.instruction_id
        and tracked.sent_attempts >= 2
    ):
        # Our set names another transaction of ours than the one we recorded for this id.
        details = {
            "clientInstructionId": tracked.client_instruction_id,
            "recordedInstructionId": tracked.instruction_id,
            "instructionIdInSet": item.instruction_id,
            "instructionSetId": result.instruction_set_id,
            "attemptsSent": tracked.sent_attempts,
        }
        decision = replace(
            decision,
            reason=(
                f"instructionSetId {result.instruction_set_id} names instructionId "
                f"{item.instruction_id} for clientInstructionId {tracked.client_instruction_id}, "
                f"and we recorded {tracked.instruction_id}: two transactions of ours; the money "
                "may have moved twice"
            ),
            applied_twice=None if tracked.applied_twice else details,
            extra_audit={"appliedTwice": details},
        )
    return decision


def _lookup_error(result: ApiResult) -> Decision:
    return Decision(
        Action.RETRY,
        f"status request failed ({result.outcome.value}, {_http(result)}"
        f"{': ' + result.error_detail if result.error_detail else ''}); looking again later",
        retry_after_s=result.retry_after_s,
        is_error=True,
    )
