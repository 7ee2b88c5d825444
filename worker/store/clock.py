"""The database's clock, for `worker.clock.DatabaseClock`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import text

from worker.store.database import Store
from worker.store.errors import translated


def database_time_reader(store: Store) -> Callable[[], datetime]:
    """A function reading the database server's current time (PostgreSQL's
    `clock_timestamp()`), which `DatabaseClock` anchors the shared clock on."""
    if not store.postgresql:
        raise ValueError("only PostgreSQL has a clock of its own; SQLite runs on one host")

    def read() -> datetime:
        with translated(), store.engine.connect() as connection:
            value: datetime = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value

    return read
