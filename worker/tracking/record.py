"""The only way a tracked instruction changes: its row, an audit event and an outbox event, in the
caller's transaction, so that no change is ever committed without its explanation and its
announcement (and no announcement exists for a change that was not committed)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.orm import DeclarativeBase, Session

from models import AuditEvent, ClientInstruction, OutboxEvent
from models.batched import insert_many
from models.unsaved import table_of, unsaved_values
from models.views import FINAL_STATUSES, iso_utc, tracked_state
from worker import jsontext
from worker.redaction import mask_bank_details, scrub_text

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
    session: Session,
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
    """Append one audit event about `row` (written with the transaction, see `_Appends`).
    Response bodies are stored with bank account numbers masked; tokens and signed bodies
    never reach this function."""
    body: Any = None
    if api is not None and api.response_body is not None:
        body = jsontext.to_plain(mask_bank_details(api.response_body))
        if not isinstance(body, dict):
            body = {"body": body}
    if details:
        body = {**(body or {}), "details": jsontext.to_plain(mask_bank_details(details))}
    _appends(session).audit.append(
        (
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


def emit_event(session: Session, row: ClientInstruction, *, event: str, now: datetime) -> None:
    """Queue an event about `row` in the outbox (published by the relay after commit)."""
    row.event_sequence = (row.event_sequence or 0) + 1
    _appends(session).outbox.append((row, outbox_values(row, event=event, now=now)))


@dataclass
class _Appends:
    """Audit and outbox rows of the session's transaction, not yet written.

    They are only ever inserted, never read back in the transaction that makes them, so they
    are written just before the transaction commits instead of as ORM objects, together with
    the rows of `insert_at_commit`: one statement for all of them on PostgreSQL
    (`models.batched.insert_many`), one per table elsewhere. The rows they describe have their
    ids by then. (A query later in the same transaction does not see them.)
    """

    audit: list[tuple[ClientInstruction, dict[str, Any]]] = field(default_factory=list)
    outbox: list[tuple[ClientInstruction, dict[str, Any]]] = field(default_factory=list)
    #: Rows made by `models.unsaved.new_unsaved`, inserted (with the values they hold then)
    #: before the events.
    unsaved: list[DeclarativeBase] = field(default_factory=list)


def insert_at_commit(session: Session, row: DeclarativeBase) -> None:
    """Insert `row` (made by `models.unsaved.new_unsaved`) just before the session's
    transaction commits, with the values it holds then: changes made to it until the commit
    are written, and a row that several changes touch costs one INSERT. Rows of one model go
    out in one statement; like the buffered events, a query earlier in the transaction does
    not see it."""
    _appends(session).unsaved.append(row)


def transaction_info(session: Session) -> dict[str, Any]:
    """A scratch dict that lives as long as the session's current (outermost) transaction:
    what the tracking code buffers or caches for it is dropped when it ends, committed or not."""
    info: dict[str, Any] | None = session.info.get(_TRANSACTION_INFO_KEY)
    if info is None:
        info = session.info[_TRANSACTION_INFO_KEY] = {}
    return info


def after_commit(session: Session, call: Callable[[], None]) -> None:
    """Call `call` once the session's current transaction has committed (never if it rolls
    back): for effects outside the database, such as metrics, that a retried transaction must
    not repeat."""
    transaction_info(session).setdefault(_AFTER_COMMIT_KEY, []).append(call)


_TRANSACTION_INFO_KEY = "tracking_transaction"
_APPENDS_KEY = "appends"
_AFTER_COMMIT_KEY = "after_commit"


def _appends(session: Session) -> _Appends:
    info = transaction_info(session)
    appends: _Appends | None = info.get(_APPENDS_KEY)
    if appends is None:
        appends = info[_APPENDS_KEY] = _Appends()
    return appends


def _pending_appends(session: Session) -> _Appends | None:
    info = session.info.get(_TRANSACTION_INFO_KEY)
    appends: _Appends | None = info.get(_APPENDS_KEY) if info else None
    return (
        appends
        if appends is not None and (appends.audit or appends.outbox or appends.unsaved)
        else None
    )


def _write_appends(session: Session) -> None:
    appends = _pending_appends(session)
    if appends is None:
        return
    audit, outbox, unsaved = appends.audit, appends.outbox, appends.unsaved
    appends.audit, appends.outbox, appends.unsaved = [], [], []
    by_model: dict[type[DeclarativeBase], list[DeclarativeBase]] = {}
    for row in unsaved:
        by_model.setdefault(type(row), []).append(row)
    batches = [unsaved_values(rows) for rows in by_model.values()]
    if audit:
        batches.append(
            (
                table_of(AuditEvent),
                [{**values, "client_instruction_pk": row.id} for row, values in audit],
            )
        )
    if outbox:
        batches.append(
            (
                table_of(OutboxEvent),
                [{**values, "client_instruction_pk": row.id} for row, values in outbox],
            )
        )
    # One statement for every table on PostgreSQL.
    insert_many(session.connection(), batches)


@sa_event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if _pending_appends(session) is not None:
        session.flush()  # the rows first (their ids), then the buffered events
        _write_appends(session)


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    info = session.info.pop(_TRANSACTION_INFO_KEY, None)
    for call in (info or {}).get(_AFTER_COMMIT_KEY, ()):
        call()


@sa_event.listens_for(Session, "after_transaction_end")
def _forget_transaction(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # a rolled-back transaction's buffers die with it
        session.info.pop(_TRANSACTION_INFO_KEY, None)


def change_status(
    session: Session,
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
        if to_status in FINAL_STATUSES:
            row.final_at = now
            row.next_poll_at = None
            row.lease_owner = None
            row.lease_expires_at = None
    append_audit(
        session,
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
        emit_event(session, row, event="status_changed", now=now)


def mark_overdue(session: Session, row: ClientInstruction, *, actor: str, now: datetime) -> None:
    """Announce (once) that `row` passed its deadline without a final status; it keeps being
    tracked, at the slowest cadence."""
    row.overdue_at = now
    row.updated_at = now
    append_audit(
        session,
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
    emit_event(session, row, event="overdue", now=now)
