"""Pure: from what we know of an instruction and what IBKR answered, decide what happens next.

No I/O here. Every function takes plain values (the tracked facts and a parsed `ApiResult`) and
returns a `Decision`: the next tracked status (or none), the audit reason, the ids and result to
record, and the next step (done, poll, resolve a lost answer, resend, retry after an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class Action(StrEnum):
    """The next step for an instruction."""

    DONE = "done"  # final: nothing more to do
    POLL = "poll"  # pending at IBKR: look again on the type's cadence
    RESOLVE = "resolve"  # our POST's outcome is unknown: GET /client-instructions/{id}
    RESEND = "resend"  # IBKR has not got it: POST again, same clientInstructionId and body
    RETRY = "retry"  # an error (429, 5xx, lost answer) interrupted a look: look again later


@dataclass(frozen=True)
class Tracked:
    """What we know of one client instruction when an answer arrives."""

    client_instruction_id: int
    instruction_type: str
    status: str
    attempt_count: int
    instruction_set_id: int | None = None


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
        return _invalid(result, item)
    if outcome is Outcome.THROTTLED:
        # A 429 means IBKR processed nothing: the same body may go again after the wait.
        return Decision(
            Action.RESEND,
            "IBKR answered 429 (too many requests); sending again after the wait",
            retry_after_s=result.retry_after_s,
            is_error=True,
        )
    if outcome is Outcome.AUTH_FAILED:
        return Decision(
            Action.RESEND,
            f"IBKR refused our credentials ({_http(result)}: "
            f"{result.error_detail or 'no detail'}); "
            "nothing was processed, sending again later",
            is_error=True,
        )
    if outcome is Outcome.UNKNOWN:
        return Decision(
            Action.RESOLVE,
            "the answer to our POST was lost (timeout or broken connection); "
            "asking IBKR whether it got the instruction",
            is_error=True,
        )
    # 5xx, 404 or anything unexpected on a POST: IBKR may or may not have applied it.
    return Decision(
        Action.RESOLVE,
        f"IBKR answered {_http(result)} ({result.error_detail or 'no detail'}); the outcome is "
        "uncertain, asking IBKR whether it got the instruction",
        is_error=True,
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
        )
    return Decision(
        Action.RESOLVE,
        f"IBKR answered {DUPLICATE_POST_CODE} to attempt {tracked.attempt_count}: an earlier "
        "attempt of ours landed; asking for its status",
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


def reconcile(tracked: Tracked, result: ApiResult, *, set_owned_elsewhere: bool) -> Decision:
    """A status answer (200 or 208) about our clientInstructionId: is the transaction it
    describes ours?

    Same instructionSetId as recorded at submission: ours, adopt it. Another one: the id belongs
    to another transaction, CONFLICT (its status is never adopted). None recorded (the submit
    answer was lost): a 208 after our only POST is another system's transaction, CONFLICT;
    otherwise adopt only when the instructionType is ours and no other local instruction claims
    that set (after several POSTs of ours the first transaction may be our own duplicate).
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
    if type_matches and not set_owned_elsewhere:
        return adopt(
            item,
            their_set,
            result.http_status,
            f"IBKR answered {what}; our submit answer was lost and instructionSetId {their_set} "
            f"({item.instruction_type or tracked.instruction_type}) is claimed by no other "
            "instruction of ours",
        )
    why = (
        f"its instructionType {item.instruction_type} is not ours ({tracked.instruction_type})"
        if not type_matches
        else f"instructionSetId {their_set} is already claimed by another instruction of ours"
    )
    return _conflict(tracked, their_set, what, why)


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


def after_lookup(tracked: Tracked, result: ApiResult, *, set_owned_elsewhere: bool) -> Decision:
    """Decide from `GET /client-instructions/{id}` (a poll, or the resolution of a lost answer)."""
    outcome = result.outcome
    if outcome in (Outcome.ACCEPTED, Outcome.FINAL, Outcome.DUPLICATE):
        return reconcile(tracked, result, set_owned_elsewhere=set_owned_elsewhere)
    if outcome is Outcome.NOT_FOUND:
        if tracked.status in ("RECEIVED", "SUBMITTING"):
            return Decision(
                Action.RESEND,
                f"IBKR does not know clientInstructionId {tracked.client_instruction_id} (404): "
                "it never got our POST; sending the same body again",
            )
        return Decision(
            Action.RETRY,
            f"IBKR answered 404 for clientInstructionId {tracked.client_instruction_id}, which it "
            f"had accepted as {tracked.status}; looking again later",
            is_error=True,
        )
    return _lookup_error(result)


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
    return adopt(
        item,
        result.instruction_set_id,
        result.http_status,
        f"instructionSetId {result.instruction_set_id} read",
    )


def _lookup_error(result: ApiResult) -> Decision:
    return Decision(
        Action.RETRY,
        f"status request failed ({result.outcome.value}, {_http(result)}"
        f"{': ' + result.error_detail if result.error_detail else ''}); looking again later",
        retry_after_s=result.retry_after_s,
        is_error=True,
    )
