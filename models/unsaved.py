"""New rows made and inserted without the ORM's unit of work.

`model(**values)` + `session.add` + flush runs attribute events for every value, cascades,
relationship bookkeeping and the unit of work's sorting for each row; for the rows the worker
creates by the thousand (a request's submission and client instructions) that was most of
what receiving a request cost. `new_unsaved` makes an ordinary instance of the model (its
attributes read and written as usual) that no session tracks, and `insert_unsaved` writes
lists of them with one Core INSERT in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Table, Update, bindparam, inspect, update
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.orm.exc import StaleDataError

from models.batched import insert_many

Model = TypeVar("Model", bound=DeclarativeBase)


def new_unsaved(model: type[Model], **values: Any) -> Model:
    """An instance of `model` holding `values` (columns not given: their scalar default, else
    None), made without attribute events and never added to a session. Only
    `insert_unsaved`/`update_changed` write its columns. A relationship given is set as
    already loaded (read by the code that uses the instance, never written: give the foreign
    key column too)."""
    defaults = _column_defaults(model)
    if not defaults.keys() >= values.keys():
        unknown = values.keys() - defaults.keys() - _relationships(model)
        if unknown:
            raise TypeError(f"{model.__name__} has no column {', '.join(sorted(unknown))}")
    instance: Model = model.__mapper__.class_manager.new_instance()
    instance.__dict__.update(defaults)
    instance.__dict__.update(values)
    return instance


def insert_unsaved(session: Session, *groups: Sequence[DeclarativeBase]) -> None:
    """Insert `groups` of rows (made by `new_unsaved`; each group of one model) in the
    session's transaction, group by group, in order: one statement for all of them on
    PostgreSQL (`models.batched.insert_many`). The rows of a group either all carry their id
    (`db.allocate_ids`) or none does (the column default gives it; not read back). The rows
    stay untracked: later changes to them are not written."""
    # The connection, not the session: nothing pending in the session is flushed in between,
    # so ids allocated past the largest one (SQLite) are still free.
    insert_many(session.connection(), [unsaved_values(rows) for rows in groups if rows])


def unsaved_values(rows: Sequence[DeclarativeBase]) -> tuple[Table, list[dict[str, Any]]]:
    """The table of `rows` (made by `new_unsaved`, all of one model) and their column values,
    for `models.batched.insert_many`; without the id column when no row has an id."""
    model = type(rows[0])
    if any(type(row) is not model for row in rows):
        raise TypeError("rows of one model at a time: got several models in one group")
    keys = list(_column_defaults(model))
    id_key = _id_key(model)
    if id_key is not None:
        missing = sum(1 for row in rows if row.__dict__[id_key] is None)
        if missing == len(rows):
            keys.remove(id_key)
        elif missing:
            raise ValueError(
                f"{model.__name__}: {missing} of {len(rows)} rows have no id; give every row "
                "its id (allocate_ids) or none"
            )
    return table_of(model), [{key: row.__dict__[key] for key in keys} for row in rows]


def update_changed(session: Session, rows: Sequence[DeclarativeBase]) -> None:
    """Write what changed on `rows` (made by `new_unsaved` from their stored values, all of one
    model, each with its key) since they were made, in the session's transaction: one UPDATE by
    key for each set of changed columns (on PostgreSQL one statement over arrays,
    `models.batched`). Raises StaleDataError when a row is no longer there."""
    if not rows:
        return
    model = type(rows[0])
    table = table_of(model)
    columns = _column_defaults(model)
    id_key = _id_key(model)
    assert id_key is not None, f"{model.__name__} has no generated key to update by"
    groups: dict[tuple[str, ...], list[DeclarativeBase]] = {}
    for row in rows:
        if type(row) is not model:
            raise TypeError("rows of one model at a time: got several models")
        values = row.__dict__
        changed = tuple(
            sorted(
                key
                for key, before in inspect(row).committed_state.items()
                if key in columns and values[key] != before
            )
        )
        if changed:
            groups.setdefault(changed, []).append(row)
    connection = session.connection()
    for keys, group in groups.items():
        result = connection.execute(
            _update_by_key(table, id_key, keys),
            [
                {"key_": row.__dict__[id_key], **{f"new_{key}": row.__dict__[key] for key in keys}}
                for row in group
            ],
        )
        if result.rowcount != len(group):
            raise StaleDataError(
                f"{table.name}: {len(group)} rows to update, {result.rowcount} found"
            )


@cache
def _update_by_key(table: Table, id_key: str, keys: tuple[str, ...]) -> Update:
    """`UPDATE table SET keys WHERE id`, built once per set of columns (parameter names apart
    from the columns': SQLAlchemy keeps those for itself)."""
    return (
        update(table)
        .where(table.c[id_key] == bindparam("key_"))
        .values({key: bindparam(f"new_{key}") for key in keys})
    )


def table_of(model: type[DeclarativeBase]) -> Table:
    """The table `model` is mapped to."""
    table = model.__table__
    assert isinstance(table, Table), f"{model.__name__} is not mapped to one table"
    return table


@cache
def _column_defaults(model: type[DeclarativeBase]) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for prop in inspect(model).column_attrs:
        [column] = prop.columns
        default = column.default
        defaults[prop.key] = default.arg if default is not None and default.is_scalar else None
    return defaults


@cache
def _relationships(model: type[DeclarativeBase]) -> frozenset[str]:
    return frozenset(inspect(model).relationships.keys())


@cache
def _id_key(model: type[DeclarativeBase]) -> str | None:
    """The attribute of the model's serial id (None: its key is given, not generated)."""
    mapper = inspect(model)
    column = table_of(model).autoincrement_column
    return None if column is None else mapper.get_property_by_column(column).key
