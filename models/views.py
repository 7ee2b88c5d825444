"""The contract's tracked-state object, built from a client-instruction row.

Used by `status --json` and as the body of every event, so both always agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from models.tables import ClientInstruction

FINAL_STATUSES = frozenset({"PROCESSED", "REJECTED", "FAILED", "CONFLICT"})
LOCAL_STATUSES = frozenset({"RECEIVED", "SUBMITTING", "FAILED", "CONFLICT"})
IBKR_STATUSES = frozenset({"PENDING", "PENDING_VERIFICATION", "PROCESSED", "REJECTED"})


def iso_utc(value: datetime | None) -> str | None:
    """`2026-11-24T10:00:00.123456Z` (UTC, `Z` suffix), or None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tracked_state(row: ClientInstruction) -> dict[str, Any]:
    """The status object of the contract for one client instruction."""
    error = None
    if row.error_code is not None or row.error_message is not None:
        error = {"code": row.error_code, "message": row.error_message}
    return {
        "clientInstructionId": row.client_instruction_id,
        "instructionType": row.instruction_type,
        "status": row.status,
        "instructionId": row.instruction_id,
        "instructionSetId": row.instruction_set_id,
        "ibReferenceId": row.ib_reference_id,
        "error": error,
        "result": row.result,
        "correlationId": row.correlation_id,
        "accountId": row.account_id,
        "createdAt": iso_utc(row.created_at),
        "updatedAt": iso_utc(row.updated_at),
        "finalAt": iso_utc(row.final_at),
        "pollCount": row.poll_count,
    }
