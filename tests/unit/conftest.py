"""Fixtures of the unit tests: a clock that moves only when told, and the store on a migrated
SQLite database (with ORM sessions to look at what it wrote)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import make_session_factory
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
