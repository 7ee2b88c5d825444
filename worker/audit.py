"""Read-only status and audit queries for the command line.

Every query is driven by an index of `models.tables` and bounded by a LIMIT, so it stays fast
however large the tables grow (no OFFSET, no count over a table):

- `find_status` by clientInstructionId: `ix_client_instructions_client_instruction_id_id`;
- by message id: `ix_submissions_message_id` then `ix_client_instructions_submission_id`, and
  `ix_client_instructions_message_id`;
- `audit_trail`: the `(key, id)` index of the first key filter given; with only a time range,
  `ix_audit_events_at`;
- `list_dead_letters`: the primary key.

Times given to the queries may be naive (taken as UTC) or aware (converted to UTC, as stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, select
from sqlalchemy.orm import Session

from models.tables import AuditEvent, ClientInstruction, DeadLetter, Submission
from models.views import iso_utc, tracked_state
from worker.redaction import scrub_text

DEFAULT_AUDIT_LIMIT = 1000
DEFAULT_DEAD_LETTER_LIMIT = 1000
# A bulk request is one message; IBKR caps bulk sizes far below this.
MAX_MESSAGE_MEMBERS = 10_000
# Redeliveries of one message: each may have stored its own submission.
MAX_MESSAGE_SUBMISSIONS = 100


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def find_status(
    session: Session,
    *,
    client_instruction_id: int | None = None,
    message_id: str | None = None,
) -> dict[str, Any] | None:
    """The tracked state (`models.views.tracked_state`) of one instruction, or None if unknown.

    Give exactly one of the two. By clientInstructionId the owning row (the one without
    `duplicate_of_id`) is preferred, else the newest row holding that id. By message id it is
    the first member of that message's request; use `find_statuses_by_message_id` to get
    every member of a bulk request.
    """
    if (client_instruction_id is None) == (message_id is None):
        raise ValueError("give exactly one of client_instruction_id and message_id")
    if message_id is not None:
        states = find_statuses_by_message_id(session, message_id, limit=1)
        return states[0] if states else None
    owner_first = case((ClientInstruction.duplicate_of_id.is_(None), 0), else_=1)
    row = session.scalars(
        select(ClientInstruction)
        .where(ClientInstruction.client_instruction_id == client_instruction_id)
        .order_by(owner_first, ClientInstruction.id.desc())
        .limit(1)
    ).first()
    return tracked_state(row) if row is not None else None


def find_statuses_by_message_id(
    session: Session, message_id: str, *, limit: int = MAX_MESSAGE_MEMBERS
) -> list[dict[str, Any]]:
    """The tracked states of every instruction the message `message_id` asked for.

    One for a single request, one per member (in request order) for a bulk request; empty
    when the message is unknown. At most `limit` states.
    """
    submission_ids = list(
        session.scalars(
            select(Submission.id)
            .where(Submission.message_id == message_id)
            .order_by(Submission.id)
            .limit(MAX_MESSAGE_SUBMISSIONS)
        )
    )
    rows: dict[int, ClientInstruction] = {}
    if submission_ids:
        for row in session.scalars(
            select(ClientInstruction)
            .where(ClientInstruction.submission_id.in_(submission_ids))
            .order_by(
                ClientInstruction.submission_id, ClientInstruction.position, ClientInstruction.id
            )
            .limit(limit)
        ):
            rows[row.id] = row
    # Rows stored before (or without) a submission carry the message id themselves.
    for row in session.scalars(
        select(ClientInstruction)
        .where(ClientInstruction.message_id == message_id)
        .order_by(ClientInstruction.position, ClientInstruction.id)
        .limit(limit)
    ):
        rows.setdefault(row.id, row)
    ordered = sorted(
        rows.values(),
        key=lambda row: (
            row.submission_id if row.submission_id is not None else -1,
            row.position,
            row.id,
        ),
    )
    return [tracked_state(row) for row in ordered[:limit]]


# Exactly what the audit JSON needs (not `api_response`, which may be large), in this order.
_AUDIT_COLUMNS = (
    AuditEvent.at,
    AuditEvent.client_instruction_id,
    AuditEvent.instruction_id,
    AuditEvent.instruction_set_id,
    AuditEvent.from_status,
    AuditEvent.to_status,
    AuditEvent.reason,
    AuditEvent.actor,
    AuditEvent.api_method,
    AuditEvent.api_path,
    AuditEvent.api_http_status,
    AuditEvent.api_latency_ms,
)


def _audit_json(values: Sequence[Any]) -> dict[str, Any]:
    # Positional: name lookups on 1,000 result rows cost more than the query itself.
    (
        at,
        client_instruction_id,
        instruction_id,
        instruction_set_id,
        from_status,
        to_status,
        reason,
        actor,
        api_method,
        api_path,
        api_http_status,
        api_latency_ms,
    ) = values
    api = None
    if api_method is not None or api_path is not None or api_http_status is not None:
        api = {
            "method": api_method,
            "path": api_path,
            "httpStatus": api_http_status,
            "latencyMs": api_latency_ms,
        }
    return {
        "at": iso_utc(at),
        "clientInstructionId": client_instruction_id,
        "instructionId": instruction_id,
        "instructionSetId": instruction_set_id,
        "fromStatus": from_status,
        "toStatus": to_status,
        "reason": reason,
        "actor": actor,
        "api": api,
    }


def audit_event_json(event: AuditEvent) -> dict[str, Any]:
    """The contract's audit JSON object for one audit event."""
    return _audit_json([getattr(event, column.key) for column in _AUDIT_COLUMNS])


