"""Fixtures of the integration tests: services that come back after a test stopped them, and
the IBKR client against a sandbox of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ibkr_sandbox import Sandbox, SandboxConfig
from tests.integration.client_support import (
    CLIENT_ID,
    KEY_ID,
    SandboxFactory,
    make_client,
)
from tests.sandbox.support import public_pem
from tests.services import (
    CI,
    TEST_DATABASE_URL,
    can_restart_postgresql,
    pg_ctlcluster,
    postgresql_answers,
    rabbitmqctl,
)
from worker.ibkr.client import IbkrClient


@pytest.fixture
def rabbitmq_back_up() -> Iterator[None]:
    """Whatever happens in the test, RabbitMQ is running again afterwards."""
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


@pytest.fixture
def postgresql_back_up() -> Iterator[None]:
    """Whatever happens in the test, the local PostgreSQL cluster is running again afterwards."""
    if not can_restart_postgresql():
        message = "restarting the PostgreSQL server needs root on a host with a local cluster"
        if CI:
            pytest.fail(f"{message} (CI=true: every test must run)", pytrace=False)
        pytest.skip(message)
    try:
        yield
    finally:
        if not postgresql_answers(TEST_DATABASE_URL):
            pg_ctlcluster("start")


# --- the IBKR client against a sandbox of its own (test_client_*_against_sandbox) ------------


@pytest.fixture
def start_sandbox(rsa_private_key: Any) -> Iterator[SandboxFactory]:
    """Starts sandboxes that know `rsa_private_key`'s client; stops them after the test."""
    started: list[Any] = []

    def start(denied: tuple[str, ...] = (), **config: Any) -> Any:
        sandbox = Sandbox(SandboxConfig(port=0, **config))
        sandbox.register_client(
            client_id=CLIENT_ID,
            key_id=KEY_ID,
            public_key_pem=public_pem(rsa_private_key),
            denied_instruction_types=denied,
        )
        sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(start_sandbox: SandboxFactory) -> Any:
    return start_sandbox()


@pytest.fixture
def client(sandbox: Any, rsa_private_key: Any) -> Iterator[IbkrClient]:
    with make_client(sandbox, rsa_private_key) as ibkr:
        yield ibkr
