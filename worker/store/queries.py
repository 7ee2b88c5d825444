"""The read-only queries of the command line and the demo: instructions by clientInstructionId
or message id, audit events by key and time, each driven by an index and bounded by a LIMIT
(see `worker.audit`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, select

from models.tables import AuditEvent
from worker.store.database import Tx, table, table_of
from worker.store.rows import ClientInstruction, Submission

_MEMBERS = table_of(ClientInstruction)
_M = _MEMBERS.c
_SUBMISSIONS = table_of(Submission)
_AUDIT = table(AuditEvent)
_A = _AUDIT.c

#: The audit columns the CLI shows (not `api_response`, which may be large), in this order.
AUDIT_COLUMNS = (
    "at",
    "client_instruction_id",
    "instruction_id",
    "instruction_set_id",
    "from_status",
    "to_status",
    "reason",
    "actor",
    "api_method",
    "api_path",
    "api_http_status",
    "api_latency_ms",
)


def by_client_instruction_id(tx: Tx, client_instruction_id: int) -> ClientInstruction | None:
    """The row owning `client_instruction_id`, else the newest holding it."""
    owner_first = case((_M.duplicate_of_id.is_(None), 0), else_=1)
    query = (
        select(*_MEMBERS.columns)
        .where(_M.client_instruction_id == client_instruction_id)
        .order_by(owner_first, _M.id.desc())
        .limit(1)
    )
    found = tx.read(ClientInstruction, query)
    return found[0] if found else None


def submissions_of_message(tx: Tx, message_id: str, limit: int) -> list[int]:
    """The ids of the submissions stored from one message, oldest first."""
    c = _SUBMISSIONS.c
    query = select(c.id).where(c.message_id == message_id).order_by(c.id).limit(limit)
    return list(tx.execute(query).scalars())


def members_of(tx: Tx, submission_ids: list[int], limit: int) -> list[ClientInstruction]:
    """The members of these submissions, by submission and position."""
    query = (
        select(*_MEMBERS.columns)
        .where(_M.submission_id.in_(submission_ids))
        .order_by(_M.submission_id, _M.position, _M.id)
        .limit(limit)
    )
    return tx.read(ClientInstruction, query)


def rows_of_message(tx: Tx, message_id: str, limit: int) -> list[ClientInstruction]:
    """The rows that carry `message_id` themselves, by position."""
    query = (
        select(*_MEMBERS.columns)
        .where(_M.message_id == message_id)
        .order_by(_M.position, _M.id)
        .limit(limit)
    )
    return tx.read(ClientInstruction, query)


@dataclass(frozen=True)
class AuditFilter:
    """The audit events wanted: every key given must match; `since` inclusive, `until`
    exclusive (aware UTC)."""

    client_instruction_id: int | None = None
    instruction_id: int | None = None
    instruction_set_id: int | None = None
    account_id: str | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def audit_rows(tx: Tx, wanted: AuditFilter, limit: int) -> list[tuple[Any, ...]]:
    """The values of `AUDIT_COLUMNS` of the matching audit events, oldest first: by id with a
    key filter (the order they were recorded in), by time then id with only a time range."""
    keys: list[ColumnElement[bool]] = [
        _A[name] == getattr(wanted, name)
        for name in (
            "client_instruction_id",
            "instruction_id",
            "instruction_set_id",
            "account_id",
            "correlation_id",
        )
        if getattr(wanted, name) is not None
    ]
    times: list[ColumnElement[bool]] = []
    if wanted.since is not None:
        times.append(_A.at >= wanted.since)
    if wanted.until is not None:
        times.append(_A.at < wanted.until)
    query = select(*(_A[name] for name in AUDIT_COLUMNS)).where(*keys, *times)
    if not keys and times:
        # Walk `ix_audit_events_at`: ordering by id here would sort the whole time range.
        query = query.order_by(_A.at, _A.id)
    else:
        query = query.order_by(_A.id)
    return [tuple(row) for row in tx.execute(query.limit(limit)).all()]
