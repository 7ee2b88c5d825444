"""What one instruction result in an IBKR answer means, shared by every kind of answer: find the
member's result, adopt IBKR's status, or record a rejection or an invalid request."""

from __future__ import annotations

from typing import Any

from worker.ibkr.responses import ApiResult, InstructionResult
from worker.tracking.decisions.model import (
    INVALID_ARGUMENT_CODE,
    NOT_FINAL_IBKR_STATUSES,
    Action,
    Decision,
)


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


def normalised_status(raw: str | None) -> str | None:
    """IBKR's status word in upper case without spaces around it (None when it sent none)."""
    return raw.strip().upper() if raw else None


def http_label(result: ApiResult) -> str:
    """The HTTP status of `result` for a reason text, or "no response"."""
    return str(result.http_status) if result.http_status is not None else "no response"


def adopt(
    item: InstructionResult, instruction_set_id: int | None, http_status: int | None, why: str
) -> Decision:
    """Take IBKR's status of our instruction as ours."""
    status = normalised_status(item.status)
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


def rejected(result: ApiResult, item: InstructionResult | None) -> Decision:
    """IBKR rejected the instruction: REJECTED with its error code (or `HTTP_<status>`)."""
    code = (item.error_code if item else None) or f"HTTP_{result.http_status}"
    message = (item.error_message or item.description if item else None) or result.error_detail
    return Decision(
        Action.DONE,
        f"IBKR rejected the instruction with {http_label(result)} {code}",
        to_status="REJECTED",
        instruction_id=item.instruction_id if item else None,
        instruction_set_id=result.instruction_set_id,
        ib_reference_id=item.ib_reference_id if item else None,
        ibkr_status=item.status if item else "REJECTED",
        error_code=code,
        error_message=message,
    )


def invalid(result: ApiResult, item: InstructionResult | None) -> Decision:
    """IBKR refused the request as invalid: FAILED, naming the fields it complained about."""
    fields = "; ".join(f"{name}: {why}" for name, why in result.invalid_arguments)
    message = (
        fields or (item.error_message if item else None) or result.error_detail or "invalid request"
    )
    return Decision(
        Action.DONE,
        f"IBKR refused the request as invalid ({http_label(result)}): {message}",
        to_status="FAILED",
        error_code=INVALID_ARGUMENT_CODE,
        error_message=message,
    )
