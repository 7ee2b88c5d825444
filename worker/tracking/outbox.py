"""Relay committed outbox rows to the event exchange: at least once, in order per instruction.

Rows are published oldest first and marked published in the same transaction that read them,
after the publisher confirmed every one; a crash in between publishes them again (consumers
drop duplicates by `eventId`). One relay at a time takes its turn (`store.events`), so several
schedulers never publish an instruction's events out of order.
"""

from __future__ import annotations

from worker.clock import Clock
from worker.events import EventPublisher, OutgoingEvent
from worker.store import Store, events


def relay_once(store: Store, publisher: EventPublisher, clock: Clock, *, batch: int = 500) -> int:
    """Publish up to `batch` unpublished events; returns how many were published."""
    with store.transaction() as tx:
        if not events.take_relay_turn(tx):
            return 0
        waiting = events.waiting(tx, batch)
        if not waiting:
            return 0
        # A failed publish raises: the transaction rolls back and the rows stay unpublished.
        publisher.publish(
            [
                OutgoingEvent(
                    event_id=event.event_id,
                    routing_key=event.routing_key,
                    body=event.body_json.encode("ascii"),
                    sequence=event.sequence,
                )
                for event in waiting
            ]
        )
        events.mark_published(tx, [event.id for event in waiting], clock.now())
    return len(waiting)
