"""Client-side limits held in any sliding window, as IBKR counts them (reference §8.1).

IBKR allows 10 requests per second per endpoint and 600 per minute per client. A token bucket
would let a burst on top of its refill exceed those in some window. Here every limit keeps a
ring of its latest `limit` grants: a new grant goes at the earliest time `t >= now` that is at
least `window_s` after the grant it replaces (the limit-th latest) in every ring it joins, and
not before the latest grant of any of them. Grants of one client are therefore in time order,
and then "no window of `window_s` holds more than `limit` grants" is exactly "each grant is at
least `window_s` after the limit-th one before it". A reservation reads and writes one ring
position per limit, so its cost does not depend on the limits.

`window_s` is IBKR's window plus a margin: a request leaves at its slot's time, at most
`tolerance_s` (half the margin) late, and the other half covers the network and whatever
delays the arrival at IBKR; a request that cannot leave in time takes a new slot
(`worker.ibkr.client`). Slot times are seconds since the epoch on the clock every process
shares (the database's: `worker.clock.DatabaseClock`).

`worker.store.ratelimit.SqlLedger` shares the rings between processes and hosts through the
database; :class:`SlotReserver` batches the reservations of a process's threads into one
transaction.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.clock import Clock

ENDPOINT_WINDOW_S = 1.0
CLIENT_WINDOW_S = 60.0


@dataclass(frozen=True)
class WindowLimit:
    """At most `limit` grants of `bucket` in any window of `window_s` seconds."""

    bucket: str
    limit: int
    window_s: float


@dataclass
class BucketState:
    """What a reservation needs of one ring: how many grants it holds so far, the latest one,
    and the ring positions the reservation will overwrite (position -> grant time)."""

    granted: int = 0
    last_at: float = 0.0
    ring: dict[int, float] = field(default_factory=dict)


def positions_needed(limit: int, granted: int, count: int) -> list[int]:
    """The ring positions the next `count` grants of a bucket overwrite (at most `limit`:
    beyond that, a batch's later grants replace its own earlier ones)."""
    return [(granted + i) % limit for i in range(min(count, limit))]


def grant_batch(
    now: float,
    batch: Sequence[Sequence[WindowLimit]],
    states: dict[str, BucketState],
    latest: Sequence[float | None] | None = None,
) -> list[float]:
    """Grant one slot per entry of `batch` (each the limits its call must fit), in order, and
    update `states` (pure: no I/O). `states` holds every bucket of the batch with the ring
    positions `positions_needed` names; a position without an entry holds no grant yet.

    `latest[i]`: the last time call i can use its slot (None: any). A call whose earliest slot
    comes later is refused: nothing is recorded for it (a slot nobody will use would hold back
    every later call), and its entry is the earliest time, negated (`refused`, `earliest`)."""
    grants: list[float] = []
    for index, limits in enumerate(batch):
        t = now
        for limit in limits:
            state = states[limit.bucket]
            t = max(t, state.last_at)
            replaced = state.ring.get(state.granted % limit.limit)
            if replaced is not None:
                t = max(t, replaced + limit.window_s)
        last = latest[index] if latest is not None else None
        if last is not None and t > last:
            grants.append(-t)
            continue
        for limit in limits:
            state = states[limit.bucket]
            state.ring[state.granted % limit.limit] = t
            state.granted += 1
            state.last_at = t
        grants.append(t)
    return grants


def refused(grant: float) -> bool:
    """Whether a ledger's entry is a refusal (see `grant_batch`): slot times are positive."""
    return grant < 0


def earliest(grant: float) -> float:
    """The slot time of a grant, or the earliest slot a refused call could have had."""
    return -grant if grant < 0 else grant


#: The time no grant may precede: a value, or a function read as late as possible (once the
#: ledger holds its locks), so that a grant of "now" is as close to the call's departure as the
#: ledger can make it.
Now = float | Callable[[], float]


def read_now(now: Now) -> float:
    """The time `now` stands for (calling it when it is a function)."""
    return now() if callable(now) else now


class SlotLedger(Protocol):
    """Where the rings live; `reserve_batch` must be atomic across all its users."""

    def reserve_batch(
        self,
        batch: Sequence[Sequence[WindowLimit]],
        now: Now,
        latest: Sequence[float | None] | None = None,
    ) -> list[float]:
        """Grant one slot per entry of `batch` (all of one client), in order; refusals as in
        `grant_batch`."""


class MemoryLedger:
    """Rings for one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, BucketState] = {}
        self.reservations = 0

    def reserve_batch(
        self,
        batch: Sequence[Sequence[WindowLimit]],
        now: Now,
        latest: Sequence[float | None] | None = None,
    ) -> list[float]:
        with self._lock:
            for limits in batch:
                for limit in limits:
                    self._states.setdefault(limit.bucket, BucketState())
            grants = grant_batch(read_now(now), batch, self._states, latest)
            self.reservations += len(batch)
            return grants


def endpoint_bucket(client_id: str, endpoint_key: str, limit: int, window_s: float) -> str:
    """`endpoint:<client>:<METHOD> <path template>:<limit>/<window>s`."""
    return f"endpoint:{client_id}:{endpoint_key}:{limit}/{window_s:g}s"


def client_bucket(client_id: str, limit: int, window_s: float) -> str:
    """`client:<client>:<limit>/<window>s`."""
    return f"client:{client_id}:{limit}/{window_s:g}s"


class _Pending:
    """One reservation handed to the reserver thread; the caller waits on `_latch`."""

    __slots__ = ("_latch", "error", "latest", "limits", "result")

    def __init__(self, limits: Sequence[WindowLimit], latest: float | None) -> None:
        self.limits = limits
        self.latest = latest
        self.result: float | None = None
        self.error: BaseException | None = None
        self._latch = threading.Lock()
        self._latch.acquire()

    def wait(self) -> float:
        self._latch.acquire()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def done(self) -> None:
        self._latch.release()


class SlotReserver:
    """Batches the reservations of a process's threads: one thread takes every reservation
    waiting at that moment and makes them, per client, in one ledger transaction. Nothing waits
    for a batch to fill. `now` (the shared clock) is read once the ledger holds its locks."""

    def __init__(self, ledger: SlotLedger, now: Callable[[], float]) -> None:
        self._ledger = ledger
        self._now = now
        self._queue: queue.SimpleQueue[tuple[str, _Pending] | None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.batches = 0

    def reserve(
        self, lock_key: str, limits: Sequence[WindowLimit], latest: float | None = None
    ) -> float:
        """The slot time granted for one call that must fit `limits` (`lock_key`: the client),
        or a refusal (`refused`) when no slot comes by `latest`."""
        if self._stopped:
            raise RuntimeError("the rate limiter is stopped; no more slots are granted")
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="rate-limit-reserver", daemon=True
                    )
                    self._thread.start()
        pending = _Pending(limits, latest)
        self._queue.put((lock_key, pending))
        return pending.wait()

    def stop(self) -> None:
        self._stopped = True
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            taken: list[tuple[str, _Pending]] = []
            stop = first is None
            if first is not None:
                taken.append(first)
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    taken.append(more)
            self._reserve(taken)
            if stop:
                return

    def _reserve(self, taken: list[tuple[str, _Pending]]) -> None:
        by_key: dict[str, list[_Pending]] = defaultdict(list)
        for key, pending in taken:
            by_key[key].append(pending)
        for group in by_key.values():
            try:
                grants = self._ledger.reserve_batch(
                    [pending.limits for pending in group],
                    self._now,
                    [pending.latest for pending in group],
                )
            except Exception as error:  # noqa: BLE001 - handed to every caller of the batch
                for pending in group:
                    pending.error = error
                    pending.done()
                continue
            self.batches += 1
            for pending, grant in zip(group, grants, strict=True):
                pending.result = grant
                pending.done()


@dataclass(frozen=True)
class Slot:
    """A reservation: `at` is the slot's time (epoch seconds, shared clock); when `granted` is
    False no slot was taken and `at` is the earliest one there would have been."""

    at: float
    granted: bool


class RateLimiter:
    """Grants call slots: at most `per_endpoint` calls per second per endpoint and
    `per_minute` calls per minute per client, in any window widened by `margin_s` seconds
    (0 lifts a limit). Slots are epoch seconds on `clock` (the shared clock)."""

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
        self._reserver = SlotReserver(ledger, lambda: self._clock.now().timestamp())

    @property
    def enabled(self) -> bool:
        return self.per_endpoint > 0 or self.per_minute > 0

    @property
    def tolerance_s(self) -> float:
        """How late after its slot a call may still leave (half the margin)."""
        return self.margin_s / 2

    def limits(self, client_id: str, endpoint_key: str) -> list[WindowLimit]:
        """The windows a call of `client_id` to `endpoint_key` must fit (limits of 0 left out)."""
        limits = []
        if self.per_endpoint > 0:
            window = ENDPOINT_WINDOW_S + self.margin_s
            limits.append(
                WindowLimit(
                    endpoint_bucket(client_id, endpoint_key, self.per_endpoint, window),
                    self.per_endpoint,
                    window,
                )
            )
        if self.per_minute > 0:
            window = CLIENT_WINDOW_S + self.margin_s
            limits.append(
                WindowLimit(
                    client_bucket(client_id, self.per_minute, window), self.per_minute, window
                )
            )
        return limits

    def reserve(self, client_id: str, endpoint_key: str, latest: float | None = None) -> Slot:
        """Reserve the earliest slot for one call (not waiting for it). `latest`: the last time
        (shared clock, epoch seconds) the call can use; a later slot is not taken at all (a slot
        nobody uses would hold back every later call) and comes back with `granted` False."""
        limits = self.limits(client_id, endpoint_key)
        if not limits:
            return Slot(self._clock.now().timestamp(), True)
        grant = self._reserver.reserve(client_id, limits, latest)
        return Slot(earliest(grant), not refused(grant))

    def wait_until(self, slot: float) -> None:
        """Sleep until the slot's time (on the shared clock)."""
        delay_s = slot - self._clock.now().timestamp()
        if delay_s > 0:
            if self._on_wait is not None:
                self._on_wait(delay_s)
            self._clock.sleep(delay_s)

    def late_s(self, slot: float) -> float:
        """How late a call leaving now would be for `slot` (negative: early)."""
        return self._clock.now().timestamp() - slot

    def close(self) -> None:
        self._reserver.stop()
