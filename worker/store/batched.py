"""Many rows in one statement: the store's INSERTs and UPDATEs by key.

On PostgreSQL the rows of a call go out as one statement over typed arrays,

    INSERT INTO t (a, b) SELECT * FROM unnest(%b::A[], %b::B[])
    UPDATE t SET a = v.c1 FROM unnest(%b::K[], %b::A[]) AS v(c0, c1) WHERE t.k = v.c0

whose text does not depend on the number of rows (the driver parses it once and caches it);
the arrays travel in binary (`%b`). One statement per row would cost the writing thread a
wait on the server and on the GIL per row. The values pass through the columns' own bind
processing (as in any SQLAlchemy statement) and the types come from the table's metadata;
an UPDATE that finds fewer rows than it was given raises `StaleRow`. Elsewhere (SQLite) the
same calls are an executemany per table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Column, Connection, Table, Update, bindparam, insert, update
from sqlalchemy.engine import Dialect

from worker.store.errors import StaleRow

_MODIFIERS = re.compile(r"\(\d+(?:, \d+)?\)")

Values = Mapping[str, Any]
Processor = Callable[[Any], Any] | None


def insert_many(connection: Connection, batches: Sequence[tuple[Table, Sequence[Values]]]) -> None:
    """Insert rows of several tables, table by table in the order given (each table's rows
    with the same keys, in the same order). On PostgreSQL all of them go out as one statement,
    each table's rows an `INSERT ... SELECT * FROM unnest(...)` in a data-modifying WITH
    (foreign keys between them are checked at its end); elsewhere one executemany per table.
    Columns left out take their scalar Python default, else the database's."""
    batches = [(table, rows) for table, rows in batches if rows]
    if not batches:
        return
    for table, rows in batches:
        keys = tuple(rows[0])
        if any(tuple(row) != keys for row in rows):
            raise ValueError(f"rows for {table.name} must all have the same keys, in order")
    if connection.dialect.name != "postgresql":
        for table, rows in batches:
            connection.execute(insert(table), [dict(row) for row in rows])
        return
    parts: list[str] = []
    params: list[list[Any]] = []
    for table, rows in batches:
        keys = tuple(rows[0])
        sql, processors, defaults = _insert_over_arrays(table, keys, connection.dialect)
        parts.append(sql)
        for key, process in zip(keys, processors, strict=True):
            params.append(_column_values(rows, key, process))
        params.extend([default] * len(rows) for default in defaults)
    *leading, last = parts
    statement = (
        "WITH " + ", ".join(f"w{index} AS ({sql})" for index, sql in enumerate(leading)) + " "
        if leading
        else ""
    ) + last
    connection.exec_driver_sql(statement, tuple(params))


def update_many(connection: Connection, table: Table, key: str, rows: Sequence[Values]) -> None:
    """Update rows of `table` by their `key` column: each row maps `key` and the columns to set
    (every row the same columns, in the same order, each key once). Raises StaleRow when a row
    is no longer there."""
    if not rows:
        return
    names = tuple(rows[0])
    if names[0] != key or any(tuple(row) != names for row in rows):
        raise ValueError(
            f"rows for {table.name} must all start with {key} and set the same columns"
        )
    if connection.dialect.name == "postgresql":
        sql, processors = _update_over_arrays(table, names, connection.dialect)
        arrays = tuple(
            _column_values(rows, name, process)
            for name, process in zip(names, processors, strict=True)
        )
        found = connection.exec_driver_sql(sql, arrays).rowcount
    else:
        found = connection.execute(
            _update_by_key(table, names),
            [{"key_": row[key], **{f"new_{n}": row[n] for n in names[1:]}} for row in rows],
        ).rowcount
    if found != len(rows):
        raise StaleRow(f"{table.name}: {len(rows)} rows to update, {found} found", "StaleRow")


def bind_processor(column: Column[Any], dialect: Dialect) -> Processor:
    """The processor SQLAlchemy applies to a value bound to `column` (None: the value as is)."""
    return _bind_processor(column, dialect.name, dialect)


@cache
def _bind_processor(column: Column[Any], _name: str, dialect: Dialect) -> Processor:
    # The dialect's own implementation of the type (psycopg's JSON, say), as SQLAlchemy
    # applies it to a bound value.
    return column.type.dialect_impl(dialect).bind_processor(dialect)


def _column_values(rows: Sequence[Values], key: str, process: Processor) -> list[Any]:
    values = [row[key] for row in rows]
    return values if process is None else [process(value) for value in values]


def _array_type(column: Column[Any], dialect: Dialect) -> str:
    # Without the type's modifiers: an explicit cast to VARCHAR(n) would cut a long value
    # short where storing it in the column refuses it.
    return f"{_MODIFIERS.sub('', column.type.compile(dialect=dialect))}[]"


@cache
def _insert_over_arrays(
    table: Table, keys: tuple[str, ...], dialect: Dialect
) -> tuple[str, list[Processor], list[Any]]:
    """`INSERT INTO table (keys, defaulted) SELECT * FROM unnest(typed arrays)`, the bind
    processors of the keys' columns, and the values of the columns not in `keys` that have a
    scalar Python default (as SQLAlchemy's INSERT fills them in)."""
    given: list[Column[Any]] = [table.c[key] for key in keys]
    defaulted = [c for c in table.columns if c.key not in keys and c.default is not None]
    if any(not column.default.is_scalar for column in defaulted):  # type: ignore[union-attr]
        raise ValueError(f"{table.name}: give every column whose default is not a constant")
    columns = given + defaulted
    quote = dialect.identifier_preparer
    names = ", ".join(quote.format_column(column) for column in columns)
    arrays = ", ".join(f"%b::{_array_type(column, dialect)}" for column in columns)
    return (
        f"INSERT INTO {quote.format_table(table)} ({names}) SELECT * FROM unnest({arrays})",
        [bind_processor(column, dialect) for column in given],
        [column.default.arg for column in defaulted],  # type: ignore[union-attr]
    )


@cache
def _update_over_arrays(
    table: Table, names: tuple[str, ...], dialect: Dialect
) -> tuple[str, list[Processor]]:
    """`UPDATE table SET ... FROM unnest(typed arrays) AS v(...) WHERE key = v.c0` and the
    bind processors of its columns (the key first)."""
    columns: list[Column[Any]] = [table.c[name] for name in names]
    quote = dialect.identifier_preparer
    aliases = [f"c{index}" for index in range(len(columns))]
    arrays = ", ".join(f"%b::{_array_type(column, dialect)}" for column in columns)
    sets = ", ".join(
        f"{quote.format_column(column)} = v.{alias}"
        for column, alias in zip(columns[1:], aliases[1:], strict=True)
    )
    target = quote.format_table(table)
    sql = (
        f"UPDATE {target} SET {sets} FROM unnest({arrays}) AS v({', '.join(aliases)}) "
        f"WHERE {target}.{quote.format_column(columns[0])} = v.c0"
    )
    return sql, [bind_processor(column, dialect) for column in columns]


@cache
def _update_by_key(table: Table, names: tuple[str, ...]) -> Update:
    """`UPDATE table SET names[1:] WHERE names[0]` (parameter names apart from the columns':
    SQLAlchemy keeps those for itself)."""
    key, *rest = names
    return (
        update(table)
        .where(table.c[key] == bindparam("key_"))
        .values({name: bindparam(f"new_{name}") for name in rest})
    )
