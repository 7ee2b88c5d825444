"""The product's tables (SQLAlchemy 2 typed models).

Every change here ships an Alembic revision under `migrations/versions`.
Times are stored as timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Integer on SQLite so that a primary key is its ROWID (auto-increment); BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTimeType(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite keeps no zone: we add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"refusing a naive datetime {value!r}: use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDateTime = UtcDateTimeType()

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UtcDateTime}


class Submission(Base):
    """One POST body we were asked to send: a single request or a whole bulk request.

    `request_json` is the body exactly as it is signed (before the JWT claims are merged),
    written by `worker.jsontext.dumps` so amounts keep their decimal text.
    """

    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str | None] = mapped_column(String(64), index=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    instruction_type: Mapped[str] = mapped_column(String(64))
    is_bulk: Mapped[bool] = mapped_column(Boolean, default=False)
    endpoint_path: Mapped[str] = mapped_column(String(128))
    request_json: Mapped[str] = mapped_column(Text)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    instruction_set_id: Mapped[int | None] = mapped_column(BigInteger)
    http_status: Mapped[int | None] = mapped_column(Integer)
    #: Attempts that left and were not refused outright (they may have registered at IBKR).
    sent_attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Until when (the database's clock) the latest attempt may still register at IBKR: set when
    #: an attempt begins, cleared only by an answer that settles it or by IBKR not knowing the
    #: id twice after this time. No attempt begins while it is set.
    inflight_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: When IBKR was first seen not to know the id (404) after `inflight_until`.
    absent_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    members: Mapped[list[ClientInstruction]] = relationship(
        back_populates="submission", order_by="ClientInstruction.position"
    )


class ClientInstruction(Base):
    """One instruction we were asked to make, keyed by its clientInstructionId.

    A request that reuses a clientInstructionId with a different body is kept as its own row with
    `duplicate_of_id` set (it ends FAILED); only one row without it may hold each id.
    """

    __tablename__ = "client_instructions"
    __table_args__ = (
        Index(
            "uq_client_instructions_owner",
            "client_instruction_id",
            unique=True,
            sqlite_where=text("duplicate_of_id IS NULL"),
            postgresql_where=text("duplicate_of_id IS NULL"),
        ),
        # The scheduler's "due now" query: non-final rows ordered by next_poll_at.
        Index(
            "ix_client_instructions_due",
            "next_poll_at",
            sqlite_where=text("next_poll_at IS NOT NULL"),
            postgresql_where=text("next_poll_at IS NOT NULL"),
        ),
        Index("ix_client_instructions_account_created", "account_id", "created_at"),
        # `status` by clientInstructionId: the owner first, else the newest duplicate row.
        Index("ix_client_instructions_client_instruction_id_id", "client_instruction_id", "id"),
        Index("ix_client_instructions_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    client_instruction_id: Mapped[int] = mapped_column(BigInteger)
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("client_instructions.id"))
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    instruction_type: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str | None] = mapped_column(String(64))
    target_account_id: Mapped[str | None] = mapped_column(String(64))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(28, 10))
    currency: Mapped[str | None] = mapped_column(String(8))
    correlation_id: Mapped[str | None] = mapped_column(String(128), index=True)
    message_id: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    instruction_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    instruction_set_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    ib_reference_id: Mapped[int | None] = mapped_column(BigInteger)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    pending_instruction_id: Mapped[int | None] = mapped_column(BigInteger)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    poll_count: Mapped[int] = mapped_column(Integer, default=0)
    error_retry_count: Mapped[int] = mapped_column(Integer, default=0)
    api_call_count: Mapped[int] = mapped_column(Integer, default=0)
    next_poll_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    overdue_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    event_sequence: Mapped[int] = mapped_column(Integer, default=0)
    #: When IBKR showed two transactions of ours under this clientInstructionId.
    applied_twice_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    final_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    submission: Mapped[Submission | None] = relationship(back_populates="members")


class Instruction(Base):
    """IBKR's view of one instruction (by IBKR's instructionId), caused by a client instruction."""

    __tablename__ = "instructions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instruction_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    client_instruction_pk: Mapped[int | None] = mapped_column(
        ForeignKey("client_instructions.id"), index=True
    )
    instruction_set_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    instruction_type: Mapped[str | None] = mapped_column(String(64))
    ibkr_status: Mapped[str | None] = mapped_column(String(32))
    ib_reference_id: Mapped[int | None] = mapped_column(BigInteger)
    processed_at: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class InstructionSet(Base):
    """IBKR's group of instructions submitted in one POST (bulk: many members)."""

    __tablename__ = "instruction_sets"

    instruction_set_id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False
    )
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id"), index=True)
    http_status: Mapped[int | None] = mapped_column(Integer)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    last_polled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AuditEvent(Base):
    """Append-only: one row per state change (or noteworthy fact) of a client instruction.

    On PostgreSQL triggers refuse UPDATE, DELETE and TRUNCATE. `api_response` is the API body
    with bank account numbers masked; tokens and signed bodies are never stored.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_client_instruction_id_id", "client_instruction_id", "id"),
        Index("ix_audit_events_instruction_id_id", "instruction_id", "id"),
        Index("ix_audit_events_instruction_set_id_id", "instruction_set_id", "id"),
        Index("ix_audit_events_account_id_at", "account_id", "at"),
        # `audit --account`: oldest first (by id) without sorting the account's whole history.
        Index("ix_audit_events_account_id_id", "account_id", "id"),
        Index("ix_audit_events_correlation_id_id", "correlation_id", "id"),
        Index("ix_audit_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    client_instruction_pk: Mapped[int | None] = mapped_column(BigInteger)
    client_instruction_id: Mapped[int | None] = mapped_column(BigInteger)
    instruction_id: Mapped[int | None] = mapped_column(BigInteger)
    instruction_set_id: Mapped[int | None] = mapped_column(BigInteger)
    account_id: Mapped[str | None] = mapped_column(String(64))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(64))
    api_method: Mapped[str | None] = mapped_column(String(8))
    api_path: Mapped[str | None] = mapped_column(String(256))
    api_http_status: Mapped[int | None] = mapped_column(Integer)
    api_latency_ms: Mapped[float | None] = mapped_column(Float)
    api_response: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class OutboxEvent(Base):
    """An event to publish, committed in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unpublished",
            "id",
            sqlite_where=text("published_at IS NULL"),
            postgresql_where=text("published_at IS NULL"),
        ),
        UniqueConstraint("event_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36))
    client_instruction_pk: Mapped[int | None] = mapped_column(BigInteger)
    sequence: Mapped[int] = mapped_column(Integer)
    routing_key: Mapped[str] = mapped_column(String(64))
    body_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)


