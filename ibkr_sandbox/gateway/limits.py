"""IBKR's request limits as the sandbox enforces them (reference §8.1): sliding windows per
client and endpoint, judged by each request's receipt stamp."""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict

#: A nanosecond: float slack when comparing a stamp with a window's edge.
_SLACK_S = 1e-9


class _Stamps:
    """The sorted receipt stamps (real POSIX seconds) of one limiter key. Stamps are taken on
    receipt and admitted a little later (after requests read before them, or from callers of
    the in-process transport on other threads), so one may come in after a later one:
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


def retry_after_header(seconds: float) -> str:
    """Whole seconds for a Retry-After header (at least 1)."""
    return str(max(1, math.ceil(seconds)))
