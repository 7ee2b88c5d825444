"""Everything at once against the worst IBKR the reference allows: a re-POST of a used id
registers a second transaction, POSTs are held in flight past the HTTP timeout (GETs answer 404
meanwhile), answers are lost; two worker processes and two schedulers; a worker and a
scheduler killed with SIGKILL mid-run and started again; PostgreSQL stopped and started. Over
200+ transfers no money moves twice and nothing is lost, with no manual step."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from decimal import Decimal

import pytest

from tests.builders import polled_every, transfers
from tests.integration.faults import wait_all_final
from tests.integration.pipeline import WORST_IBKR, Pipeline
from tests.services import pg_ctlcluster, postgresql_answers

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.serial]

COUNT = 240
FIRST_ID = 8_800_000
LIMITS = {
    "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT": "30",
    "IBKR_MAX_REQUESTS_PER_MINUTE": "5000",
}


#: A third answer 202 and are polled to the end; the rest 201.
AMOUNT = polled_every(3, "250.00", "3.00")


def sent(pipeline: Pipeline) -> int:
    return sum(1 for status in pipeline.statuses().values() if status != "RECEIVED")


@pytest.mark.usefixtures("postgresql_back_up")
def test_the_worst_ibkr_with_kills_two_schedulers_and_a_database_restart_moves_money_once(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(
        extra_env=LIMITS,
        speed=60.0,
        **WORST_IBKR,
        drop_response_rate=0.05,
        internal_cash_async_above=Decimal(100),
        max_requests_per_second_per_endpoint=30,
        max_requests_per_minute=5000,
    )
    cids = set(range(FIRST_ID, FIRST_ID + COUNT))
    for name in ("worker-1", "worker-2"):
        pipeline.start_worker(name, threads=8)
    for name in ("scheduler-1", "scheduler-2"):
        pipeline.start_scheduler(name)
    pipeline.publish(transfers(sorted(cids), AMOUNT))

    pipeline.wait_for(lambda: sent(pipeline) >= 40, 90, "the run under way")
    pipeline.kill("worker-1", signal.SIGKILL)
    pipeline.kill("scheduler-1", signal.SIGKILL)
    at_kill = sent(pipeline)
    pipeline.restart("worker-1")
    pipeline.restart("scheduler-1")

    pipeline.wait_for(lambda: sent(pipeline) >= min(at_kill + 40, COUNT), 120, "more sent")
    pg_ctlcluster("stop")
    time.sleep(3)  # the processes meet a database that is down, not only cut connections
    pg_ctlcluster("start")
    pipeline.wait_for(lambda: postgresql_answers(pipeline.database_url), 60, "PostgreSQL back")

    wait_all_final(pipeline, cids, 300, f"all {COUNT} final")
    statuses = pipeline.statuses()
    assert set(statuses.values()) == {"PROCESSED"}
    assert pipeline.applied_twice_or_lost(cids) == {"applied_twice": {}, "lost": []}
    assert 0 < at_kill < COUNT  # the kills landed mid-run
    stats = pipeline.sandbox.stats()
    assert stats["inflightHeld"] >= 3, stats  # the worst IBKR really was at work
    [[flagged]] = pipeline.query(
        "SELECT count(*) FROM client_instructions WHERE applied_twice_at IS NOT NULL"
    )
    assert flagged == 0
    for name in ("worker-1", "worker-2", "scheduler-1", "scheduler-2"):
        assert pipeline.alive(name), pipeline.logs()
