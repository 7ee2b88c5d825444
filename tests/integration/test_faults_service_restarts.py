"""RabbitMQ and PostgreSQL go away during a run and come back: nothing is lost, nothing is
applied twice, every change is announced, and no one has to do anything.

These restart shared services, so they run one at a time (`serial`). RabbitMQ is restarted with
`rabbitmqctl stop_app` / `start_app`. PostgreSQL has connections to this test's database cut
several times, and (as root, on a host with a local cluster) is stopped and started."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import pytest

from tests.builders import polled_every, transfers
from tests.integration.faults import assert_exactly_once, wait_all_final
from tests.integration.pipeline import WORST_IBKR, EventCollector, Pipeline
from tests.services import broker_answers, pg_ctlcluster, postgresql_answers, rabbitmqctl

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.serial]


#: A quarter answer 202 and are polled.
AMOUNT = polled_every(4, "180.00", "4.00")


def test_a_rabbitmq_restart_mid_run_loses_nothing_and_needs_no_manual_step(
    make_pipeline: Callable[..., Pipeline], rabbitmq_back_up: None
) -> None:
    pipeline = make_pipeline(speed=60.0, internal_cash_async_above=Decimal(100), **WORST_IBKR)
    events = EventCollector(pipeline.broker_url, "instruction.processed", durable=True)
    pipeline.start_worker()
    pipeline.start_scheduler()
    before = set(range(2_100_000, 2_100_100))
    after = set(range(2_100_100, 2_100_150))
    pipeline.publish(transfers(sorted(before), AMOUNT))
    pipeline.wait_for(lambda: len(pipeline.statuses()) >= 20, 60, "the run under way")

    rabbitmqctl("stop_app")
    time.sleep(3)
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    pipeline.wait_for(lambda: broker_answers(pipeline.broker_url), 30, "RabbitMQ back")
    # Producers carry on once the broker is back; the processes reconnect by themselves.
    pipeline.publish(transfers(sorted(after), AMOUNT))

    wait_all_final(pipeline, before | after, 150)
    assert_exactly_once(pipeline, before | after, events)


def test_postgresql_connections_cut_repeatedly_mid_run_lose_nothing(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(speed=60.0, internal_cash_async_above=Decimal(100), **WORST_IBKR)
    events = EventCollector(pipeline.broker_url, "instruction.processed")
    pipeline.start_worker()
    pipeline.start_scheduler()
    cids = set(range(2_200_000, 2_200_200))
    pipeline.publish(transfers(sorted(cids), AMOUNT))
    pipeline.wait_for(lambda: len(pipeline.statuses()) >= 10, 60, "the run under way")

    cut = 0
    for _ in range(4):
        [[terminated]] = pipeline.query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        cut += terminated
        time.sleep(1.5)
    assert cut >= 4, "no connection of the worker or scheduler was cut"

    wait_all_final(pipeline, cids, 150)
    assert_exactly_once(pipeline, cids, events)


def test_a_postgresql_server_restart_mid_run_loses_nothing_and_needs_no_manual_step(
    make_pipeline: Callable[..., Pipeline], postgresql_back_up: None
) -> None:
    pipeline = make_pipeline(speed=60.0, internal_cash_async_above=Decimal(100), **WORST_IBKR)
    events = EventCollector(pipeline.broker_url, "instruction.processed")
    pipeline.start_worker()
    pipeline.start_scheduler()
    cids = set(range(2_300_000, 2_300_150))
    pipeline.publish(transfers(sorted(cids), AMOUNT))
    pipeline.wait_for(lambda: len(pipeline.statuses()) >= 10, 60, "the run under way")

    pg_ctlcluster("stop")
    time.sleep(3)  # the processes meet a database that is down, not only cut connections
    pg_ctlcluster("start")
    pipeline.wait_for(lambda: postgresql_answers(pipeline.database_url), 60, "PostgreSQL back")

    wait_all_final(pipeline, cids, 150)
    assert_exactly_once(pipeline, cids, events)


def test_processes_started_while_postgresql_is_down_wait_for_it_and_then_work(
    make_pipeline: Callable[..., Pipeline], postgresql_back_up: None
) -> None:
    """A worker or scheduler (re)started while the database restarts (a crash loop meeting a
    failover, a host booting) waits for it and comes up by itself; it does not exit and stay
    down."""
    pipeline = make_pipeline(speed=60.0, internal_cash_async_above=Decimal(100))
    events = EventCollector(pipeline.broker_url, "instruction.processed")
    pg_ctlcluster("stop")
    pipeline.start_worker()
    pipeline.start_scheduler()
    pipeline.wait_for(
        lambda: pipeline.logs().count("the database does not answer yet") >= 4,
        30,
        "both processes waiting for the database",
    )
    assert pipeline.alive("worker") and pipeline.alive("scheduler"), pipeline.logs()
    pg_ctlcluster("start")
    pipeline.wait_for(lambda: postgresql_answers(pipeline.database_url), 60, "PostgreSQL back")

    cids = set(range(2_400_000, 2_400_030))
    pipeline.publish(transfers(sorted(cids), AMOUNT))
    wait_all_final(pipeline, cids, 90)
    assert_exactly_once(pipeline, cids, events)
