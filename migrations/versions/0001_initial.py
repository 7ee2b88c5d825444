"""Initial schema: every table, index and constraint of `models.tables`.

On PostgreSQL also the sequence behind worker-assigned clientInstructionIds and the triggers
that keep `audit_events` append-only (UPDATE, DELETE and TRUNCATE are refused). Nothing here
needs more than an ordinary owner of the database.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLIENT_INSTRUCTION_ID_SEQUENCE = "client_instruction_id_seq"

# plpgsql is a trusted language: an ordinary database owner may create this function.
REFUSE_AUDIT_CHANGE_FUNCTION = """
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused (audit events can only be inserted)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$
"""


def _is_postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    """Create every table and index; on PostgreSQL the id sequence and audit triggers."""
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_instruction_pk", sa.BigInteger(), nullable=True),
        sa.Column("client_instruction_id", sa.BigInteger(), nullable=True),
        sa.Column("instruction_id", sa.BigInteger(), nullable=True),
        sa.Column("instruction_set_id", sa.BigInteger(), nullable=True),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("api_method", sa.String(length=8), nullable=True),
        sa.Column("api_path", sa.String(length=256), nullable=True),
        sa.Column("api_http_status", sa.Integer(), nullable=True),
        sa.Column("api_latency_ms", sa.Float(), nullable=True),
        sa.Column("api_response", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(
        "ix_audit_events_account_id_at", "audit_events", ["account_id", "at"], unique=False
    )
    op.create_index(
        "ix_audit_events_account_id_id", "audit_events", ["account_id", "id"], unique=False
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"], unique=False)
    op.create_index(
        "ix_audit_events_client_instruction_id_id",
        "audit_events",
        ["client_instruction_id", "id"],
        unique=False,
    )
    op.create_index(
        "ix_audit_events_correlation_id_id", "audit_events", ["correlation_id", "id"], unique=False
    )
    op.create_index(
        "ix_audit_events_instruction_id_id", "audit_events", ["instruction_id", "id"], unique=False
    )
    op.create_index(
        "ix_audit_events_instruction_set_id_id",
        "audit_events",
        ["instruction_set_id", "id"],
        unique=False,
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("queue_name", sa.String(length=128), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_count", sa.Integer(), nullable=False),
        sa.Column("replay_count", sa.Integer(), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(
        op.f("ix_dead_letters_message_id"), "dead_letters", ["message_id"], unique=False
    )
    op.create_table(
        "id_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_id_counters")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("client_instruction_pk", sa.BigInteger(), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("routing_key", sa.String(length=64), nullable=False),
        sa.Column("body_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publish_attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["id"],
        unique=False,
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "rate_limit_slots",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("bucket", sa.String(length=256), nullable=False),
        sa.Column("granted_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_limit_slots")),
    )
    op.create_index(
        "ix_rate_limit_slots_bucket_granted_at",
        "rate_limit_slots",
        ["bucket", "granted_at"],
        unique=False,
    )
    op.create_table(
        "submissions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("instruction_type", sa.String(length=64), nullable=False),
        sa.Column("is_bulk", sa.Boolean(), nullable=False),
        sa.Column("endpoint_path", sa.String(length=128), nullable=False),
        sa.Column("request_json", sa.Text(), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("instruction_set_id", sa.BigInteger(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submissions")),
    )
    op.create_index(op.f("ix_submissions_message_id"), "submissions", ["message_id"], unique=False)
    op.create_table(
        "client_instructions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("client_instruction_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "duplicate_of_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "submission_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("instruction_type", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("target_account_id", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.Numeric(precision=28, scale=10), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error_code", sa.String(length=128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_details", sa.JSON(), nullable=True),
        sa.Column("instruction_id", sa.BigInteger(), nullable=True),
        sa.Column("instruction_set_id", sa.BigInteger(), nullable=True),
        sa.Column("ib_reference_id", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("pending_instruction_id", sa.BigInteger(), nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("poll_count", sa.Integer(), nullable=False),
        sa.Column("error_retry_count", sa.Integer(), nullable=False),
        sa.Column("api_call_count", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("overdue_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_sequence", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("final_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["duplicate_of_id"],
            ["client_instructions.id"],
            name=op.f("fk_client_instructions_duplicate_of_id_client_instructions"),
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_client_instructions_submission_id_submissions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_instructions")),
    )
    op.create_index(
        "ix_client_instructions_account_created",
        "client_instructions",
        ["account_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_client_instructions_client_instruction_id_id",
        "client_instructions",
        ["client_instruction_id", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_client_instructions_correlation_id"),
        "client_instructions",
        ["correlation_id"],
        unique=False,
    )
    op.create_index(
        "ix_client_instructions_due",
        "client_instructions",
        ["next_poll_at"],
        unique=False,
        sqlite_where=sa.text("next_poll_at IS NOT NULL"),
        postgresql_where=sa.text("next_poll_at IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_client_instructions_instruction_id"),
        "client_instructions",
        ["instruction_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_client_instructions_instruction_set_id"),
        "client_instructions",
        ["instruction_set_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_client_instructions_message_id"),
        "client_instructions",
        ["message_id"],
        unique=False,
    )
    op.create_index(
        "ix_client_instructions_status_created",
        "client_instructions",
        ["status", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_client_instructions_submission_id"),
        "client_instructions",
        ["submission_id"],
        unique=False,
    )
    op.create_index(
        "uq_client_instructions_owner",
        "client_instructions",
        ["client_instruction_id"],
        unique=True,
        sqlite_where=sa.text("duplicate_of_id IS NULL"),
        postgresql_where=sa.text("duplicate_of_id IS NULL"),
    )
    op.create_table(
        "instruction_sets",
        sa.Column("instruction_set_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "submission_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("member_count", sa.Integer(), nullable=False),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_instruction_sets_submission_id_submissions"),
        ),
        sa.PrimaryKeyConstraint("instruction_set_id", name=op.f("pk_instruction_sets")),
    )
    op.create_index(
        op.f("ix_instruction_sets_submission_id"),
        "instruction_sets",
        ["submission_id"],
        unique=False,
    )
    op.create_table(
        "instructions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("instruction_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "client_instruction_pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("instruction_set_id", sa.BigInteger(), nullable=True),
        sa.Column("instruction_type", sa.String(length=64), nullable=True),
        sa.Column("ibkr_status", sa.String(length=32), nullable=True),
        sa.Column("ib_reference_id", sa.BigInteger(), nullable=True),
        sa.Column("processed_at", sa.String(length=64), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_instruction_pk"],
            ["client_instructions.id"],
            name=op.f("fk_instructions_client_instruction_pk_client_instructions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instructions")),
        sa.UniqueConstraint("instruction_id", name=op.f("uq_instructions_instruction_id")),
    )
    op.create_index(
        op.f("ix_instructions_client_instruction_pk"),
        "instructions",
        ["client_instruction_pk"],
        unique=False,
    )
    op.create_index(
        op.f("ix_instructions_instruction_set_id"),
        "instructions",
        ["instruction_set_id"],
        unique=False,
    )

    if _is_postgresql():
        op.execute(f"CREATE SEQUENCE {CLIENT_INSTRUCTION_ID_SEQUENCE} START WITH 1 INCREMENT BY 1")
        op.execute(REFUSE_AUDIT_CHANGE_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_events_refuse_update_delete"
            " BEFORE UPDATE OR DELETE ON audit_events"
            " FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_refuse_truncate"
            " BEFORE TRUNCATE ON audit_events"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change()"
        )


def downgrade() -> None:
    """Drop everything `upgrade` created, dependants first."""
    if _is_postgresql():
        op.execute("DROP TRIGGER IF EXISTS audit_events_refuse_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_refuse_update_delete ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_refuse_change()")
        op.execute(f"DROP SEQUENCE IF EXISTS {CLIENT_INSTRUCTION_ID_SEQUENCE}")
    op.drop_index(op.f("ix_instructions_instruction_set_id"), table_name="instructions")
    op.drop_index(op.f("ix_instructions_client_instruction_pk"), table_name="instructions")
    op.drop_table("instructions")
    op.drop_index(op.f("ix_instruction_sets_submission_id"), table_name="instruction_sets")
    op.drop_table("instruction_sets")
    op.drop_index(
        "uq_client_instructions_owner",
        table_name="client_instructions",
        sqlite_where=sa.text("duplicate_of_id IS NULL"),
        postgresql_where=sa.text("duplicate_of_id IS NULL"),
    )
    op.drop_index(op.f("ix_client_instructions_submission_id"), table_name="client_instructions")
    op.drop_index("ix_client_instructions_status_created", table_name="client_instructions")
    op.drop_index(op.f("ix_client_instructions_message_id"), table_name="client_instructions")
    op.drop_index(
        op.f("ix_client_instructions_instruction_set_id"), table_name="client_instructions"
    )
    op.drop_index(op.f("ix_client_instructions_instruction_id"), table_name="client_instructions")
    op.drop_index(
        "ix_client_instructions_due",
        table_name="client_instructions",
        sqlite_where=sa.text("next_poll_at IS NOT NULL"),
        postgresql_where=sa.text("next_poll_at IS NOT NULL"),
    )
    op.drop_index(
        "ix_client_instructions_client_instruction_id_id", table_name="client_instructions"
    )
    op.drop_index(op.f("ix_client_instructions_correlation_id"), table_name="client_instructions")
    op.drop_index("ix_client_instructions_account_created", table_name="client_instructions")
    op.drop_table("client_instructions")
    op.drop_index(op.f("ix_submissions_message_id"), table_name="submissions")
    op.drop_table("submissions")
    op.drop_index("ix_rate_limit_slots_bucket_granted_at", table_name="rate_limit_slots")
    op.drop_table("rate_limit_slots")
    op.drop_index(
        "ix_outbox_unpublished",
        table_name="outbox",
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.drop_table("outbox")
    op.drop_table("id_counters")
    op.drop_index(op.f("ix_dead_letters_message_id"), table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_audit_events_instruction_set_id_id", table_name="audit_events")
    op.drop_index("ix_audit_events_instruction_id_id", table_name="audit_events")
    op.drop_index("ix_audit_events_correlation_id_id", table_name="audit_events")
    op.drop_index("ix_audit_events_client_instruction_id_id", table_name="audit_events")
    op.drop_index("ix_audit_events_account_id_id", table_name="audit_events")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_index("ix_audit_events_account_id_at", table_name="audit_events")
    op.drop_table("audit_events")
