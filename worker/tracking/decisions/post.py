"""What the answer to our POST of an instruction means: adopted, refused, to be sent again, or
of unknown outcome (then asked about, never sent again blindly)."""

from __future__ import annotations

from dataclasses import replace

from worker.ibkr.responses import ApiResult, InstructionResult, Outcome
from worker.tracking.decisions.answers import adopt, http_label, invalid, member_result, rejected
from worker.tracking.decisions.model import (
    DUPLICATE_POST_CODE,
    Action,
    AttemptFate,
    Decision,
    Tracked,
)
from worker.tracking.decisions.ownership import reconcile


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
                f"IBKR answered {http_label(result)} without a result for this instruction; "
                "asking for its status",
                instruction_set_id=result.instruction_set_id,
            )
        if item.item_http_status == 400 or (
            item.status is None
            and item.error_code is None
            and item.item_http_status
            and item.item_http_status >= 400
        ):
            return invalid(result, item)
        if item.error_code == DUPLICATE_POST_CODE:
            return _duplicate_post(tracked, result, item)
        return adopt(
            item,
            result.instruction_set_id,
            result.http_status,
            f"IBKR answered {http_label(result)}",
        )
    if outcome is Outcome.DUPLICATE:
        return reconcile(tracked, result, set_owned_elsewhere=False)
    if outcome is Outcome.REJECTED:
        if item is not None and item.error_code == DUPLICATE_POST_CODE:
            return _duplicate_post(tracked, result, item)
        return rejected(result, item)
    if outcome is Outcome.INVALID:
        # Refused as a whole (400, 413): nothing was registered.
        return replace(invalid(result, item), fate=AttemptFate.NOT_REGISTERED)
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
            f"IBKR refused our credentials ({http_label(result)}: "
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
        f"IBKR answered {http_label(result)} ({result.error_detail or 'no detail'}); the outcome "
        "is uncertain, asking IBKR whether it got the instruction",
        retry_after_s=result.retry_after_s,
        is_error=True,
        fate=AttemptFate.OPEN,
    )


def _duplicate_post(tracked: Tracked, result: ApiResult, item: InstructionResult) -> Decision:
    if tracked.attempt_count <= 1:
        return Decision(
            Action.DONE,
            f"IBKR answered {http_label(result)} {DUPLICATE_POST_CODE} to our first submission: "
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
