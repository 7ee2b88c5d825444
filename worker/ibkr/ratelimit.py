"""Client-side rate limits, held in any sliding window (reference §8.1).

IBKR allows 10 requests per second per endpoint and 600 per minute per client; a token bucket
would let a burst on top of its refill exceed those in some window, so instead a ledger records
the time of every granted call, and a new call gets the earliest time `t >= now` at which no
window of 1 s (+ margin) around `t` holds N slots for its endpoint and no window of 60 s
(+ margin) holds M slots for the client. The slot is recorded atomically, then the caller
sleeps until `t`. :class:`SqlLedger` shares the ledger between processes and hosts.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, delete, insert, select, text

from models.tables import RateLimitSlot
from worker.clock import Clock

ENDPOINT_WINDOW_S = 1.0
CLIENT_WINDOW_S = 60.0
# Rows older than this are never needed again (longest window plus slack).
_KEEP_S = CLIENT_WINDOW_S * 2
_PRUNE_EVERY = 200
# Float slack when comparing spans: `slot + window - slot` may round just below `window`.
_EPSILON_S = 1e-6


@dataclass(frozen=True)
class WindowLimit:
    """At most `limit` slots of `bucket` in any window of `window_s` seconds."""

    bucket: str
    limit: int
    window_s: float


def _fits(times: Sequence[float], limit: int, window_s: float, t: float) -> bool:
    """True when adding `t` to the sorted `times` leaves every window of `window_s` (a
    half-open span shorter than `window_s`) with at most `limit` slots."""
    if limit <= 0:
        return True
    index = bisect.bisect_left(times, t)
    # Any violating run is `limit` existing slots plus t, consecutive in sorted order.
    for start in range(max(0, index - limit), min(index, len(times) - limit) + 1):
        group = times[start : start + limit]
        if len(group) < limit:
            continue
        if max(group[-1], t) - min(group[0], t) < window_s - _EPSILON_S:
            return False
    return True


def earliest_slot(now: float, windows: Sequence[tuple[Sequence[float], WindowLimit]]) -> float:
    """The earliest time `t >= now` at which a slot fits every window (pure).

    `windows` pairs each limit with the sorted slot times already granted in its bucket. The
    answer is `now` or the moment some old slot leaves a window (`slot + window_s`): only at
    those times can a blocked position become free.
    """
    candidates = {now}
    for times, limit in windows:
        if limit.limit > 0:
            candidates.update(
                slot + limit.window_s for slot in times if slot + limit.window_s > now
            )
    for t in sorted(candidates):
        if all(_fits(times, limit.limit, limit.window_s, t) for times, limit in windows):
            return t
    raise AssertionError("unreachable: the latest candidate always fits")  # pragma: no cover


class SlotLedger(Protocol):
    """Where granted slots are recorded; `reserve` must be atomic across its users."""

    def reserve(self, lock_key: str, limits: Sequence[WindowLimit], now: float) -> float:
        """Record a slot at the earliest time that fits every limit and return it."""


class MemoryLedger:
    """A ledger for one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, list[float]] = {}
        self._reservations = 0

    def reserve(self, lock_key: str, limits: Sequence[WindowLimit], now: float) -> float:
        del lock_key  # one lock serves the whole process
        with self._lock:
            windows = []
            for limit in limits:
                times = self._slots.setdefault(limit.bucket, [])
                cutoff = bisect.bisect_left(times, now - _KEEP_S)
                if cutoff:
                    del times[:cutoff]
                windows.append((times, limit))
            t = earliest_slot(now, windows)
            for limit in limits:
                bisect.insort(self._slots[limit.bucket], t)
            self._reservations += 1
            return t

    def slots(self, bucket: str) -> list[float]:
        """The slot times recorded for `bucket` (a copy, for tests)."""
        with self._lock:
            return list(self._slots.get(bucket, []))


