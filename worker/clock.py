"""Clocks: anything that sleeps or reads the time takes one of these as a parameter."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC, on the clock shared by every process (the
        database's, in a running worker or scheduler)."""

    def wall_now(self) -> datetime:
        """This host's own wall-clock time: what IBKR compares the `iat` and `exp` of our
        signed bodies and assertions with (within IBKR_MAX_CLOCK_SKEW_S)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (for intervals and timeouts)."""

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a manual clock advances instead)."""


class SystemClock:
    """The real clock (the host's)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wall_now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock for tests: time moves only when told (sleep advances it at once)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def wall_now(self) -> datetime:
        return self.now()

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds


def utcnow() -> datetime:
    """Now, timezone-aware UTC (for edges that have no clock parameter, such as the CLI)."""
    return datetime.now(UTC)


class DatabaseClock:
    """The database's clock, read on this host without a round trip per call.

    Everything shared between processes and hosts (leases, claims, due times, rate-limit slots)
    is judged by one clock, the database's; a host whose own clock is off by minutes must
    still take and honour leases correctly. `now()` is the database time of the last anchor
    plus the host's monotonic time since then; a background thread anchors again every
    `refresh_s` seconds (the host's tick rate drifts by parts per million, so the estimate stays
    within a millisecond or two of the database). An anchor is the midpoint of the best of a
    few reads (`read_database_time`, which returns the database's current time), so its error
    is at most half that read's round trip; a read slower than `max_uncertainty_s` is retried.
    `monotonic()` and `sleep()` are the host's: durations never need the database.

    `wall` is the host's own wall clock, for what IBKR judges against its clock (`iat`, `exp`
    of signed bodies and assertions): see `wall_now`.
    """

    def __init__(
        self,
        read_database_time: Callable[[], datetime],
        *,
        refresh_s: float = 30.0,
        samples: int = 3,
        max_uncertainty_s: float = 0.005,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read_database_time
        self.refresh_s = refresh_s
        self._samples = max(1, samples)
        self._max_uncertainty_s = max_uncertainty_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._anchor_db: datetime
        self._anchor_mono: float
        self.uncertainty_s: float = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.anchor()

    def anchor(self) -> None:
        """Read the database's time now (a few reads; the tightest counts). Raises what the
        read raises when the database cannot be reached at all."""
        best: tuple[float, float, datetime] | None = None
        for _ in range(self._samples * 3):
            before = self._monotonic()
            value = self._read()
            after = self._monotonic()
            if best is None or after - before < best[1] - best[0]:
                best = (before, after, value)
            if best[1] - best[0] <= self._max_uncertainty_s:
                break
        assert best is not None
        before, after, value = best
        with self._lock:
            self._anchor_db = value
            self._anchor_mono = (before + after) / 2.0
            self.uncertainty_s = (after - before) / 2.0

    def start(self) -> DatabaseClock:
        """Anchor again every `refresh_s` seconds in a daemon thread (a failed read keeps the
        last anchor: the host's monotonic clock carries it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="database-clock", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with contextlib.suppress(Exception):  # the database away: keep the last anchor
                self.anchor()

    def now(self) -> datetime:
        with self._lock:
            anchor_db, anchor_mono = self._anchor_db, self._anchor_mono
        return anchor_db + timedelta(seconds=self._monotonic() - anchor_mono)

    def monotonic(self) -> float:
        return self._monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wall_now(self) -> datetime:
        """This host's own wall-clock time (what IBKR compares `iat` and `exp` with)."""
        return datetime.now(UTC)
