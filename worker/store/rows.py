"""The rows the store hands to the services: plain dataclasses, one field per column of their
table, in the table's order (a unit test holds them to `models.tables`).

A row read by the store and adopted by a transaction (`Tx.adopt`) is written back at commit
with the columns that changed; a new row given to `Tx.insert` is written at commit with the
values it holds then. Fields marked as links (`link()`) are no columns: they carry the rows a
service reads beside this one (a member's submission, a submission's members).

A serial `id` of 0 is one not allocated yet (`worker.store.ids.allocate`); a row inserted
with id 0 takes it from the column's default, and it is not read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

#: The metadata of a field that is not a column: another row read with this one.
LINK = {"link": True}


@dataclass(slots=True, kw_only=True, eq=False)
class Submission:
    """One POST body we were asked to send: a single request or a whole bulk request."""

    id: int = 0
    message_id: str | None = None
    correlation_id: str | None = None
    instruction_type: str
    is_bulk: bool = False
    endpoint_path: str
    request_json: str
    attempt_count: int = 0
    instruction_set_id: int | None = None
    http_status: int | None = None
    sent_attempts: int = 0
    inflight_until: datetime | None = None
    absent_since: datetime | None = None
    created_at: datetime
    updated_at: datetime
    #: The members, in position order, when they were read with it (else empty).
    members: list[ClientInstruction] = field(
        default_factory=list, compare=False, repr=False, metadata=LINK
    )


@dataclass(slots=True, kw_only=True, eq=False)
class ClientInstruction:
    """One instruction we were asked to make, keyed by its clientInstructionId."""

    id: int = 0
    client_instruction_id: int
    duplicate_of_id: int | None = None
    submission_id: int | None = None
    position: int = 0
    instruction_type: str
    account_id: str | None = None
    target_account_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None
    status: str
    error_code: str | None = None
    error_message: str | None = None
    error_details: dict[str, Any] | None = None
    instruction_id: int | None = None
    instruction_set_id: int | None = None
    ib_reference_id: int | None = None
    result: dict[str, Any] | None = None
    pending_instruction_id: int | None = None
    attempt_count: int = 0
    poll_count: int = 0
    error_retry_count: int = 0
    api_call_count: int = 0
    next_poll_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    deadline_at: datetime | None = None
    overdue_at: datetime | None = None
    event_sequence: int = 0
    applied_twice_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    final_at: datetime | None = None
    #: Its submission, when it was read with it.
    submission: Submission | None = field(default=None, compare=False, repr=False, metadata=LINK)


@dataclass(slots=True, kw_only=True, eq=False)
class Instruction:
    """IBKR's view of one instruction (by IBKR's instructionId)."""

    id: int = 0
    instruction_id: int
    client_instruction_pk: int | None = None
    instruction_set_id: int | None = None
    instruction_type: str | None = None
    ibkr_status: str | None = None
    ib_reference_id: int | None = None
    processed_at: str | None = None
    result: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True, kw_only=True, eq=False)
class InstructionSet:
    """IBKR's group of instructions submitted in one POST."""

    instruction_set_id: int
    submission_id: int | None = None
    http_status: int | None = None
    member_count: int = 0
    last_polled_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True, kw_only=True, eq=False)
class InboundMessage:
    """A message id seen on the inbound queue, with the fingerprint of its request."""

    message_id: str
    request_sha256: str
    submission_id: int | None = None
    received_at: datetime


@dataclass(slots=True, kw_only=True, eq=False)
class DeadLetter:
    """A message that could not be processed: the view of it for people, and why."""

    id: int = 0
    message_id: str | None = None
    queue_name: str | None = None
    body: str
    body_size: int
    truncated: bool = False
    body_masked: bool = False
    body_replaced: bool = False
    original_kept: bool = False
    body_sha256: str | None = None
    reason: str
    first_seen_at: datetime
    last_seen_at: datetime
    seen_count: int = 1
    replay_count: int = 0
    replayed_at: datetime | None = None


@dataclass(slots=True, kw_only=True, eq=False)
class DeadLetterOriginal:
    """The bytes of a dead letter exactly as received (only replay reads them)."""

    dead_letter_id: int
    body: bytes


@dataclass(slots=True, kw_only=True, eq=False)
class MessageFailure:
    """How often handling one inbound message failed."""

    key: str
    failure_count: int
    last_reason: str
    first_failed_at: datetime
    last_failed_at: datetime


Row = (
    Submission
    | ClientInstruction
    | Instruction
    | InstructionSet
    | InboundMessage
    | DeadLetter
    | DeadLetterOriginal
    | MessageFailure
)
ROW_TYPES: tuple[type[Row], ...] = (
    Submission,
    ClientInstruction,
    Instruction,
    InstructionSet,
    InboundMessage,
    DeadLetter,
    DeadLetterOriginal,
    MessageFailure,
)


_COLUMNS: dict[type[Any], tuple[str, ...]] = {
    row_type: tuple(f.name for f in fields(row_type) if not f.metadata.get("link"))
    for row_type in ROW_TYPES
}


def columns(row_type: type[Any]) -> tuple[str, ...]:
    """The column fields of `row_type`, in order (its links left out)."""
    return _COLUMNS[row_type]


def values_of(row: Row) -> tuple[Any, ...]:
    """The row's column values, in `columns` order."""
    return tuple(getattr(row, name) for name in columns(type(row)))