def _advisory_key(lock_key: str) -> int:
    # pg_advisory_xact_lock takes a signed 64-bit key; a stable hash of the client id.
    digest = hashlib.sha256(lock_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SqlLedger:
    """A ledger on the `rate_limit_slots` table, shared by every process using the database.

    PostgreSQL serialises reservations of one client with `pg_advisory_xact_lock`; SQLite
    engines from `models.db.make_engine` begin every transaction with `BEGIN IMMEDIATE`, which
    already serialises writers. Old rows of the client are pruned every few reservations.
    """

    def __init__(self, engine: Engine, *, prune_every: int = _PRUNE_EVERY) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._prune_every = max(1, prune_every)
        self._count = 0
        self._count_lock = threading.Lock()

    def reserve(self, lock_key: str, limits: Sequence[WindowLimit], now: float) -> float:
        buckets = [limit.bucket for limit in limits]
        longest = max((limit.window_s for limit in limits), default=0.0)
        with self._count_lock:
            self._count += 1
            prune = self._count % self._prune_every == 0
        with self._engine.begin() as connection:
            if self._postgres:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _advisory_key(lock_key)}
                )
            rows = connection.execute(
                select(RateLimitSlot.bucket, RateLimitSlot.granted_at)
                .where(RateLimitSlot.bucket.in_(buckets))
                .where(RateLimitSlot.granted_at > now - longest)
                .order_by(RateLimitSlot.granted_at)
            ).all()
            by_bucket: dict[str, list[float]] = {bucket: [] for bucket in buckets}
            for bucket, granted_at in rows:
                by_bucket[bucket].append(float(granted_at))
            t = earliest_slot(now, [(by_bucket[limit.bucket], limit) for limit in limits])
            connection.execute(
                insert(RateLimitSlot), [{"bucket": bucket, "granted_at": t} for bucket in buckets]
            )
            if prune:
                connection.execute(
                    delete(RateLimitSlot)
                    .where(RateLimitSlot.bucket.in_(buckets))
                    .where(RateLimitSlot.granted_at < now - _KEEP_S)
                )
        return t


def endpoint_bucket(client_id: str, endpoint_key: str) -> str:
    """`endpoint:<client>:<METHOD> <path template>`."""
    return f"endpoint:{client_id}:{endpoint_key}"


def client_bucket(client_id: str) -> str:
    """`client:<client>`."""
    return f"client:{client_id}"


# A thread that keeps waking up late gives up on a fresh slot after this many (and goes).
MAX_LATE_RESERVATIONS = 5


class RateLimiter:
    """Grants call slots: at most `per_endpoint` calls per second per endpoint and
    `per_minute` calls per minute per client in any sliding window widened by `margin_s`
    seconds (0 lifts a limit). `acquire` blocks (on `clock`) until the slot's time."""

    def __init__(
        self,
        ledger: SlotLedger,
        per_endpoint: int,
        per_minute: int,
        margin_s: float,
        clock: Clock,
        *,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.per_endpoint = per_endpoint
        self.per_minute = per_minute
        self.margin_s = margin_s
        self._clock = clock
        self._on_wait = on_wait

    def limits(self, client_id: str, endpoint_key: str) -> list[WindowLimit]:
        """The windows a call of `client_id` to `endpoint_key` must fit (limits of 0 left out)."""
        limits = []
        if self.per_endpoint > 0:
            limits.append(
                WindowLimit(
                    endpoint_bucket(client_id, endpoint_key),
                    self.per_endpoint,
                    ENDPOINT_WINDOW_S + self.margin_s,
                )
            )
        if self.per_minute > 0:
            limits.append(
                WindowLimit(
                    client_bucket(client_id), self.per_minute, CLIENT_WINDOW_S + self.margin_s
                )
            )
        return limits

    def acquire(self, client_id: str, endpoint_key: str) -> float:
        """Reserve the earliest slot for one call and wait until it comes.

        Returns the slot time in epoch seconds; `endpoint_key` is `METHOD /path/template`.
        """
        limits = self.limits(client_id, endpoint_key)
        now = self._clock.now().timestamp()
        if not limits:
            return now
        slot = self.ledger.reserve(client_id, limits, now)
        for _ in range(MAX_LATE_RESERVATIONS):
            delay_s = slot - self._clock.now().timestamp()
            if delay_s > 0:
                if self._on_wait is not None:
                    self._on_wait(delay_s)
                self._clock.sleep(delay_s)
            late_s = self._clock.now().timestamp() - slot
            if late_s <= self.late_tolerance_s:
                break
            # Woke up late (a busy host): sent now, this call could land in the next window
            # with that window's own calls. Take a fresh slot from now; the late one stays
            # recorded, which only over-counts.
            slot = self.ledger.reserve(client_id, limits, self._clock.now().timestamp())
        return slot

    @property
    def late_tolerance_s(self) -> float:
        """How late after its slot a call may still go out (half the margin)."""
        return self.margin_s / 2
