"""IBKR's limits held as IBKR counts them, on a saturated machine: two processes burn both cores
beside two worker processes and a scheduler (started as the Procfile starts them, with the
limits at IBKR's 10 per second per endpoint and 600 per minute). The sandbox stamps every
request on receipt, token requests included; over more than a minute and more than 700
requests no endpoint sees 11 in any second, the client never 601 in any minute, and IBKR never
has to answer 429.

What keeps it: the shared rings (a limiter per process lets two workers send twice the rate) and
the margin each window is widened by (set IBKR_RATE_LIMIT_MARGIN_S to 0.002 in IBKR_LIMITS and
this fails: arrivals on a busy machine bunch)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.builders import polled_every, transfers
from tests.integration.pipeline import CLIENT_ID, Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

COUNT = 520
FIRST_ID = 9_500_000
IBKR_LIMITS = {
    "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT": "10",
    "IBKR_MAX_REQUESTS_PER_MINUTE": "600",
}


#: Half answer 202 and are polled: two endpoints compete for the client's minute.
AMOUNT = polled_every(2, "150.00", "5.00", remainder=1)


@pytest.fixture
def saturated_cpus() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes that keep both cores busy for as long as the test runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield burners
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def test_the_limits_hold_as_ibkr_counts_them_on_a_saturated_machine(
    make_pipeline: Callable[..., Pipeline], saturated_cpus: list[subprocess.Popen[bytes]]
) -> None:
    pipeline = make_pipeline(
        extra_env=IBKR_LIMITS,
        speed=60.0,
        internal_cash_async_above=Decimal(100),
        # The sandbox limits as IBKR does: it would answer 429 to the 11th in a second.
        max_requests_per_second_per_endpoint=10,
        max_requests_per_minute=600,
    )
    # As the Procfile starts them: no thread or pool flags.
    pipeline.start("worker-1", "worker")
    pipeline.start("worker-2", "worker")
    pipeline.start("scheduler", "scheduler")
    cids = set(range(FIRST_ID, FIRST_ID + COUNT))
    started = time.monotonic()
    pipeline.publish(transfers(sorted(cids), AMOUNT))
    statuses = pipeline.wait_final(COUNT, timeout_s=420, poll_s=2.0)
    elapsed_s = time.monotonic() - started
    assert all(burner.poll() is None for burner in saturated_cpus)  # busy all along

    assert set(statuses.values()) == {"PROCESSED"}
    assert pipeline.applied_twice_or_lost(cids) == {"applied_twice": {}, "lost": []}
    arrivals = pipeline.sandbox.stats()["arrivals"]
    assert arrivals["total"] >= 700 and elapsed_s > 60, (arrivals["total"], elapsed_s)
    per_endpoint = arrivals["maxPerEndpointPerSecond"][CLIENT_ID]
    assert any("token" in endpoint for endpoint in per_endpoint)  # token requests counted
    assert max(per_endpoint.values()) <= 10, per_endpoint
    assert arrivals["maxPerClientPerMinute"][CLIENT_ID] <= 600, arrivals
    assert pipeline.sandbox.stats()["throttled"] == 0
