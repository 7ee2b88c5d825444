"""Dead letters keep their original bytes apart from the view people see; failures of an
inbound message are counted where no producer can write them.

- `dead_letter_originals`: the bytes as received, read only by replay. Letters recorded before
  this revision get their stored body as original when it was not truncated (it was the text
  received, with invalid UTF-8 and NUL replaced: `body_replaced` cannot tell, so such a body
  is replayed as it was stored, as before).
- `dead_letters`: `body_masked`, `body_replaced`, `original_kept` and `body_sha256`.
- `message_failures`: the failure count of a message by message id (our retries).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.add_column(
            sa.Column("body_masked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("body_replaced", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("original_kept", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("body_sha256", sa.String(length=64), nullable=True))
    # The defaults only filled the existing rows; the application always writes these.
    with op.batch_alter_table("dead_letters") as batch:
        batch.alter_column("body_masked", server_default=None)
        batch.alter_column("body_replaced", server_default=None)
        batch.alter_column("original_kept", server_default=None)
    op.create_index(
        op.f("ix_dead_letters_body_sha256"), "dead_letters", ["body_sha256"], unique=False
    )
    op.create_table(
        "dead_letter_originals",
        sa.Column("dead_letter_id", _ID, nullable=False, autoincrement=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dead_letter_id"],
            ["dead_letters.id"],
            name=op.f("fk_dead_letter_originals_dead_letter_id_dead_letters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dead_letter_id", name=op.f("pk_dead_letter_originals")),
    )
    as_bytes = (
        "convert_to(body, 'UTF8')"
        if op.get_context().dialect.name == "postgresql"
        else "CAST(body AS BLOB)"
    )
    op.execute(
        "INSERT INTO dead_letter_originals (dead_letter_id, body) "
        f"SELECT id, {as_bytes} FROM dead_letters WHERE NOT truncated"
    )
    op.execute("UPDATE dead_letters SET original_kept = NOT truncated")
    op.create_table(
        "message_failures",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        sa.Column("last_reason", sa.Text(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_message_failures")),
    )


def downgrade() -> None:
    op.drop_table("message_failures")
    op.drop_table("dead_letter_originals")
    op.drop_index(op.f("ix_dead_letters_body_sha256"), table_name="dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("body_sha256")
        batch.drop_column("original_kept")
        batch.drop_column("body_replaced")
        batch.drop_column("body_masked")
