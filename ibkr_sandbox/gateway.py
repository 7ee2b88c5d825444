"""What IBKR's gateway does around the Funds & Banking backend: rate limits, scheduled downtime,
injected faults, request statistics, and IBKR's inconsistent response shapes ("quirks")."""

from __future__ import annotations

import bisect
import math
import random
import threading
from array import array
from collections import Counter, defaultdict, deque
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ibkr_sandbox.clock import VirtualClock
from worker.ibkr.calendar import downtime_end

#: A nanosecond: float slack when comparing a stamp with a window's edge.
_SLACK_S = 1e-9


class _Stamps:
    """The sorted receipt stamps (real POSIX seconds) of one limiter key. Stamps are taken on
    receipt in many threads and admitted a little later, so one may come in after a later one:
    insertion keeps the order, and the checks look at every window the new stamp falls in."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def count(self, low_exclusive: float, high_inclusive: float) -> int:
        """How many stamps lie in (low_exclusive, high_inclusive]."""
        times = self.times
        return bisect.bisect_right(times, high_inclusive) - bisect.bisect_right(
            times, low_exclusive
        )

    def wait_before(self, at: float, window_s: float, limit: int) -> float | None:
        """None when a request stamped `at` fits (no window of `window_s` containing it would
        hold more than `limit`), else the seconds until one would. A window holding `at` that
        holds most stamps is (b - window_s, b] for some stamp b >= at (the last stamp in it),
        so those are the only windows to check; normally there is none after `at`."""
        times = self.times
        ends = [at]
        later = bisect.bisect_left(times, at)
        ends.extend(times[later : bisect.bisect_left(times, at + window_s, lo=later)])
        wait: float | None = None
        for end in ends:
            # A nanosecond of slack: `end - window_s` may round just below a stamp exactly a
            # window before `end`, which is outside the half-open window.
            first = bisect.bisect_right(times, end - window_s + _SLACK_S)
            inside = bisect.bisect_right(times, end) - first
            if inside >= limit:
                # Admitted once the oldest (inside - limit + 1) stamps of this window leave it.
                leaves = times[first + inside - limit] + window_s - at
                wait = leaves if wait is None else max(wait, leaves)
        return wait

    def add(self, at: float, keep_after: float) -> None:
        """Insert `at`; drop stamps older than `keep_after` once enough have piled up."""
        times = self.times
        if not times or at >= times[-1]:
            times.append(at)
        else:
            bisect.insort(times, at)
        if times[0] < keep_after:
            stale = bisect.bisect_left(times, keep_after)
            if stale >= 256 or 2 * stale >= len(times):
                del times[:stale]


class RateLimiter:
    """Sliding-window limits per client: N requests per endpoint in any second, M requests in
    any minute (reference §8.1), judged by each request's receipt stamp (not by when it is
    processed), exactly, even when stamps are admitted out of order. Refused requests are not
    counted, so a client that backs off gets through again."""

    def __init__(
        self,
        per_second_per_endpoint: int,
        per_minute: int,
        *,
        enabled: bool = True,
    ) -> None:
        self.per_second_per_endpoint = per_second_per_endpoint
        self.per_minute = per_minute
        self.enabled = enabled
        self._lock = threading.Lock()
        self._endpoint_hits: dict[tuple[str, str], _Stamps] = defaultdict(_Stamps)
        self._client_hits: dict[str, _Stamps] = defaultdict(_Stamps)

    def admit(self, client_id: str, endpoint: str, at: float) -> float | None:
        """Admit the request received at `at` (real POSIX seconds) and return None, or return
        the seconds to wait (the request is then not counted)."""
        if not self.enabled:
            return None
        with self._lock:
            per_endpoint = self._endpoint_hits[(client_id, endpoint)]
            per_client = self._client_hits[client_id]
            waits = [
                wait
                for wait in (
                    per_endpoint.wait_before(at, 1.0, self.per_second_per_endpoint),
                    per_client.wait_before(at, 60.0, self.per_minute),
                )
                if wait is not None
            ]
            if waits:
                return max(max(waits), 0.001)
            # A stamp more than a window older than the newest cannot share a window with a
            # request received now; two windows of slack cover requests admitted late.
            per_endpoint.add(at, keep_after=at - 3.0)
            per_client.add(at, keep_after=at - 180.0)
            return None


#: Fault rates (shares 0..1 drawn per request) and the hold times (real seconds) they use.
FAULT_RATES = (
    "error_500_rate",
    "error_503_rate",
    "drop_response_rate",
    "inflight_rate",
    "answer_delay_rate",
)
FAULT_HOLDS = ("inflight_hold_s", "answer_delay_s")


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

    def set(
        self,
        *,
        error_500_rate: float | None = None,
        error_503_rate: float | None = None,
        drop_response_rate: float | None = None,
        inflight_rate: float | None = None,
        inflight_hold_s: float | None = None,
        answer_delay_rate: float | None = None,
        answer_delay_s: float | None = None,
    ) -> dict[str, float]:
        """Change the given rates (each 0..1) and hold times (real seconds, >= 0); returns
        every rate and hold time now in force."""
        given = {
            "error_500_rate": error_500_rate,
            "error_503_rate": error_503_rate,
            "drop_response_rate": drop_response_rate,
            "inflight_rate": inflight_rate,
            "inflight_hold_s": inflight_hold_s,
            "answer_delay_rate": answer_delay_rate,
            "answer_delay_s": answer_delay_s,
        }
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


class Stats:
    """Requests per endpoint (count, statuses, per-second counts), statuses overall, 429s, and
    how many funds POSTs were held in flight or had their answer delayed. Each request counts
    at its receipt stamp."""

    def __init__(self, *, keep_recent: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._count: Counter[str] = Counter()
        self._statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self._per_second: dict[str, Counter[int]] = defaultdict(Counter)
        self._client_per_second: dict[str, Counter[int]] = defaultdict(Counter)
        self._recent: deque[tuple[float, str, int, str]] = deque(maxlen=keep_recent)
        self._inflight_held = 0
        self._answers_delayed = 0

    def record(self, endpoint: str, status: int, client_id: str, at: float) -> None:
        """Count one answered request received at `at` (real POSIX seconds); status 0: the
        response was deliberately lost."""
        second = int(at)
        with self._lock:
            self._count[endpoint] += 1
            self._statuses[endpoint][status] += 1
            self._per_second[endpoint][second] += 1
            if client_id:
                self._client_per_second[client_id][second] += 1
            self._recent.append((at, endpoint, status, client_id))

    def held_in_flight(self) -> None:
        """Count one funds POST held before it registers."""
        with self._lock:
            self._inflight_held += 1

    def answer_delayed(self) -> None:
        """Count one funds POST registered whose answer is held back."""
        with self._lock:
            self._answers_delayed += 1

    def snapshot(self, *, include_requests: bool = False) -> dict[str, Any]:
        """A JSON-ready copy. `perSecond` maps real POSIX seconds to request counts;
        `maxPerSecond` and `maxPerMinute` are the busiest one-second bucket per endpoint and
        the busiest sliding sixty seconds (whole-second buckets) per authenticated client. A
        held POST counts once it registers; `inflightHeld` and `answersDelayed` count the
        POSTs those faults picked."""
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
                "inflightHeld": self._inflight_held,
                "answersDelayed": self._answers_delayed,
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


class Arrival(NamedTuple):
    """One request as IBKR counts it: stamped on receipt, before any processing."""

    #: Real POSIX seconds.
    at: float
    #: From the bearer token's claims (or, at the token endpoint, the client assertion's
    #: `iss`), read without checking them; "" when there is none.
    client_id: str
    #: METHOD and path template, as the request statistics name endpoints.
    endpoint: str


def max_in_window(stamps: list[float], window_s: float) -> int:
    """The most of `stamps` inside any half-open window [t, t + window_s): exact, over the
    sorted stamps with two pointers (a busiest window can be taken to start at a stamp)."""
    ordered = sorted(stamps)
    best = 0
    end = 0
    for start, first in enumerate(ordered):
        end = max(end, start)
        while end < len(ordered) and ordered[end] < first + window_s:
            end += 1
        best = max(best, end - start)
    return best


class Arrivals:
    """Every request's receipt stamp, attributed to its client and endpoint, so tests and
    benchmarks can check IBKR's limits as IBKR would count them: token calls, 401s, 429s,
    5xx, dropped and held requests included. Kept compactly (16 bytes an arrival); past `keep`
    arrivals the oldest quarter is let go (counted in `dropped`, no longer in the maxima)."""

    def __init__(self, *, keep: int = 4_000_000) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._stamps = array("d")
        self._clients = array("I")
        self._endpoints = array("I")
        self._names: list[str] = []
        self._name_ids: dict[str, int] = {}
        self._dropped = 0

    def _name_id(self, name: str) -> int:
        found = self._name_ids.get(name)
        if found is None:
            found = self._name_ids[name] = len(self._names)
            self._names.append(name)
        return found

    def record(self, at: float, client_id: str, endpoint: str) -> None:
        """Count one request received at `at` (real POSIX seconds)."""
        with self._lock:
            self._stamps.append(at)
            self._clients.append(self._name_id(client_id))
            self._endpoints.append(self._name_id(endpoint))
            if len(self._stamps) > self._keep:
                let_go = max(len(self._stamps) // 4, 1)
                del self._stamps[:let_go], self._clients[:let_go], self._endpoints[:let_go]
                self._dropped += let_go

    def list(self) -> list[Arrival]:
        """The kept arrivals, in the order they were recorded (stamps nearly sorted)."""
        with self._lock:
            names = self._names
            return [
                Arrival(at, names[client], names[endpoint])
                for at, client, endpoint in zip(
                    self._stamps, self._clients, self._endpoints, strict=True
                )
            ]

    def snapshot(self) -> dict[str, Any]:
        """`total`; `maxPerEndpointPerSecond` {client: {endpoint: n}}: the most arrivals of a
        client at one endpoint in any 1 s window; `maxPerClientPerMinute` {client: n}: the most
        arrivals of a client in any 60 s window (half-open windows, exact); `dropped`: arrivals
        no longer kept."""
        with self._lock:
            stamps = self._stamps.tolist()
            clients = self._clients.tolist()
            endpoints = self._endpoints.tolist()
            names = list(self._names)
            dropped = self._dropped
        per_endpoint: dict[tuple[int, int], list[float]] = defaultdict(list)
        per_client: dict[int, list[float]] = defaultdict(list)
        for at, client, endpoint in zip(stamps, clients, endpoints, strict=True):
            per_endpoint[(client, endpoint)].append(at)
            per_client[client].append(at)
        by_endpoint: dict[str, dict[str, int]] = {}
        for (client, endpoint), times in sorted(
            per_endpoint.items(), key=lambda item: (names[item[0][0]], names[item[0][1]])
        ):
            by_endpoint.setdefault(names[client], {})[names[endpoint]] = max_in_window(times, 1.0)
        return {
            "total": dropped + len(stamps),
            "dropped": dropped,
            "maxPerEndpointPerSecond": by_endpoint,
            "maxPerClientPerMinute": {
                names[client]: max_in_window(times, 60.0)
                for client, times in sorted(per_client.items(), key=lambda item: names[item[0]])
            },
        }


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
