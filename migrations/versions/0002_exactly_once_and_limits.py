"""Exactly-once against the worst IBKR, and rate limits whose cost does not grow with the limit.

- `submissions.sent_attempts`, `inflight_until`, `absent_since`: no attempt begins while an
  earlier one may still register at IBKR; a resend needs IBKR not to know the id twice after
  that time.
- `client_instructions.applied_twice_at`: when IBKR showed two transactions of ours.
- `inbound_messages`: a message id is received once (the idempotency key of a request without
  a clientInstructionId), with the fingerprint of its request.
- `rate_limit_buckets` + `rate_limit_grants` replace `rate_limit_slots`: a ring of each limit's
  latest grants instead of a row per grant read back on every reservation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The rate limiter's reservation on PostgreSQL, in one round trip (worker.ibkr.ratelimit holds
# the same rule in Python, and a test holds the two to the same grants). A batch of calls of one
# client: `p_buckets` the distinct ring names (in name order: every batch locks in that order,
# so two never deadlock), `p_limits`/`p_windows` theirs, `p_calls` for each call `p_width`
# 1-based indexes into `p_buckets` (0: none). Each call gets the earliest time >= p_now (NULL:
# the server's clock) that is not before the latest grant of its rings and at least each ring's
# window after the grant it replaces there (the limit-th latest); a call whose slot would come
# after `p_latest[i]` (NULL: no bound) is refused, nothing recorded, and its entry is that time
# negated. plpgsql is a trusted language: an ordinary database owner may create this function.
RATE_LIMIT_GRANT_FUNCTION = """
CREATE FUNCTION rate_limit_grant(
    p_buckets text[], p_limits int[], p_windows float8[], p_calls int[], p_width int,
    p_now float8, p_latest float8[]
) RETURNS float8[]
LANGUAGE plpgsql AS $$
DECLARE
    n_buckets int := array_length(p_buckets, 1);
    n_calls int := array_length(p_calls, 1) / p_width;
    v_granted bigint[];
    v_last float8[];
    grants float8[] := '{}';
    t float8;
    replaced float8;
    b int;
    found_count int;
BEGIN
    SELECT count(*) INTO found_count FROM rate_limit_buckets WHERE bucket = ANY(p_buckets);
    IF found_count < n_buckets THEN
        INSERT INTO rate_limit_buckets (bucket, granted, last_at)
        SELECT name, 0, 0 FROM unnest(p_buckets) AS name
        ON CONFLICT (bucket) DO NOTHING;
    END IF;
    SELECT array_agg(r.granted ORDER BY r.bucket), array_agg(r.last_at ORDER BY r.bucket)
    INTO v_granted, v_last
    FROM (SELECT bucket, granted, last_at FROM rate_limit_buckets
          WHERE bucket = ANY(p_buckets) ORDER BY bucket FOR UPDATE) AS r;
    IF p_now IS NULL THEN
        p_now := extract(epoch FROM clock_timestamp());
    END IF;
    FOR i IN 0 .. n_calls - 1 LOOP
        t := p_now;
        FOR j IN 1 .. p_width LOOP
            b := p_calls[i * p_width + j];
            CONTINUE WHEN b = 0;
            t := greatest(t, v_last[b]);
            SELECT g.granted_at INTO replaced FROM rate_limit_grants g
            WHERE g.bucket = p_buckets[b] AND g.position = (v_granted[b] % p_limits[b])::int;
            IF FOUND THEN
                t := greatest(t, replaced + p_windows[b]);
            END IF;
        END LOOP;
        IF p_latest[i + 1] IS NOT NULL AND t > p_latest[i + 1] THEN
            grants := grants || (-t);
            CONTINUE;
        END IF;
        FOR j IN 1 .. p_width LOOP
            b := p_calls[i * p_width + j];
            CONTINUE WHEN b = 0;
            INSERT INTO rate_limit_grants (bucket, position, granted_at)
            VALUES (p_buckets[b], (v_granted[b] % p_limits[b])::int, t)
            ON CONFLICT (bucket, position) DO UPDATE SET granted_at = EXCLUDED.granted_at;
            v_granted[b] := v_granted[b] + 1;
            v_last[b] := t;
        END LOOP;
        grants := grants || t;
    END LOOP;
    UPDATE rate_limit_buckets AS r SET granted = v.granted, last_at = v.last_at
    FROM unnest(p_buckets, v_granted, v_last) AS v(bucket, granted, last_at)
    WHERE r.bucket = v.bucket;
    RETURN grants;
END;
$$
"""


def upgrade() -> None:
    """Add the attempt and message columns and tables; swap the rate-limit ledger."""
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(
            sa.Column("sent_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("inflight_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("absent_since", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("submissions") as batch:
        batch.alter_column("sent_attempts", server_default=None)
    with op.batch_alter_table("client_instructions") as batch:
        batch.add_column(sa.Column("applied_twice_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "inbound_messages",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("submission_id", _ID, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_inbound_messages_submission_id_submissions"),
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_inbound_messages")),
    )
    # Messages received before fingerprints were kept: their ids still stand for their request
    # (an empty fingerprint matches any, as nothing else can be known of them).
    op.execute(
        "INSERT INTO inbound_messages (message_id, request_sha256, submission_id, received_at) "
        "SELECT message_id, '', MIN(id), MIN(created_at) FROM submissions "
        "WHERE message_id IS NOT NULL GROUP BY message_id"
    )
    op.create_table(
        "rate_limit_buckets",
        sa.Column("bucket", sa.String(length=256), nullable=False),
        sa.Column("granted", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name=op.f("pk_rate_limit_buckets")),
    )
    op.create_table(
        "rate_limit_grants",
        sa.Column("bucket", sa.String(length=256), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("granted_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "position", name=op.f("pk_rate_limit_grants")),
    )
    op.drop_index("ix_rate_limit_slots_bucket_granted_at", table_name="rate_limit_slots")
    op.drop_table("rate_limit_slots")
    if op.get_context().dialect.name == "postgresql":
        op.execute(RATE_LIMIT_GRANT_FUNCTION)


def downgrade() -> None:
    """Back to 0001 (the rate-limit ledger starts empty; message fingerprints are dropped)."""
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS "
            "rate_limit_grant(text[], int[], float8[], int[], int, float8, float8[])"
        )
    op.create_table(
        "rate_limit_slots",
        sa.Column("id", _ID, nullable=False),
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
    op.drop_table("rate_limit_grants")
    op.drop_table("rate_limit_buckets")
    op.drop_table("inbound_messages")
    with op.batch_alter_table("client_instructions") as batch:
        batch.drop_column("applied_twice_at")
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("absent_since")
        batch.drop_column("inflight_until")
        batch.drop_column("sent_attempts")
