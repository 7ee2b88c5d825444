"""Our own retries of an inbound message: counted where no producer can write them (the
database, by message id; this process's memory while the database is away), with backoff, and
a dead letter with the reason after the last failure.

Only two things may make handling a message fail, since bad input never raises (the edge and
the intake set it aside): a service away (the database or the broker: connection refused or
lost, a pool timeout, a deadlock) or a bug. They get different bounds:

- a service away: `SERVICE_AWAY_FAILURES` (12) tries, waiting 1, 2, 4, ... 60 s between them:
  about six minutes, longer than a PostgreSQL or RabbitMQ restart or failover takes (tens of
  seconds), short enough that a longer outage leaves dead letters an operator replays rather
  than every thread blocked for hours;
- anything else (a bug, a value the database refuses): `OTHER_FAILURES` (3) tries, set aside
  within about three seconds: it will fail the same way every time, and each try fails the
  group-commit batch it rides in.

A message delivered again after a handling that never finished (the process died, the
connection dropped: RabbitMQ's `redelivered`) counts as a failure first, so a message that
kills the process each time cannot come back forever.

The dead letter is written once the database answers: until then the message stays
unacknowledged, so nothing is lost while the database is away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import dramatiq.errors
import pika.exceptions

from worker.clock import Clock
from worker.inbound.arrival import Arrival
from worker.logging import get_logger
from worker.redaction import scrub_text
from worker.store import Store, deadletters
from worker.store.errors import DatabaseAway, DatabaseError, KeyTaken
from worker.store.rows import MessageFailure
from worker.tracking.deadletters import failure_key, record_dead_letter

log = get_logger(__name__)

SERVICE_AWAY_FAILURES = 12
OTHER_FAILURES = 3
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
MAX_REASON_CHARS = 500

_SERVICE_AWAY = (
    DatabaseAway,
    pika.exceptions.AMQPError,
    dramatiq.errors.BrokerConnectionError,
    OSError,
)


def is_service_away(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the database or the broker is unreachable."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, _SERVICE_AWAY):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def failures_allowed(error: BaseException) -> int:
    """How many failures like `error` a message gets before it is set aside."""
    return SERVICE_AWAY_FAILURES if is_service_away(error) else OTHER_FAILURES


def backoff_s(failures: int) -> float:
    """Seconds to wait after the `failures`-th failure: 1, 2, 4, ... capped at 60."""
    return float(min(FIRST_BACKOFF_S * 2 ** max(failures - 1, 0), MAX_BACKOFF_S))


def describe(error: BaseException) -> str:
    """`TypeName: message` (scrubbed, one line, at most 500 characters)."""
    text = " ".join(str(error).split())
    return scrub_text(f"{type(error).__name__}: {text}" if text else type(error).__name__)[
        :MAX_REASON_CHARS
    ]


class FailureCounts:
    """Failures of inbound messages by key (`deadletters.failure_key`): in the database, and in
    this process's memory for the failures that could not be written there."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._unwritten: dict[str, int] = {}
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str, reason: str, now: datetime) -> int:
        """Count one failure of `key`; returns its failures so far (written or not)."""
        with self._lock:
            pending = self._unwritten.pop(key, 0) + 1
        try:
            total = self._write(key, pending, reason, now)
        except DatabaseError:
            with self._lock:
                self._unwritten[key] = self._unwritten.get(key, 0) + pending
                total = self._known.get(key, 0) + self._unwritten[key]
            return total
        with self._lock:
            self._known[key] = total
            return total + self._unwritten.get(key, 0)

    def forget(self, key: str) -> None:
        """The message is done (handled, or set aside): drop what this process holds of it, and
        its row when this process wrote one."""
        with self._lock:
            written = self._known.pop(key, None)
            self._unwritten.pop(key, None)
        if written is None:
            return
        try:
            with self._store.transaction() as tx:
                deadletters.forget_failures(tx, [key])
        except DatabaseError:
            log.debug("could not delete a failure count; it stays", key=key)

    def _write(self, key: str, count: int, reason: str, now: datetime) -> int:
        for _ in range(2):  # a concurrent first insert of the same key: then it is an update
            try:
                with self._store.transaction() as tx:
                    row = deadletters.failure(tx, key)
                    if row is None:
                        deadletters.add_failure(
                            tx,
                            MessageFailure(
                                key=key,
                                failure_count=count,
                                last_reason=reason,
                                first_failed_at=now,
                                last_failed_at=now,
                            ),
                        )
                        return count
                    row.failure_count += count
                    row.last_reason = reason
                    row.last_failed_at = now
                    return row.failure_count
            except KeyTaken:
                continue
        raise DatabaseError(f"could not count a failure of {key}")


@dataclass
class Retrier:
    """Runs the handling of one message with our retries (see the module)."""

    store: Store
    clock: Clock
    counts: FailureCounts
    queue_name: str

    @classmethod
    def for_database(cls, store: Store, clock: Clock, queue_name: str) -> Retrier:
        return cls(store, clock, FailureCounts(store), queue_name)

    def run(
        self,
        arrival: Arrival | None,
        message_id: str,
        redelivered: bool,
        handle: Callable[[], None],
    ) -> None:
        """Handle a message: set it aside when the edge refused it; else call `handle` until it
        returns, counting failures, and set the message aside after the last one allowed.
        Returns only when the message is done (then it may be acknowledged)."""
        if arrival is not None and arrival.rejection is not None:
            self.set_aside(arrival, message_id, arrival.rejection)
            return
        key = failure_key(message_id, arrival.kept_bytes if arrival else b"")
        if redelivered:
            reason = "delivered again after a handling that did not finish"
            failures = self.counts.add(key, reason, self.clock.now())
            if failures >= SERVICE_AWAY_FAILURES:
                self.set_aside(arrival, message_id, f"{reason} ({failures} times)", key)
                return
        while True:
            try:
                handle()
            except Exception as error:  # every failure is counted and bounded
                reason = describe(error)
                failures = self.counts.add(key, reason, self.clock.now())
                allowed = failures_allowed(error)
                if failures >= allowed:
                    log.error(
                        "handling the message failed for the last time; setting it aside",
                        failures=failures,
                        exc_info=True,
                    )
                    self.set_aside(
                        arrival, message_id, f"failed {failures} times; last: {reason}", key
                    )
                    return
                delay_s = backoff_s(failures)
                log.warning(
                    "handling the message failed; trying again",
                    failures=failures,
                    allowed=allowed,
                    retry_in_s=delay_s,
                    exc_info=True,
                )
                self.clock.sleep(delay_s)
                continue
            self.counts.forget(key)
            return

    def set_aside(
        self, arrival: Arrival | None, message_id: str, reason: str, key: str | None = None
    ) -> None:
        """Record the dead letter, waiting (with backoff) until the database takes it."""
        body = arrival.kept_bytes if arrival is not None else b""
        received = arrival.size_bytes if arrival is not None else None
        attempt = 0
        while True:
            try:
                record_dead_letter(
                    self.store,
                    body=body,
                    reason=reason,
                    now=self.clock.now(),
                    message_id=message_id or None,
                    queue_name=self.queue_name,
                    received_bytes=received,
                )
                break
            except DatabaseError as error:
                attempt += 1
                delay_s = backoff_s(attempt)
                log.warning(
                    "cannot record a dead letter yet; the message stays unacknowledged",
                    error=describe(error),
                    retry_in_s=delay_s,
                )
                self.clock.sleep(delay_s)
        if key is not None:
            self.counts.forget(key)
