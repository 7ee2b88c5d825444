"""The scheduler process: claim due rows and poll them, relay the outbox, drain dead letters.

No decisions of its own: it calls `tracking.poll`, `tracking.outbox` and records dead letters.
Three loops, each in its own thread, so a slow poll never holds back the events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from worker.broker import DEAD_LETTER_QUEUE, DeadLetterDrain
from worker.events import EventPublisher
from worker.logging import get_logger
from worker.tracking.context import TrackingContext
from worker.tracking.deadletters import record_dead_letter
from worker.tracking.outbox import relay_once
from worker.tracking.poll import next_due_in_s, run_round

log = get_logger(__name__)


@dataclass
class Scheduler:
    """Runs until `stop()`; `poll_threads` calls to IBKR run side by side (the shared rate
    budget keeps them within IBKR's limits)."""

    ctx: TrackingContext
    publisher: EventPublisher
    drain: DeadLetterDrain | None = None
    batch: int = 100
    poll_threads: int = 8
    idle_poll_s: float = 1.0
    idle_relay_s: float = 0.05
    idle_drain_s: float = 2.0
    stopping: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for name, loop in (
            ("poll", self._poll_loop),
            ("relay", self._relay_loop),
            ("dead-letters", self._drain_loop),
        ):
            if name == "dead-letters" and self.drain is None:
                continue
            thread = threading.Thread(
                target=self._guard(name, loop), name=f"scheduler-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the current step of each loop, then return (leases of unfinished rows simply
        run out and are taken over)."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self.publisher.close()
        if self.drain is not None:
            self.drain.close()

    def _guard(self, name: str, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stopping.is_set():
                try:
                    loop()
                except Exception:
                    # Database or broker away (a restart): log, wait, go on by ourselves.
                    log.exception("scheduler loop failed; retrying", loop=name)
                    self.stopping.wait(2.0)

        return run

    def _poll_loop(self) -> None:
        with ThreadPoolExecutor(self.poll_threads, thread_name_prefix="poll") as pool:
            while not self.stopping.is_set():
                claimed = run_round(self.ctx, limit=self.batch, pool=pool)
                if claimed < self.batch:
                    self.stopping.wait(next_due_in_s(self.ctx, self.idle_poll_s))

    def _relay_loop(self) -> None:
        while not self.stopping.is_set():
            published = relay_once(self.ctx.store, self.publisher, self.ctx.clock)
            if published == 0:
                self.stopping.wait(self.idle_relay_s)

    def _drain_loop(self) -> None:
        assert self.drain is not None
        while not self.stopping.is_set():
            moved = self.drain.drain(self._record)
            if moved == 0:
                self.stopping.wait(self.idle_drain_s)

    def _record(
        self, body: bytes, message_id: str | None, reason: str, received_bytes: int | None
    ) -> None:
        record_dead_letter(
            self.ctx.store,
            body=body,
            reason=reason,
            now=self.ctx.clock.now(),
            message_id=message_id,
            queue_name=DEAD_LETTER_QUEUE,
            received_bytes=received_bytes,
        )