def audit_trail(
    session: Session,
    *,
    client_instruction_id: int | None = None,
    instruction_id: int | None = None,
    instruction_set_id: int | None = None,
    account_id: str | None = None,
    correlation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_AUDIT_LIMIT,
) -> list[dict[str, Any]]:
    """Audit events matching every filter given, oldest first, at most `limit` (default 1000).

    `since` is inclusive (`at >= since`), `until` exclusive (`at < until`). With a key filter
    (clientInstructionId, instructionId, instructionSetId, account, correlation id) "oldest
    first" is the order the events were recorded in (by id); with only a time range it is by
    `at`, then id. Each item is the contract's audit JSON object (`audit_event_json`).
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    key_filters: list[ColumnElement[bool]] = []
    if client_instruction_id is not None:
        key_filters.append(AuditEvent.client_instruction_id == client_instruction_id)
    if instruction_id is not None:
        key_filters.append(AuditEvent.instruction_id == instruction_id)
    if instruction_set_id is not None:
        key_filters.append(AuditEvent.instruction_set_id == instruction_set_id)
    if account_id is not None:
        key_filters.append(AuditEvent.account_id == account_id)
    if correlation_id is not None:
        key_filters.append(AuditEvent.correlation_id == correlation_id)
    time_filters: list[ColumnElement[bool]] = []
    if since is not None:
        time_filters.append(AuditEvent.at >= as_utc(since))
    if until is not None:
        time_filters.append(AuditEvent.at < as_utc(until))
    query = select(*_AUDIT_COLUMNS).where(*key_filters, *time_filters)
    if not key_filters and time_filters:
        # Walk `ix_audit_events_at`: ordering by id here would sort the whole time range.
        query = query.order_by(AuditEvent.at, AuditEvent.id)
    else:
        query = query.order_by(AuditEvent.id)
    # Core execution: the ORM's row processing would double the cost of a 1,000-row answer.
    rows = session.connection().execute(query.limit(limit)).all()
    return [_audit_json(row) for row in rows]


def dead_letter_json(row: DeadLetter) -> dict[str, Any]:
    """One dead letter as the `dead-letters list --json` object.

    `seenAt` is when the message was first set aside; `lastSeenAt` and `seenCount` say whether
    it came back; `body` is the message as received with bank, broker and tax account numbers
    masked, truncated past 64 KiB, invalid UTF-8 and NUL replaced: `bodyIsOriginal` is false
    when any of these changed it, and `bodyChanges` says which (`masked`, `truncated`,
    `replaced`). `replayable`: the original bytes were kept (replay sends those, unchanged).
    """
    shown = scrub_text(row.body)  # letters recorded before the view was masked, too
    changes = [
        name
        for name, applies in (
            ("masked", row.body_masked or shown != row.body),
            ("truncated", row.truncated),
            ("replaced", row.body_replaced),
        )
        if applies
    ]
    return {
        "id": row.id,
        "messageId": row.message_id,
        "queueName": row.queue_name,
        "body": shown,
        "bodySize": row.body_size,
        "truncated": row.truncated,
        "bodyIsOriginal": not changes,
        "bodyChanges": changes,
        "replayable": row.original_kept,
        "reason": scrub_text(row.reason),
        "seenAt": iso_utc(row.first_seen_at),
        "lastSeenAt": iso_utc(row.last_seen_at),
        "seenCount": row.seen_count,
        "replayCount": row.replay_count,
        "replayedAt": iso_utc(row.replayed_at),
    }


def list_dead_letters(
    session: Session, *, limit: int = DEFAULT_DEAD_LETTER_LIMIT
) -> list[dict[str, Any]]:
    """Dead letters, oldest first, at most `limit` (default 1000); see `dead_letter_json`."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    rows = session.scalars(select(DeadLetter).order_by(DeadLetter.id).limit(limit))
    return [dead_letter_json(row) for row in rows]
