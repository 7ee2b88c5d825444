"""Many rows in one statement: SQLAlchemy's executemany of a plain INSERT, or of an UPDATE by
key, sent to PostgreSQL as one statement over arrays instead of one statement per row.

psycopg runs `executemany` as one statement per row in a pipeline, and it talks to the server
(a poll, a send) after every row. A worker thread that writes for many others gives up the GIL
at each of those calls and then waits to get it back from the threads that are busy with HTTP:
per row, not per batch. Rewritten, the rows of a flush go out as

    INSERT INTO t (a, b) SELECT * FROM unnest(%b::A[], %b::B[])
    UPDATE t SET a = v.c1 FROM unnest(%b::K[], %b::A[]) AS v(c0, c1) WHERE t.k = v.c0

whose text does not depend on the number of rows (the driver parses it once and caches it);
the arrays travel in binary (`%b`), which spares the driver quoting every element as text.
The values are the ones SQLAlchemy prepared for executemany (bind processing already applied),
the types come from the table's metadata, and the row count is the same as executemany's, so
the ORM's stale-row check holds. A statement of any other shape runs as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, event, insert
from sqlalchemy.engine import Dialect

# Statements as SQLAlchemy's PostgreSQL compiler writes them for executemany.
_INSERT = re.compile(r"INSERT INTO (\S+) \(([^()]*)\) VALUES \((.*)\)\s*", re.DOTALL)
_UPDATE = re.compile(r"UPDATE (\S+) SET (.*) WHERE (\S+) = (%\(\w+\)s(?:::[A-Z ]+)?)\s*", re.DOTALL)
_PARAM = re.compile(r"%\((\w+)\)s(?:::([A-Z][A-Z ]*(?:\(\d+(?:, \d+)?\))?))?")
_MODIFIERS = re.compile(r"\(\d+(?:, \d+)?\)")
_ASSIGNMENT = re.compile(r"(\S+?)=(%\(\w+\)s(?:::[A-Z][A-Z ]*(?:\(\d+(?:, \d+)?\))?)?)")


@dataclass(frozen=True)
class _Rewritten:
    """A statement over arrays and, in order, the parameter names whose values form each array."""

    sql: str
    names: tuple[str, ...]


#: Rewrites by original statement text (None: the statement keeps its shape); the statements
#: an application issues are few, so the cache stays small.
_cache: dict[tuple[int, str], _Rewritten | None] = {}
_CACHE_LIMIT = 512


def batch_executemany(engine: Engine) -> None:
    """Send `engine`'s executemany INSERTs and keyed UPDATEs as one statement each (see the
    module docstring). PostgreSQL only."""
    if engine.dialect.name != "postgresql":
        raise ValueError("batched executemany needs PostgreSQL (unnest over typed arrays)")
    event.listen(engine, "do_executemany", _do_executemany)


def insert_many(
    connection: Connection, batches: Sequence[tuple[Table, Sequence[Mapping[str, Any]]]]
) -> None:
    """Insert rows of several tables, table by table in the order given (each table's rows
    with the same keys). On PostgreSQL all of them go out as one statement, each table's rows
    as an `INSERT ... SELECT * FROM unnest(...)` in a data-modifying WITH (foreign keys
    between them are checked at the end of the statement); elsewhere as one executemany per
    table. Values go through the columns' bind processing as in any SQLAlchemy INSERT."""
    batches = [(table, rows) for table, rows in batches if rows]
    if not batches:
        return
    if connection.dialect.name != "postgresql":
        for table, rows in batches:
            connection.execute(insert(table), [dict(row) for row in rows])
        return
    parts: list[str] = []
    params: list[list[Any]] = []
    for table, rows in batches:
        keys = tuple(rows[0])
        if any(tuple(row) != keys for row in rows):
            raise ValueError(f"rows for {table.name} must all have the same keys, in order")
        sql, processors, defaults = _insert_over_arrays(table, keys, connection.dialect)
        parts.append(sql)
        for key, process in zip(keys, processors, strict=True):
            values = [row[key] for row in rows]
            params.append(values if process is None else [process(v) for v in values])
        params.extend([default] * len(rows) for default in defaults)
    *leading, last = parts
    statement = (
        "WITH " + ", ".join(f"w{index} AS ({sql})" for index, sql in enumerate(leading)) + " "
        if leading
        else ""
    ) + last
    connection.exec_driver_sql(statement, tuple(params))


_Insert = tuple[str, list[Any], list[Any]]
_inserts: dict[tuple[int, tuple[str, ...]], _Insert] = {}