class DeadLetter(Base):
    """A message that could not be processed: a view of it for people, and why.

    `body` is the view: the message as received with bank, broker and tax account numbers
    masked, truncated past 64 KiB, invalid UTF-8 and NUL replaced; `body_masked`,
    `truncated` and `body_replaced` say which of these made it differ from the original.
    The original bytes live in `DeadLetterOriginal` (only replay reads them), when
    `original_kept` (a message above MAX_MESSAGE_BYTES is not kept whole). `body_sha256`
    (of the bytes received, or of the part kept) recognises the same message seen again.
    """

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str | None] = mapped_column(String(64), index=True)
    queue_name: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    body_size: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    body_masked: Mapped[bool] = mapped_column(Boolean, default=False)
    body_replaced: Mapped[bool] = mapped_column(Boolean, default=False)
    original_kept: Mapped[bool] = mapped_column(Boolean, default=False)
    body_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    seen_count: Mapped[int] = mapped_column(Integer, default=1)
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    replayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class DeadLetterOriginal(Base):
    """The bytes of a dead letter exactly as received (at most MAX_MESSAGE_BYTES). Only replay
    reads them: they are never logged, listed or shown."""

    __tablename__ = "dead_letter_originals"

    dead_letter_id: Mapped[int] = mapped_column(
        ForeignKey("dead_letters.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    body: Mapped[bytes] = mapped_column(LargeBinary)


class MessageFailure(Base):
    """How often handling one inbound message failed (infrastructure trouble, or a bug), kept
    where no producer can write it. `key` is the message id, or `sha256:<hex>` of the bytes
    of a message without one. Replay of its dead letter deletes the row (a fresh count)."""

    __tablename__ = "message_failures"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failure_count: Mapped[int] = mapped_column(Integer)
    last_reason: Mapped[str] = mapped_column(Text)
    first_failed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_failed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class InboundMessage(Base):
    """A message id seen on the inbound queue, once: the idempotency key of a request without a
    clientInstructionId. `request_sha256` fingerprints its `request` and `correlation_id`; the
    same id arriving with another fingerprint is a different request (DUPLICATE_MESSAGE_ID)."""

    __tablename__ = "inbound_messages"

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id"))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RateLimitBucket(Base):
    """One sliding-window limit shared by every process using this database: at most
    `len(ring)` grants in any window. `granted` counts the grants so far (the next grant
    overwrites ring position `granted % limit`); `last_at` is the latest grant, in seconds
    since the epoch on the database's clock. The name carries the limit and the window, so
    processes configured differently never share a ring."""

    __tablename__ = "rate_limit_buckets"

    bucket: Mapped[str] = mapped_column(String(256), primary_key=True)
    granted: Mapped[int] = mapped_column(BigInteger, default=0)
    last_at: Mapped[float] = mapped_column(Float, default=0.0)


class RateLimitGrant(Base):
    """The ring of a bucket's latest grants: position `k % limit` holds grant k. A new grant
    needs only the one it replaces (the limit-th latest), whatever the limit."""

    __tablename__ = "rate_limit_grants"

    bucket: Mapped[str] = mapped_column(String(256), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    granted_at: Mapped[float] = mapped_column(Float)


class IdCounter(Base):
    """Counters for databases without sequences (SQLite): `client_instruction_id` lives here."""

    __tablename__ = "id_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


CLIENT_INSTRUCTION_ID_SEQUENCE = "client_instruction_id_seq"
