"""Fixtures of the unit tests: a clock that moves only when told, the store on a migrated
SQLite database (with ORM sessions to look at what it wrote), and a sandbox served in-process
with a client of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import make_session_factory
from tests.sandbox.support import SandboxClient, in_process
from worker.clock import ManualClock
from worker.store import Store


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test advances by hand (nothing waits for real time)."""
    return ManualClock()


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    """The store on `sqlite_url` (every migration applied), closed after the test."""
    store = Store.connect(sqlite_url)
    yield store
    store.close()


@pytest.fixture
def factory(store: Store) -> sessionmaker[Session]:
    """ORM sessions on the store's database, to look at what it wrote."""
    return make_session_factory(store.engine)


@pytest.fixture
def env(rsa_private_key: Any) -> tuple[Any, SandboxClient]:
    """(sandbox, client): the sandbox served in-process, the client registered with
    `rsa_private_key`."""
    return in_process(rsa_private_key)
