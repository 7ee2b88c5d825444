"""IBKR's limits under a burst: 400 requests at once with the client-side limits at their
defaults (10 per second per endpoint, 600 per minute) never exceed them at the sandbox, in any
sliding window, and provoke no 429."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import pytest

from tests.builders import polled_every, transfers
from tests.integration.pipeline import Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

COUNT = 400
FIRST_ID = 4_700_000
PER_SECOND = 10
PER_MINUTE = 600


#: One in twenty answers 202 and is polled, so status reads share the budget too.
AMOUNT = polled_every(20, "150.00", "3.00")


def busiest(times: list[float], width_s: float) -> int:
    """The most requests in any window [t, t + width_s)."""
    times = sorted(times)
    best = start = 0
    for end, at in enumerate(times):
        while times[start] <= at - width_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def client_sends(pipeline: Pipeline) -> list[float]:
    """When the worker started each transfer POST (its log time less the call's latency): tells
    a failure of the client's limiter (sends too close) from delays on the way to the sandbox."""
    sends = []
    for name in ("worker", "scheduler"):
        for line in (pipeline.log_dir / f"{name}.log").read_text(errors="replace").splitlines():
            if '"ibkr api call"' not in line or "internal-cash-transfers" not in line:
                continue
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            sends.append(at - entry["latency_ms"] / 1000)
    return sends


def test_a_burst_of_400_stays_within_ibkr_limits_in_every_window_without_a_429(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # The sandbox enforces the same limits: a single excess request would be answered 429.
    pipeline = make_pipeline(
        speed=60.0,
        internal_cash_async_above=Decimal(100),
        max_requests_per_second_per_endpoint=PER_SECOND,
        max_requests_per_minute=PER_MINUTE,
    )
    # Eight worker threads and eight poll threads compete for the one shared budget.
    pipeline.start_worker(threads=8)
    pipeline.start_scheduler()
    cids = set(range(FIRST_ID, FIRST_ID + COUNT))
    pipeline.publish(transfers(sorted(cids), AMOUNT))

    # Looking seldom: the sandbox shares this process, and its clock is the one that counts.
    statuses = pipeline.wait_final(COUNT, timeout_s=110, poll_s=2.0)
    assert set(statuses) == cids and set(statuses.values()) == {"PROCESSED"}

    stats = pipeline.sandbox.stats(include_requests=True)
    assert stats["throttled"] == 0, (
        {e: v["statuses"] for e, v in stats["endpoints"].items()},
        f"busiest second of POSTs as the worker sent them: {busiest(client_sends(pipeline), 1.0)}",
    )
    by_endpoint: dict[str, list[float]] = defaultdict(list)
    for request in stats["requests"]:
        by_endpoint[request["endpoint"]].append(request["at"])
    posts = by_endpoint["POST /gw/api/v1/internal-cash-transfers"]
    assert len(posts) == COUNT
    for endpoint, times in by_endpoint.items():
        assert busiest(times, 1.0) <= PER_SECOND, endpoint
    everything = [request["at"] for request in stats["requests"] if request["clientId"]]
    assert busiest(everything, 60.0) <= PER_MINUTE
    # The burst was really held back, not merely small: it ran at the limit.
    assert busiest(posts, 1.0) == PER_SECOND
