"""What a status answer means: `GET /client-instructions/{id}` (a poll, or the resolution of a
lost answer, where a 404 proves nothing while an attempt may still register) and
`GET /instruction-sets/{id}` for one member of a bulk request."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from worker.ibkr.responses import ApiResult, Outcome
from worker.tracking.decisions.answers import (
    adopt,
    http_label,
    invalid,
    member_result,
    normalised_status,
    rejected,
)
from worker.tracking.decisions.model import Action, AttemptFate, Decision, Tracked
from worker.tracking.decisions.ownership import reconcile

#: How far apart in time two 404s must be before IBKR's not knowing an id counts (after the
#: last attempt's in-flight horizon): one answer may come from a view that lags behind.
ABSENCE_CONFIRM_GAP_S = 5.0


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
        return invalid(result, item)
    if item.item_http_status in (403, 422) and normalised_status(item.status) in (
        None,
        "REJECTED",
    ):
        return rejected(result, item)
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
        f"status request failed ({result.outcome.value}, {http_label(result)}"
        f"{': ' + result.error_detail if result.error_detail else ''}); looking again later",
        retry_after_s=result.retry_after_s,
        is_error=True,
    )
