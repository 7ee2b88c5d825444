"""Relay committed outbox rows to the event exchange: at least once, in order per instruction.

Rows are published oldest first and marked published in the same transaction that read them,
after the publisher confirmed every one; a crash in between publishes them again (consumers
drop duplicates by `eventId`). On PostgreSQL one relay at a time holds an advisory lock, so
several schedulers never publish an instruction's events out of order.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import OutboxEvent, is_postgresql
from models.db import one_of
from worker.clock import Clock
from worker.events import EventPublisher, OutgoingEvent

_RELAY_LOCK_KEY = 0x1BC8_0E7E  # pg advisory lock: one publishing relay at a time


def relay_once(
    session_factory: sessionmaker[Session],
    publisher: EventPublisher,
    clock: Clock,
    *,
    batch: int = 500,
) -> int:
    """Publish up to `batch` unpublished events; returns how many were published."""
    with session_factory.begin() as session:
        if (
            is_postgresql(session)
            and not session.execute(
                select(func.pg_try_advisory_xact_lock(_RELAY_LOCK_KEY))
            ).scalar_one()
        ):
            return 0
        rows = session.execute(
            select(
                OutboxEvent.id,
                OutboxEvent.event_id,
                OutboxEvent.routing_key,
                OutboxEvent.body_json,
                OutboxEvent.sequence,
            )
            .where(OutboxEvent.published_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(batch)
        ).all()
        if not rows:
            return 0
        events = [
            OutgoingEvent(
                event_id=row.event_id,
                routing_key=row.routing_key,
                body=row.body_json.encode("ascii"),
                sequence=row.sequence,
            )
            for row in rows
        ]
        # A failed publish raises: the transaction rolls back and the rows stay unpublished.
        publisher.publish(events)
        session.execute(
            update(OutboxEvent)
            .where(one_of(session, OutboxEvent.id, [row.id for row in rows]))
            .values(published_at=clock.now(), publish_attempts=OutboxEvent.publish_attempts + 1)
            .execution_options(synchronize_session=False)
        )
    return len(rows)


def oldest_unpublished_at(session: Session) -> datetime | None:
    """When the oldest event still waiting to be published was committed (None: no backlog)."""
    return session.execute(
        select(OutboxEvent.created_at)
        .where(OutboxEvent.published_at.is_(None))
        .order_by(OutboxEvent.id)
        .limit(1)
    ).scalar_one_or_none()
