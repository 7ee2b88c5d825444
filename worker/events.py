"""Outbound events as they go on the wire, and the publishers that send them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

EVENTS_EXCHANGE = "ibkr.instruction.events"


@dataclass(frozen=True)
class OutgoingEvent:
    """One event as it goes on the wire."""

    event_id: str
    routing_key: str
    body: bytes
    sequence: int


class EventPublisher(Protocol):
    """Publishes events; returns only when every one was confirmed, raises otherwise."""

    def publish(self, events: Sequence[OutgoingEvent]) -> None: ...

    def close(self) -> None: ...


class MemoryPublisher:
    """Keeps published events in memory (the demo and unit tests); `on_publish` sees each."""

    def __init__(self, on_publish: Callable[[OutgoingEvent], None] | None = None) -> None:
        self.events: list[OutgoingEvent] = []
        self._lock = threading.Lock()
        self._on_publish = on_publish

    def publish(self, events: Sequence[OutgoingEvent]) -> None:
        with self._lock:
            self.events.extend(events)
        if self._on_publish is not None:
            for event in events:
                self._on_publish(event)

    def close(self) -> None:
        return None
