"""Engines and sessions: the one place that knows how to reach the database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    String,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker

from models.batched import batch_executemany
from models.tables import CLIENT_INSTRUCTION_ID_SEQUENCE, IdCounter


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
    False for a caller that handles a lost connection itself), and its executemany INSERTs and
    keyed UPDATEs go out as one statement each (`models.batched`)."""
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
    engine = create_engine(url, **kwargs)
    batch_executemany(engine)
    return engine


def database_time_reader(engine: Engine) -> Callable[[], datetime]:
    """A function reading the database server's current time (PostgreSQL's `clock_timestamp()`;
    for `worker.clock.DatabaseClock`, which anchors the shared clock on it)."""
    if engine.dialect.name != "postgresql":
        raise ValueError("only PostgreSQL has a clock of its own; SQLite runs on one host")

    def read() -> datetime:
        with engine.connect() as connection:
            value: datetime = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value

    return read


def is_postgresql(engine_or_session: Engine | Session) -> bool:
    bind = (
        engine_or_session.get_bind()
        if isinstance(engine_or_session, Session)
        else engine_or_session
    )
    return bind.dialect.name == "postgresql"


def one_of(
    session: Session,
    column: ColumnElement[Any] | QueryableAttribute[Any],
    values: Iterable[Any],
) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL written `column = ANY(array)`: one parameter
    whatever the number of values, so the statement's text stays the same and the driver
    parses it once (a long IN list is parsed anew every time). The array's element type
    has no length (a cast to VARCHAR(n) would cut a longer value short and match wrongly)."""
    values = list(values)
    expression: ColumnElement[Any] = column.expression
    if not is_postgresql(session):
        return expression.in_(values)
    element = expression.type
    if isinstance(element, String):
        element = String()
    return expression == any_(bindparam(None, values, type_=postgresql.ARRAY(element)))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions with explicit transactions (`with factory.begin() as session:`).

    On PostgreSQL, new rows of a table that a flush inserts several of get their ids from the
    table's sequence first (`_assign_ids_in_bulk`).
    """
    factory = sessionmaker(engine, expire_on_commit=False)
    if engine.dialect.name == "postgresql":
        event.listen(factory, "before_flush", _assign_ids_in_bulk)
    return factory


def _assign_ids_in_bulk(session: Session, _context: Any, _instances: Any) -> None:
    """Give the new rows of every table with two or more of them their ids from the table's
    sequence, all tables in one query.

    Rows without ids are inserted with one multi-row INSERT ... RETURNING id whose text grows
    with the number of rows, which the driver has to parse anew every time (it only caches
    short statements); rows with ids are an executemany, which goes out as one short statement
    over arrays (`models.batched`). Ids come from the same sequence as the column default, in
    the order the rows were added.
    """
    pending: dict[Table, list[Any]] = {}
    for instance in session.new:
        state = inspect(instance)
        table = state.mapper.local_table
        column = table.autoincrement_column if isinstance(table, Table) else None
        if column is None:
            continue
        if getattr(instance, state.mapper.get_property_by_column(column).key) is not None:
            continue
        pending.setdefault(table, []).append(instance)
    several = {table: rows for table, rows in pending.items() if len(rows) > 1}
    if not several:
        return
    allocated = allocate_ids(session, {table: len(rows) for table, rows in several.items()})
    for table, rows in several.items():
        column = table.autoincrement_column
        assert column is not None
        ordered = sorted(rows, key=lambda row: inspect(row).insert_order)
        for row, new_id in zip(ordered, allocated[table], strict=True):
            setattr(row, inspect(row).mapper.get_property_by_column(column).key, new_id)


def allocate_ids(
    session: Session, wanted: Mapping[Table, int], *, ahead: int = 0
) -> dict[Table, list[int]]:
    """Ids for `wanted[table]` new rows of each table, ascending, with one query at most.

    On PostgreSQL they come from the tables' sequences (the column defaults' own); `ahead`:
    draw that many more and keep them in this process for the next calls, which then need
    no query (ids a process never uses are gaps, as a sequence's are anyway). On SQLite they
    follow the largest id in the table: the transaction holds the write lock from its BEGIN,
    so the caller must insert them before anything else inserts into these tables.
    """
    tables = sorted((table for table, n in wanted.items() if n > 0), key=lambda t: t.name)
    if not tables:
        return {table: [] for table in wanted}
    if is_postgresql(session):
        allocated = _drawn_ahead.take(session, {table: wanted[table] for table in tables}, ahead)
    else:
        queries = [f"(SELECT coalesce(max({_id_column(t)}), 0) FROM {t.name})" for t in tables]
        found = session.connection().exec_driver_sql("SELECT " + ", ".join(queries)).one()
        allocated = {
            table: list(range(largest + 1, largest + 1 + wanted[table]))
            for table, largest in zip(tables, found, strict=True)
        }
    return {table: allocated.get(table, []) for table in wanted}


class _DrawnAhead:
    """Ids drawn from PostgreSQL sequences ahead of use, by database and table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], list[int]] = {}

    def take(
        self, session: Session, wanted: dict[Table, int], ahead: int
    ) -> dict[Table, list[int]]:
        # The connection before the lock: waiting for a pooled connection while holding it
        # could wait on a thread that waits for the lock.
        connection = session.connection()
        database = connection.engine.url.render_as_string(hide_password=True)
        with self._lock:
            short = {
                table: n + ahead
                for table, n in wanted.items()
                if len(self._kept.get((database, table.name), [])) < n
            }
            if short:
                queries = [
                    f"(SELECT array_agg(nextval('{_sequence_name(table)}')) "
                    f"FROM generate_series(1, {n}))"
                    for table, n in short.items()
                ]
                found = connection.exec_driver_sql("SELECT " + ", ".join(queries)).one()
                for table, ids in zip(short, found, strict=True):
                    key = (database, table.name)
                    self._kept[key] = sorted(self._kept.get(key, []) + list(ids))
            taken: dict[Table, list[int]] = {}
            for table, n in wanted.items():
                key = (database, table.name)
                taken[table], self._kept[key] = self._kept[key][:n], self._kept[key][n:]
            return taken


_drawn_ahead = _DrawnAhead()


def _id_column(table: Table) -> str:
    column = table.autoincrement_column
    assert column is not None, f"{table.name} has no serial id"
    return column.name


def _sequence_name(table: Table) -> str:
    """The sequence behind the table's serial id (as PostgreSQL names it for BIGSERIAL)."""
    return f"{table.name}_{_id_column(table)}_seq"


def next_client_instruction_id(session: Session, start: int) -> int:
    """The next clientInstructionId for a request that came without one.

    Sequential, as IBKR prefers: `start - 1 + n` where n comes from a PostgreSQL sequence, or
    from the `id_counters` row on databases without sequences (SQLite). Must be called inside a
    transaction; on SQLite that transaction holds the write lock.
    """
    if is_postgresql(session):
        value = session.execute(
            text(f"SELECT nextval('{CLIENT_INSTRUCTION_ID_SEQUENCE}')")
        ).scalar_one()
    else:
        value = session.execute(
            text("UPDATE id_counters SET value = value + 1 WHERE name = :name RETURNING value"),
            {"name": CLIENT_INSTRUCTION_ID_SEQUENCE},
        ).scalar()
        if value is None:
            session.add(IdCounter(name=CLIENT_INSTRUCTION_ID_SEQUENCE, value=1))
            session.flush()
            value = 1
    return int(start) - 1 + int(value)
