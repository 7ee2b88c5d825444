"""Failures the sandbox injects on purpose (500s, 503s, lost answers, POSTs held in flight,
answers held back) and IBKR's downtime windows."""

from __future__ import annotations

import math
import random
import threading
from datetime import UTC, datetime
from typing import TypedDict, Unpack

from ibkr_sandbox.clock import VirtualClock
from worker.ibkr.calendar import downtime_end

#: Fault rates (shares 0..1 drawn per request) and the hold times (real seconds) they use.
FAULT_RATES = (
    "error_500_rate",
    "error_503_rate",
    "drop_response_rate",
    "inflight_rate",
    "answer_delay_rate",
)
FAULT_HOLDS = ("inflight_hold_s", "answer_delay_s")


class FaultChanges(TypedDict, total=False):
    """The faults a caller may change at run time (each rate 0..1, each hold in real seconds);
    what is left out stays as it is. See `SandboxConfig` for what each fault does."""

    error_500_rate: float
    error_503_rate: float
    drop_response_rate: float
    inflight_rate: float
    inflight_hold_s: float
    answer_delay_rate: float
    answer_delay_s: float


class Faults:
    """Injected failures, drawn from a seeded generator so a run can be repeated. A rate of 0
    draws nothing, so switching a new fault on leaves the others' draws as they were."""

    def __init__(
        self,
        seed: int,
        *,
        error_500_rate: float = 0.0,
        error_503_rate: float = 0.0,
        drop_response_rate: float = 0.0,
        inflight_rate: float = 0.0,
        inflight_hold_s: float = 40.0,
        answer_delay_rate: float = 0.0,
        answer_delay_s: float = 40.0,
    ) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.rates: dict[str, float] = {}
        self.set(
            error_500_rate=error_500_rate,
            error_503_rate=error_503_rate,
            drop_response_rate=drop_response_rate,
            inflight_rate=inflight_rate,
            inflight_hold_s=inflight_hold_s,
            answer_delay_rate=answer_delay_rate,
            answer_delay_s=answer_delay_s,
        )

    def set(self, **changes: Unpack[FaultChanges]) -> dict[str, float]:
        """Change the given rates (each 0..1) and hold times (real seconds, >= 0); returns
        every rate and hold time now in force."""
        given: dict[str, float | None] = {name: None for name in FAULT_RATES + FAULT_HOLDS}
        for name, value in changes.items():
            if value is not None:  # None (a caller's "leave it") changes nothing
                given[name] = float(value)  # type: ignore[arg-type]  # a TypedDict's values
        for name, value in given.items():
            if value is None:
                continue
            if name in FAULT_RATES and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
            if name in FAULT_HOLDS and not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
        with self._lock:
            for name, value in given.items():
                if value is None:
                    self.rates.setdefault(name, 0.0)
                else:
                    self.rates[name] = float(value)
            return dict(self.rates)

    def roll(self, name: str) -> bool:
        """True with the probability `name` is set to."""
        with self._lock:
            rate = self.rates.get(name, 0.0)
            return rate > 0 and self._random.random() < rate

    def hold_s(self, name: str) -> float:
        """The hold time `name` is set to (real seconds)."""
        with self._lock:
            return self.rates.get(name, 0.0)


class Downtime:
    """Scheduled windows (America/New_York calendar, when switched on) plus windows opened on
    demand with `open_now`; times are virtual."""

    def __init__(self, clock: VirtualClock, *, calendar: bool) -> None:
        self._clock = clock
        self.calendar = calendar
        self._lock = threading.Lock()
        self._windows: list[tuple[float, float]] = []

    def open_now(self, seconds: float) -> float:
        """Start a downtime window now lasting `seconds` of virtual time; returns its end."""
        start = self._clock.timestamp()
        with self._lock:
            self._windows.append((start, start + seconds))
        return start + seconds

    def window_end(self, now: float | None = None) -> float | None:
        """Virtual POSIX end of the window containing `now`, or None when the API is up."""
        at = self._clock.timestamp() if now is None else now
        ends: list[float] = []
        with self._lock:
            self._windows = [(s, e) for s, e in self._windows if e > at]
            ends.extend(e for s, e in self._windows if s <= at)
        if self.calendar:
            scheduled = downtime_end(datetime.fromtimestamp(at, UTC))
            if scheduled is not None:
                ends.append(scheduled.timestamp())
        return max(ends) if ends else None
