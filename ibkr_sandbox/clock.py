"""The sandbox's virtual clock: real time scaled by a speed, plus manual jumps.

`now = start + elapsed_real * speed + manual_offset`. Speed 0 freezes time (tests move it with
`advance`); speed 60 makes one real second a virtual minute. Everything in the ledger (state
machines, throttles, token expiry, downtime) reads this clock; JWTs signed by clients are checked
against real time, because they carry the client's own clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class VirtualClock:
    """A fast-forwardable clock. Thread-safe; satisfies `worker.clock.Clock`."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        start: datetime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed < 0:
            raise ValueError(f"the sandbox clock speed must be >= 0, got {speed}")
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._start = (start or datetime.now(UTC)).astimezone(UTC)
        self._start_ts = self._start.timestamp()
        self._real_origin = monotonic()
        self._speed = speed
        # Virtual seconds accumulated before the last speed change, plus manual jumps.
        self._offset_s = 0.0

    @property
    def speed(self) -> float:
        """Virtual seconds per real second."""
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on (time already elapsed is kept)."""
        if speed < 0:
            raise ValueError(f"the sandbox clock speed must be >= 0, got {speed}")
        with self._lock:
            real_now = self._monotonic()
            self._offset_s += (real_now - self._real_origin) * self._speed
            self._real_origin = real_now
            self._speed = speed

    def timestamp(self) -> float:
        """Virtual now as POSIX seconds."""
        with self._lock:
            elapsed = (self._monotonic() - self._real_origin) * self._speed
            return self._start_ts + elapsed + self._offset_s

    def now(self) -> datetime:
        """Virtual now, timezone-aware UTC."""
        return datetime.fromtimestamp(self.timestamp(), UTC)

    def monotonic(self) -> float:
        """Virtual seconds since the sandbox started (never goes back)."""
        return self.timestamp() - self._start_ts

    def advance(self, seconds: float) -> None:
        """Jump virtual time forward by `seconds` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"the sandbox clock cannot go back ({seconds} s)")
        with self._lock:
            self._offset_s += seconds

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` of virtual time: real sleep at speed > 0, a jump when frozen."""
        if seconds <= 0:
            return
        if self._speed == 0:
            self.advance(seconds)
        else:
            time.sleep(seconds / self._speed)

    def real_seconds(self, virtual_seconds: float) -> float:
        """How many real seconds `virtual_seconds` take at the current speed (inf when frozen)."""
        if self._speed == 0:
            return float("inf")
        return virtual_seconds / self._speed

    @staticmethod
    def delta(seconds: float) -> timedelta:
        """`seconds` as a timedelta (a small convenience for callers)."""
        return timedelta(seconds=seconds)
