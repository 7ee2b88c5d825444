"""Fixtures of the unit tests: a clock that moves only when told, and sessions on a migrated
SQLite database."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_session_factory
from worker.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test advances by hand (nothing waits for real time)."""
    return ManualClock()


@pytest.fixture
def factory(sqlite_url: str) -> sessionmaker[Session]:
    """A session factory on `sqlite_url` (every migration applied)."""
    return make_session_factory(make_engine(sqlite_url))
