"""Where the test services are, and how tests look at, stop and start them.

PostgreSQL and RabbitMQ are found through TEST_DATABASE_URL and TEST_BROKER_URL; under CI=true a
missing service is a failure, never a skip (see `tests/conftest.py`).
"""

from __future__ import annotations

import os
import subprocess

import pika
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

CI = os.environ.get("CI", "").lower() == "true"
TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TEST_BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def rabbitmqctl(*args: str, timeout_s: float = 120) -> None:
    """`rabbitmqctl -q <args>`; raises when it fails."""
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=timeout_s)


def broker_answers(url: str) -> bool:
    """Whether RabbitMQ at `url` takes a connection."""
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def postgresql_answers(url: str) -> bool:
    """Whether PostgreSQL at `url` answers a query."""
    try:
        engine = create_engine(url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except OperationalError:
        return False
    return True


def can_restart_postgresql() -> bool:
    """Restarting the server needs root on a host with a local cluster."""
    return os.geteuid() == 0 and os.path.isdir("/etc/postgresql")


def pg_ctlcluster(action: str) -> None:
    """Stop (fast) or start the newest local PostgreSQL cluster."""
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
