"""Engines: the one place that knows how to reach the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """`postgres://` and `postgresql://` use psycopg 3 (the driver we ship)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(
    url: str, *, pool_size: int = 5, echo: bool = False, pre_ping: bool = True
) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout and foreign keys; PostgreSQL a
    pre-ping pool so a restarted server is reconnected to without a manual step (`pre_ping`:
    False for a caller that handles a lost connection itself)."""
    url = normalise_url(url)
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's own BEGIN drive transactions (pysqlite's implicit ones break
            # BEGIN IMMEDIATE), and keep writers waiting instead of failing.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if parsed.database and parsed.database != ":memory:":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # Writers take the lock at BEGIN, so two writers never deadlock on an upgrade.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A thread that finds every connection in use waits for one (no timeout): nothing holds a
    # connection while it sleeps or waits for anything but the database, so a connection
    # always comes back soon; a timeout would only turn a busy moment into a failed message.
    kwargs.update(
        pool_pre_ping=pre_ping,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_timeout=None,
        pool_recycle=1800,
    )
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Plain ORM sessions on `engine` (`with factory.begin() as session:`), for tests and
    benchmarks that read or seed the tables directly; the product goes through
    `worker.store`."""
    return sessionmaker(engine, expire_on_commit=False)
