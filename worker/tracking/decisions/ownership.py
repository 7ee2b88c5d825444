"""Whose transaction an answer about our clientInstructionId describes: ours (adopt it), another
system's (CONFLICT), or more than one of ours (APPLIED_TWICE, said loudly)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from worker.ibkr.responses import ApiResult, InstructionResult, Outcome
from worker.tracking.decisions.answers import adopt, http_label, member_result
from worker.tracking.decisions.model import CONFLICT_CODE, Action, Decision, Tracked

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


def same_intent(stored_request_json: str, new_request_json: str) -> bool:
    """A clientInstructionId seen again is the same intent only with the very same request
    (both sides written by `worker.jsontext.dumps` from validated requests)."""
    return stored_request_json == new_request_json


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
        else http_label(result)
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
