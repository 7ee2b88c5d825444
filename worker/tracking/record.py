"""The only way a tracked instruction changes: its row, an audit event and an outbox event, in the
caller's transaction, so that no change is ever committed without its explanation and its
announcement (and no announcement exists for a change that was not committed)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker import jsontext
from worker.redaction import mask_bank_details, scrub_text
from worker.status import FINAL
from worker.store import Tx
from worker.store.rows import ClientInstruction
from worker.tracking.state import iso_utc, tracked_state

ACTOR_WORKER = "worker"
ACTOR_SCHEDULER = "scheduler"
ACTOR_OPERATOR = "operator"


@dataclass(frozen=True)
class ApiCall:
    """The API exchange that showed a change, as the audit keeps it (body already parsed)."""

    method: str
    path: str
    http_status: int | None
    latency_ms: float | None
    response_body: Any = None


def append_audit(
    tx: Tx,
    row: ClientInstruction,
    *,
    from_status: str | None,
    to_status: str | None,
    reason: str,
    actor: str,
    now: datetime,
    api: ApiCall | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit event about `row` (written when the transaction commits). Response
    bodies are stored with bank account numbers masked; tokens and signed bodies
    never reach this function."""
    body: Any = None
    if api is not None and api.response_body is not None:
        body = jsontext.to_plain(mask_bank_details(api.response_body))
        if not isinstance(body, dict):
            body = {"body": body}
    if details:
        body = {**(body or {}), "details": jsontext.to_plain(mask_bank_details(details))}
    tx.audit(
        row,
        {
            "at": now,
            "client_instruction_id": row.client_instruction_id,
            "instruction_id": row.instruction_id,
            "instruction_set_id": row.instruction_set_id,
            "account_id": row.account_id,
            "correlation_id": row.correlation_id,
            "from_status": from_status,
            "to_status": to_status,
            "reason": scrub_text(reason),
            "actor": actor,
            "api_method": api.method if api else None,
            "api_path": api.path if api else None,
            "api_http_status": api.http_status if api else None,
            "api_latency_ms": (
                round(api.latency_ms, 3) if api and api.latency_ms is not None else None
            ),
            "api_response": body,
        },
    )


def outbox_values(row: ClientInstruction, *, event: str, now: datetime) -> dict[str, Any]:
    """The outbox row announcing `row`'s current state (its `event_sequence` already counted).

    `event` is `status_changed` (routing key `instruction.<status>`), `overdue` or
    `applied_twice` (routing keys `instruction.overdue`, `instruction.applied_twice`).
    """
    event_id = str(uuid.uuid4())
    body = {
        **tracked_state(row),
        "event": event,
        "eventId": event_id,
        "sequence": row.event_sequence,
        "at": iso_utc(now),
    }
    routing_key = (
        f"instruction.{event}"
        if event in ("overdue", "applied_twice")
        else f"instruction.{row.status.lower()}"
    )
    return {
        "event_id": event_id,
        "sequence": row.event_sequence,
        "routing_key": routing_key,
        "body_json": jsontext.dumps(body),
        "created_at": now,
        "publish_attempts": 0,
    }


def emit_event(tx: Tx, row: ClientInstruction, *, event: str, now: datetime) -> None:
    """Queue an event about `row` in the outbox (published by the relay after commit)."""
    row.event_sequence = (row.event_sequence or 0) + 1
    tx.outbox(row, outbox_values(row, event=event, now=now))


def change_status(
    tx: Tx,
    row: ClientInstruction,
    to_status: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
    api: ApiCall | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Move `row` to `to_status` with its audit event and its outbox event.

    Final statuses stamp `final_at` and take the row off the poll schedule. A "change" to the
    same status only appends an audit note (no event: nothing changed for the producers).
    """
    from_status = row.status or None  # a new row starts with no status
    changed = from_status != to_status
    if changed:
        row.status = to_status
        row.updated_at = now
        if to_status in FINAL:
            row.final_at = now
            row.next_poll_at = None
            row.lease_owner = None
            row.lease_expires_at = None
    append_audit(
        tx,
        row,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        actor=actor,
        now=now,
        api=api,
        details=details,
    )
    if changed:
        emit_event(tx, row, event="status_changed", now=now)


def mark_overdue(tx: Tx, row: ClientInstruction, *, actor: str, now: datetime) -> None:
    """Announce (once) that `row` passed its deadline without a final status; it keeps being
    tracked, at the slowest cadence."""
    row.overdue_at = now
    row.updated_at = now
    append_audit(
        tx,
        row,
        from_status=row.status,
        to_status=row.status,
        reason=(
            f"overdue: no final status by the deadline {iso_utc(row.deadline_at)}; "
            "still tracked at the slowest cadence"
        ),
        actor=actor,
        now=now,
    )
    emit_event(tx, row, event="overdue", now=now)
