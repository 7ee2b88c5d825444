"""What IBKR's gateway does around the Funds & Banking backend: rate limits, scheduled downtime,
injected faults, request statistics, and IBKR's inconsistent response shapes ("quirks")."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from worker.ibkr.calendar import downtime_end
from worker.sandbox.clock import VirtualClock


class RateLimiter:
    """Sliding-window limits per client: N requests per endpoint in any second, M requests in
    any minute (reference §8.1). Refused requests are not counted, so a client that backs off
    gets through again."""

    def __init__(
        self,
        per_second_per_endpoint: int,
        per_minute: int,
        *,
        enabled: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second_per_endpoint = per_second_per_endpoint
        self.per_minute = per_minute
        self.enabled = enabled
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._endpoint_hits: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._client_hits: dict[str, deque[float]] = defaultdict(deque)

    def admit(self, client_id: str, endpoint: str) -> float | None:
        """Record the request and return None, or return the seconds to wait (not recorded)."""
        if not self.enabled:
            return None
        now = self._monotonic()
        with self._lock:
            per_endpoint = self._endpoint_hits[(client_id, endpoint)]
            while per_endpoint and per_endpoint[0] <= now - 1.0:
                per_endpoint.popleft()
            per_client = self._client_hits[client_id]
            while per_client and per_client[0] <= now - 60.0:
                per_client.popleft()
            waits = []
            if len(per_endpoint) >= self.per_second_per_endpoint:
                waits.append(per_endpoint[0] + 1.0 - now)
            if len(per_client) >= self.per_minute:
                waits.append(per_client[0] + 60.0 - now)
            if waits:
                return max(max(waits), 0.001)
            per_endpoint.append(now)
            per_client.append(now)
            return None


class Faults:
    """Injected failures, drawn from a seeded generator so a run can be repeated."""

    def __init__(
        self,
        seed: int,
        *,
        error_500_rate: float = 0.0,
        error_503_rate: float = 0.0,
        drop_response_rate: float = 0.0,
    ) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.rates: dict[str, float] = {}
        self.set(
            error_500_rate=error_500_rate,
            error_503_rate=error_503_rate,
            drop_response_rate=drop_response_rate,
        )

    def set(
        self,
        *,
        error_500_rate: float | None = None,
        error_503_rate: float | None = None,
        drop_response_rate: float | None = None,
    ) -> dict[str, float]:
        """Change the given rates (each 0..1); returns all rates now in force."""
        given = {
            "error_500_rate": error_500_rate,
            "error_503_rate": error_503_rate,
            "drop_response_rate": drop_response_rate,
        }
        with self._lock:
            for name, rate in given.items():
                if rate is None:
                    self.rates.setdefault(name, 0.0)
                    continue
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1, got {rate}")
                self.rates[name] = float(rate)
            return dict(self.rates)

    def roll(self, name: str) -> bool:
        """True with the probability `name` is set to."""
        with self._lock:
            rate = self.rates.get(name, 0.0)
            return rate > 0 and self._random.random() < rate


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


class Stats:
    """Requests per endpoint (count, statuses, per-second counts), statuses overall, 429s."""

    def __init__(self, *, keep_recent: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._count: Counter[str] = Counter()
        self._statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self._per_second: dict[str, Counter[int]] = defaultdict(Counter)
        self._client_per_second: dict[str, Counter[int]] = defaultdict(Counter)
        self._recent: deque[tuple[float, str, int, str]] = deque(maxlen=keep_recent)

    def record(self, endpoint: str, status: int, client_id: str, at: float) -> None:
        """Count one answered request (status 0: the response was deliberately lost)."""
        second = int(at)
        with self._lock:
            self._count[endpoint] += 1
            self._statuses[endpoint][status] += 1
            self._per_second[endpoint][second] += 1
            if client_id:
                self._client_per_second[client_id][second] += 1
            self._recent.append((at, endpoint, status, client_id))

    def snapshot(self, *, include_requests: bool = False) -> dict[str, Any]:
        """A JSON-ready copy. `perSecond` maps real POSIX seconds to request counts;
        `maxPerSecond` and `maxPerMinute` are the busiest one-second bucket per endpoint and
        the busiest sliding sixty seconds per client."""
        with self._lock:
            endpoints = {
                endpoint: {
                    "count": count,
                    "statuses": {str(k): v for k, v in sorted(self._statuses[endpoint].items())},
                    "perSecond": {str(k): v for k, v in sorted(self._per_second[endpoint].items())},
                    "maxPerSecond": max(self._per_second[endpoint].values(), default=0),
                }
                for endpoint, count in sorted(self._count.items())
            }
            statuses: Counter[int] = Counter()
            for per_endpoint in self._statuses.values():
                statuses.update(per_endpoint)
            clients = {
                client: {"maxPerMinute": _max_sliding(buckets, 60)}
                for client, buckets in self._client_per_second.items()
            }
            body: dict[str, Any] = {
                "total": sum(self._count.values()),
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "throttled": statuses.get(429, 0),
                "endpoints": endpoints,
                "clients": clients,
            }
            if include_requests:
                body["requests"] = [
                    {"at": at, "endpoint": endpoint, "status": status, "clientId": client}
                    for at, endpoint, status, client in self._recent
                ]
            return body


def _max_sliding(buckets: Counter[int], width: int) -> int:
    seconds = sorted(buckets)
    best = total = 0
    start = 0
    for second in seconds:
        total += buckets[second]
        while seconds[start] <= second - width:
            total -= buckets[seconds[start]]
            start += 1
        best = max(best, total)
    return best


def retry_after_header(seconds: float) -> str:
    """Whole seconds for a Retry-After header (at least 1)."""
    return str(max(1, math.ceil(seconds)))


# --- quirks ---------------------------------------------------------------------------------


def quirk_result(result: dict[str, Any]) -> dict[str, Any]:
    """IBKR's older result shape: `status` instead of `instructionStatus`, flat `code` and
    `description` instead of `error`, clientInstructionId as a numeric string."""
    out = dict(result)
    if "instructionStatus" in out:
        out["status"] = out.pop("instructionStatus")
    error = out.pop("error", None)
    if isinstance(error, dict):
        out["code"] = error.get("errorCode")
        out["description"] = error.get("errorMessage")
    if "clientInstructionId" in out:
        out["clientInstructionId"] = str(out["clientInstructionId"])
    return out


def quirk_body(body: Any) -> Any:
    """Apply the quirks to an envelope, a problem carrying a result, or a bulk/set body."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    if isinstance(out.get("instructionResult"), dict):
        out["instructionResult"] = quirk_result(out["instructionResult"])
        if out.get("status") in (403, 422) and "instructionSetId" in out:
            out["instructionSetId"] = str(out["instructionSetId"])
    if isinstance(out.get("instructionResults"), list):
        out["instructionResults"] = [quirk_body(item) for item in out["instructionResults"]]
    return out
