"""The contract's tracked-state object, built from a client-instruction row.

Used by `status --json` and as the body of every event, so both always agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from worker.redaction import mask_bank_details, scrub_text


class TrackedRow(Protocol):
    """What the status object is made of (a `worker.store.rows.ClientInstruction`)."""

    client_instruction_id: int
    instruction_type: str
    status: str
    instruction_id: int | None
    instruction_set_id: int | None
    ib_reference_id: int | None
    error_code: str | None
    error_message: str | None
    result: dict[str, Any] | None
    correlation_id: str | None
    account_id: str | None
    created_at: datetime
    updated_at: datetime
    final_at: datetime | None
    poll_count: int


def iso_utc(value: datetime | None) -> str | None:
    """`2026-11-24T10:00:00.123456Z` (UTC, `Z` suffix), or None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tracked_state(row: TrackedRow) -> dict[str, Any]:
    """The status object of the contract for one client instruction. The error text and the
    result pass the redaction (IBKR's words and a request's values may carry account numbers)."""
    error = None
    if row.error_code is not None or row.error_message is not None:
        message = scrub_text(row.error_message) if row.error_message else row.error_message
        error = {"code": row.error_code, "message": message}
    return {
        "clientInstructionId": row.client_instruction_id,
        "instructionType": row.instruction_type,
        "status": row.status,
        "instructionId": row.instruction_id,
        "instructionSetId": row.instruction_set_id,
        "ibReferenceId": row.ib_reference_id,
        "error": error,
        "result": mask_bank_details(row.result) if row.result is not None else None,
        "correlationId": row.correlation_id,
        "accountId": row.account_id,
        "createdAt": iso_utc(row.created_at),
        "updatedAt": iso_utc(row.updated_at),
        "finalAt": iso_utc(row.final_at),
        "pollCount": row.poll_count,
    }
