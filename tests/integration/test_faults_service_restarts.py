"""RabbitMQ and PostgreSQL go away during a run and come back: nothing is lost, nothing is
applied twice, every change is announced, and no one has to do anything.

These restart shared services, so they run one at a time (`serial`). RabbitMQ is restarted with
`rabbitmqctl stop_app` / `start_app`. PostgreSQL has connections to this test's database cut
several times, and (as root, on a host with a local cluster) is stopped and started."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pika
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import TEST_DATABASE_URL
from tests.integration.pipeline import WORST_IBKR, EventCollector, Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.serial]


def transfer(cid: int) -> dict[str, Any]:
    amount = "180.00" if cid % 4 == 0 else "4.00"  # a quarter answer 202 and are polled
    return {
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instruction": {
            "clientInstructionId": cid,
            "sourceAccountId": "U46377",
            "targetAccountId": "U15667",
            "amount": amount,
            "currency": "USD",
        },
    }


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def rabbitmq_back_up() -> Iterator[None]:
    """Whatever happens in the test, RabbitMQ is running again afterwards."""
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def broker_answers(url: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def assert_exactly_once(pipeline: Pipeline, cids: set[int], events: EventCollector) -> None:
    statuses = pipeline.statuses()
    assert set(statuses) == cids
    assert set(statuses.values()) == {"PROCESSED"}
    counts = pipeline.sandbox.ledger_counts()
    assert {cid: n for cid, n in counts.items() if n != 1} == {}, "applied twice"
    assert set(counts) == cids, "lost"
    pipeline.wait_for(
        lambda: {e["clientInstructionId"] for e in events.drain()} >= cids,
        60,
        "a PROCESSED event for every instruction",
    )
    assert pipeline.alive("worker") and pipeline.alive("scheduler")
    health = pipeline.cli("health")
    assert health.returncode == 0, health.stdout + health.stderr


def wait_all_final(pipeline: Pipeline, cids: set[int], timeout_s: float) -> None:
    def done() -> bool:
        statuses = pipeline.statuses()
        return set(statuses) >= cids and all(
            s in ("PROCESSED", "REJECTED", "FAILED", "CONFLICT") for s in statuses.values()
        )

    pipeline.wait_for(done, timeout_s, f"{len(cids)} final instructions")


def test_a_rabbitmq_restart_mid_run_loses_nothing_and_needs_no_manual_step(
    make_pipeline: Callable[..., Pipeline], rabbitmq_back_up: None
) -> None:
    pipeline = make_pipeline(speed=60.0, internal_cash_async_above=Decimal(100), **WORST_IBKR)
    events = EventCollector(pipeline.broker_url, "instruction.processed", durable=True)
    pipeline.start_worker()
    pipeline.start_scheduler()
    before = set(range(2_100_000, 2_100_100))
    after = set(range(2_100_100, 2_100_150))
    pipeline.publish([transfer(cid) for cid in sorted(before)])
    pipeline.wait_for(lambda: len(pipeline.statuses()) >= 20, 60, "the run under way")

    rabbitmqctl("stop_app")
    time.sleep(3)
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    pipeline.wait_for(lambda: broker_answers(pipeline.broker_url), 30, "RabbitMQ back")
    # Producers carry on once the broker is back; the processes reconnect by themselves.
    pipeline.publish([transfer(cid) for cid in sorted(after)])

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
    pipeline.publish([transfer(cid) for cid in sorted(cids)])
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


def pg_ctlcluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[
        -1
    ]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, "-m", "fast"]
        if action != "start"
        else ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def postgresql_answers(url: str) -> bool:
    try:
        pipeline_engine = create_engine(url)
        with pipeline_engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        pipeline_engine.dispose()
    except OperationalError:
        return False
    return True


@pytest.fixture
def postgresql_back_up() -> Iterator[None]:
    """Whatever happens in the test, the local PostgreSQL cluster is running again afterwards."""
    if os.geteuid() != 0 or not os.path.isdir("/etc/postgresql"):
        message = "restarting the PostgreSQL server needs root on a host with a local cluster"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: every test must run)", pytrace=False)
        pytest.skip(message)
    try:
        yield
    finally:
        if not postgresql_answers(TEST_DATABASE_URL):
            pg_ctlcluster("start")


def test_a_postgresql_server_restart_mid_run_loses_nothing_and_needs_no_manual_step(
    make_pipeline: Callable[..., Pipeline], postgresql_back_up: None
) -> None:
    pipeline = make_pipeline(speed=60.0, internal_cash_async_above=Decimal(100), **WORST_IBKR)
    events = EventCollector(pipeline.broker_url, "instruction.processed")
    pipeline.start_worker()
    pipeline.start_scheduler()
    cids = set(range(2_300_000, 2_300_150))
    pipeline.publish([transfer(cid) for cid in sorted(cids)])
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
    pipeline.publish([transfer(cid) for cid in sorted(cids)])
    wait_all_final(pipeline, cids, 90)
    assert_exactly_once(pipeline, cids, events)
