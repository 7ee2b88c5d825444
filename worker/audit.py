"""Read-only status and audit queries for the command line.

Every query (`worker.store.queries`) is driven by an index of `models.tables` and bounded by a
LIMIT, so it stays fast however large the tables grow (no OFFSET, no count over a table):

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

from worker.redaction import scrub_text
from worker.store import Tx, deadletters, queries
from worker.store.queries import AUDIT_COLUMNS, AuditFilter
from worker.store.rows import ClientInstruction, DeadLetter
from worker.tracking.state import iso_utc, tracked_state

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
    tx: Tx,
    *,
    client_instruction_id: int | None = None,
    message_id: str | None = None,
) -> dict[str, Any] | None:
    """The tracked state (`tracking.state.tracked_state`) of one instruction, or None if unknown.

    Give exactly one of the two. By clientInstructionId the owning row (the one without
    `duplicate_of_id`) is preferred, else the newest row holding that id. By message id it is
    the first member of that message's request; use `find_statuses_by_message_id` to get
    every member of a bulk request.
    """
    if (client_instruction_id is None) == (message_id is None):
        raise ValueError("give exactly one of client_instruction_id and message_id")
    if message_id is not None:
        states = find_statuses_by_message_id(tx, message_id, limit=1)
        return states[0] if states else None
    assert client_instruction_id is not None
    row = queries.by_client_instruction_id(tx, client_instruction_id)
    return tracked_state(row) if row is not None else None


def find_statuses_by_message_id(
    tx: Tx, message_id: str, *, limit: int = MAX_MESSAGE_MEMBERS
) -> list[dict[str, Any]]:
    """The tracked states of every instruction the message `message_id` asked for.

    One for a single request, one per member (in request order) for a bulk request; empty
    when the message is unknown. At most `limit` states.
    """
    submission_ids = queries.submissions_of_message(tx, message_id, MAX_MESSAGE_SUBMISSIONS)
    rows: dict[int, ClientInstruction] = {}
    if submission_ids:
        for row in queries.members_of(tx, submission_ids, limit):
            rows[row.id] = row
    # Rows stored before (or without) a submission carry the message id themselves.
    for row in queries.rows_of_message(tx, message_id, limit):
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


def audit_event_json(event: Any) -> dict[str, Any]:
    """The contract's audit JSON object for one audit event (anything with its columns)."""
    return _audit_json([getattr(event, name) for name in AUDIT_COLUMNS])


def audit_trail(
    tx: Tx,
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
    wanted = AuditFilter(
        client_instruction_id=client_instruction_id,
        instruction_id=instruction_id,
        instruction_set_id=instruction_set_id,
        account_id=account_id,
        correlation_id=correlation_id,
        since=as_utc(since) if since is not None else None,
        until=as_utc(until) if until is not None else None,
    )
    return [_audit_json(row) for row in queries.audit_rows(tx, wanted, limit)]


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


def list_dead_letters(tx: Tx, *, limit: int = DEFAULT_DEAD_LETTER_LIMIT) -> list[dict[str, Any]]:
    """Dead letters, oldest first, at most `limit` (default 1000); see `dead_letter_json`."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return [dead_letter_json(row) for row in deadletters.listed(tx, limit)]