def _insert_over_arrays(table: Table, keys: tuple[str, ...], dialect: Dialect) -> _Insert:
    """`INSERT INTO table (keys, defaulted) SELECT * FROM unnest(typed arrays)`, the bind
    processors of the keys' columns (None where a column has none), and the values of the
    columns not in `keys` that have a scalar Python default (as SQLAlchemy's INSERT fills
    them in; the database's own defaults apply to the others)."""
    cache_key = (id(table), keys)
    found = _inserts.get(cache_key)
    if found is None:
        given: list[Column[Any]] = [table.c[key] for key in keys]
        defaulted = [
            column
            for column in table.columns
            if column.key not in keys and column.default is not None
        ]
        if any(not column.default.is_scalar for column in defaulted):  # type: ignore[union-attr]
            raise ValueError(f"{table.name}: give every column whose default is not a constant")
        columns = given + defaulted
        quote = dialect.identifier_preparer
        names = ", ".join(quote.format_column(column) for column in columns)
        arrays = ", ".join(f"%b::{_array_type_of(column, dialect)}" for column in columns)
        found = (
            f"INSERT INTO {quote.format_table(table)} ({names}) SELECT * FROM unnest({arrays})",
            # The processors SQLAlchemy itself applies to these columns' values.
            [column.type._cached_bind_processor(dialect) for column in given],
            [column.default.arg for column in defaulted],  # type: ignore[union-attr]
        )
        if len(_inserts) < _CACHE_LIMIT:
            _inserts[cache_key] = found
    return found


def _do_executemany(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    if len(parameters) < 2 or not all(isinstance(p, dict) for p in parameters):
        return False
    table = _table_of(context)
    if table is None:
        return False
    key = (id(table), statement)
    if key in _cache:
        rewritten = _cache[key]
    else:
        rewritten = _rewrite(statement, table, context.dialect)
        if len(_cache) < _CACHE_LIMIT:
            _cache[key] = rewritten
    if rewritten is None:
        return False
    if rewritten.sql.startswith("UPDATE"):
        # One row per key (the ORM never updates a row twice in one flush); otherwise the row
        # count would differ from executemany's.
        keys = [p[rewritten.names[0]] for p in parameters]
        if len(set(keys)) != len(keys):
            return False
    try:
        arrays = [[p[name] for p in parameters] for name in rewritten.names]
    except KeyError:  # parameter sets of different shapes: leave them to executemany
        return False
    cursor.execute(rewritten.sql, arrays)
    return True


def _table_of(context: Any) -> Table | None:
    compiled = getattr(context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    table = getattr(statement, "table", None)
    return table if isinstance(table, Table) else None


def _rewrite(statement: str, table: Table, dialect: Dialect) -> _Rewritten | None:
    insert = _INSERT.fullmatch(statement)
    if insert is not None:
        return _rewrite_insert(insert, table, dialect)
    update = _UPDATE.fullmatch(statement)
    if update is not None:
        return _rewrite_update(update, table, dialect)
    return None


def _array_type(table: Table, column_name: str, dialect: Dialect) -> str | None:
    column = table.columns.get(column_name.strip('"'))
    return None if column is None else _array_type_of(column, dialect)


def _array_type_of(column: Column[Any], dialect: Dialect) -> str:
    # Without the type's modifiers: an explicit cast to VARCHAR(n) would cut a long value
    # short where storing it in the column refuses it, as executemany's statement does.
    return f"{_MODIFIERS.sub('', column.type.compile(dialect=dialect))}[]"


def _params(text: str) -> list[str] | None:
    """The parameter names of `%(a)s::T, %(b)s, ...`, or None when the text is anything else."""
    found = list(_PARAM.finditer(text))
    if ", ".join(m.group(0) for m in found) != text:
        return None
    return [m.group(1) for m in found]


def _rewrite_insert(match: re.Match[str], table: Table, dialect: Dialect) -> _Rewritten | None:
    name, columns_text, values_text = match.groups()
    if name.strip('"') != table.name:
        return None
    columns = columns_text.split(", ")
    names = _params(values_text)
    if names is None or len(names) != len(columns):
        return None
    types = [_array_type(table, column, dialect) for column in columns]
    if None in types:
        return None
    arrays = ", ".join(f"%b::{array_type}" for array_type in types)
    return _Rewritten(
        f"INSERT INTO {name} ({columns_text}) SELECT * FROM unnest({arrays})", tuple(names)
    )


def _rewrite_update(match: re.Match[str], table: Table, dialect: Dialect) -> _Rewritten | None:
    name, assignments_text, key_column, key_param = match.groups()
    if name.strip('"') != table.name or not key_column.startswith(f"{name}."):
        return None
    assignments = list(_ASSIGNMENT.finditer(assignments_text))
    if ", ".join(m.group(0) for m in assignments) != assignments_text:
        return None
    key_names = _params(key_param)
    if key_names is None:
        return None
    columns = [key_column[len(name) + 1 :]] + [m.group(1) for m in assignments]
    names = key_names + [(_params(m.group(2)) or [""])[0] for m in assignments]
    types = [_array_type(table, column, dialect) for column in columns]
    if None in types or "" in names:
        return None
    aliases = [f"c{index}" for index in range(len(columns))]
    arrays = ", ".join(f"%b::{array_type}" for array_type in types)
    sets = ", ".join(
        f"{column}=v.{alias}" for column, alias in zip(columns[1:], aliases[1:], strict=True)
    )
    return _Rewritten(
        f"UPDATE {name} SET {sets} FROM unnest({arrays}) AS v({', '.join(aliases)}) "
        f"WHERE {key_column} = v.c0",
        tuple(names),
    )
