"""The outbox: events committed with the changes they announce, waiting to be published.

The relay takes its turn (on PostgreSQL one relay at a time holds an advisory lock, so several
schedulers never publish an instruction's events out of order), reads the oldest waiting
events and marks them published in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from models.tables import OutboxEvent
from worker.store.database import Tx, table

_OUTBOX = table(OutboxEvent)
_O = _OUTBOX.c
_RELAY_LOCK_KEY = 0x1BC8_0E7E  # pg advisory lock: one publishing relay at a time


@dataclass(frozen=True)
class Waiting:
    """An event not yet published."""

    id: int
    event_id: str
    routing_key: str
    body_json: str
    sequence: int


def take_relay_turn(tx: Tx) -> bool:
    """Whether this transaction may publish (on PostgreSQL: no other relay holds the turn)."""
    if not tx.postgresql:
        return True
    return bool(tx.execute(select(func.pg_try_advisory_xact_lock(_RELAY_LOCK_KEY))).scalar_one())


def waiting(tx: Tx, limit: int) -> list[Waiting]:
    """Up to `limit` unpublished events, oldest first."""
    rows = tx.execute(
        select(_O.id, _O.event_id, _O.routing_key, _O.body_json, _O.sequence)
        .where(_O.published_at.is_(None))
        .order_by(_O.id)
        .limit(limit)
    ).all()
    return [Waiting(*row) for row in rows]


def mark_published(tx: Tx, ids: Sequence[int], now: datetime) -> None:
    """Mark these events published at `now`."""
    tx.execute(
        update(_OUTBOX)
        .where(tx.one_of(_O.id, ids))
        .values(published_at=now, publish_attempts=_O.publish_attempts + 1)
    )


def count(tx: Tx) -> int:
    """How many events the outbox holds, published or not."""
    return int(tx.execute(select(func.count()).select_from(_OUTBOX)).scalar_one())


def oldest_unpublished_at(tx: Tx) -> datetime | None:
    """When the oldest event still waiting to be published was committed (None: no backlog)."""
    found: datetime | None = tx.execute(
        select(_O.created_at).where(_O.published_at.is_(None)).order_by(_O.id).limit(1)
    ).scalar_one_or_none()
    return found
