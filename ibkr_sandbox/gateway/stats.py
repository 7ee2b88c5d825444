"""What the sandbox counts: request statistics per endpoint and status, and every request's
arrival as IBKR would count it (stamped on receipt), with exact sliding-window maxima."""

from __future__ import annotations

import threading
from array import array
from collections import Counter, defaultdict, deque
from typing import Any, NamedTuple


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
