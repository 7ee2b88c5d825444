"""The store and its transactions: the one way the tracking domain reads, locks, inserts and
updates a row.

`Store(engine)` hands out transactions (`store.transaction()`, a context manager yielding a
`Tx`). A `Tx` keeps what the transaction has read and made:

- `adopt(row)`: a row the store read, remembered with a snapshot of its values (an identity
  map: the same row read again in the transaction is the instance adopted first, with the
  changes made to it since);
- `insert(row)`: a new row, written with the values it holds at the commit;
- `audit(row, values)`, `outbox(row, values)`: the audit and outbox rows about a client
  instruction (`client_instruction_pk` is the row's id at the commit);
- `after_commit(call)`: effects outside the database (metrics) once it has committed.

At the commit (`write`) the new rows go out table by table and the audit and outbox rows
with them, in one statement on PostgreSQL (`batched.insert_many`); then each adopted row
whose values changed is updated, the changed columns only, one statement per table and set
of changed columns (`batched.update_many`). Nothing is written before the commit: a query
later in the transaction does not see these rows (the services never need it to).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Numeric,
    Select,
    String,
    Table,
    any_,
    bindparam,
)
from sqlalchemy.dialects import postgresql

import models.tables as tables
from models.db import make_engine
from worker.store import rows
from worker.store.batched import insert_many, update_many
from worker.store.errors import translated
from worker.store.rows import Row, columns, values_of

R = TypeVar("R", bound=Row)

_MODELS: dict[type[Any], type[tables.Base]] = {
    rows.Submission: tables.Submission,
    rows.ClientInstruction: tables.ClientInstruction,
    rows.Instruction: tables.Instruction,
    rows.InstructionSet: tables.InstructionSet,
    rows.InboundMessage: tables.InboundMessage,
    rows.DeadLetter: tables.DeadLetter,
    rows.DeadLetterOriginal: tables.DeadLetterOriginal,
    rows.MessageFailure: tables.MessageFailure,
}


def table(model: type[tables.Base]) -> Table:
    """The table a model of `models.tables` is mapped to."""
    found = model.__table__
    assert isinstance(found, Table), f"{model.__name__} is not mapped to one table"
    return found


def table_of(row_type: type[Any]) -> Table:
    """The table whose rows `row_type` holds."""
    return table(_MODELS[row_type])


def _key(row_type: type[Row]) -> str:
    [key] = table_of(row_type).primary_key.columns
    return key.key


def _serial(row_type: type[Row]) -> str | None:
    column = table_of(row_type).autoincrement_column
    return None if column is None else column.key


_KEYS: dict[type[Any], str] = {row_type: _key(row_type) for row_type in rows.ROW_TYPES}
_SERIALS: dict[type[Any], str | None] = {row_type: _serial(row_type) for row_type in rows.ROW_TYPES}


def key_of(row_type: type[Any]) -> str:
    """The primary key column of `row_type`'s table (one column for every row type)."""
    return _KEYS[row_type]


def serial_id(row_type: type[Any]) -> str | None:
    """The column of the table's serial id (None: the key is given, never generated)."""
    return _SERIALS[row_type]


def row_from(row_type: type[R], values: Sequence[Any]) -> R:
    """A row of `row_type` from its column values, in the table's order."""
    return row_type(**dict(zip(columns(row_type), values, strict=True)))


#: The tables in the order their rows are inserted (parents first).
_INSERT_ORDER = {t.name: index for index, t in enumerate(tables.Base.metadata.sorted_tables)}


class Tx:
    """One transaction of the store (see the module docstring)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.postgresql = connection.dialect.name == "postgresql"
        #: What the store's modules remember for the rest of the transaction (rows looked up
        #: by another key than their own, per-transaction counters), by a key of their own.
        self.known: dict[Any, Any] = {}
        self._adopted: dict[tuple[type[Any], Any], tuple[Any, tuple[Any, ...]]] = {}
        self._inserts: list[Row] = []
        self._audit: list[tuple[rows.ClientInstruction, dict[str, Any]]] = []
        self._outbox: list[tuple[rows.ClientInstruction, dict[str, Any]]] = []
        self._after: list[Callable[[], None]] = []

    # --- what the transaction holds ----------------------------------------------------------
    def adopt(self, row: R) -> R:
        """`row` (read by the store) as this transaction holds it: the instance adopted first
        for the same key, else `row`, remembered with its values now."""
        identity = (type(row), getattr(row, key_of(type(row))))
        found = self._adopted.get(identity)
        if found is not None:
            held: R = found[0]
            return held
        self._adopted[identity] = (row, values_of(row))
        return row

    def insert(self, row: Row) -> None:
        """Insert `row` at the commit, with the values it holds then."""
        self._inserts.append(row)

    def audit(self, row: rows.ClientInstruction, values: dict[str, Any]) -> None:
        """Append an audit event about `row` at the commit."""
        self._audit.append((row, values))

    def outbox(self, row: rows.ClientInstruction, values: dict[str, Any]) -> None:
        """Queue an event about `row` in the outbox at the commit."""
        self._outbox.append((row, values))

    def after_commit(self, call: Callable[[], None]) -> None:
        """Call `call` once the transaction has committed (never if it rolls back)."""
        self._after.append(call)

    # --- statements ---------------------------------------------------------------------------
    def execute(self, statement: Any, parameters: Any = None) -> Any:
        """Run a statement in the transaction (for the store's modules)."""
        return self.connection.execute(statement, parameters)

    def read(self, row_type: type[R], query: Any, *, adopt: bool = False) -> list[R]:
        """The rows of `row_type` that `query` (selecting its table's columns, in order) finds;
        `adopt`: held by the transaction, to be changed."""
        found = [row_from(row_type, values) for values in self.execute(query)]
        return [self.adopt(row) for row in found] if adopt else found

    def locked(self, query: Select[Any], **options: Any) -> Select[Any]:
        """`query` taking row locks on PostgreSQL (SQLite's transaction holds the write lock
        from its BEGIN)."""
        return query.with_for_update(**options) if self.postgresql else query

    def one_of(self, column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
        """`column IN (values)`; on PostgreSQL `column = ANY(array)`: one parameter whatever
        the number of values, so the statement's text stays the same and the driver parses it
        once. The array's element type has no length (a cast to VARCHAR(n) would cut a
        longer value short and match wrongly)."""
        values = list(values)
        if not self.postgresql:
            return column.in_(values)
        element = column.type
        if isinstance(element, String):
            element = String()
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(element)))

    # --- the commit ---------------------------------------------------------------------------
    def write(self) -> None:
        """Write what the transaction made and changed (see the module docstring)."""
        self._write_inserts()
        self._write_changes()

    def committed(self) -> None:
        """Run the after-commit calls (once)."""
        calls, self._after = self._after, []
        for call in calls:
            call()

    def _write_inserts(self) -> None:
        by_type: dict[type[Row], list[Row]] = {}
        for row in self._inserts:
            by_type.setdefault(type(row), []).append(row)
        batches = [
            _insert_values(row_type, found)
            for row_type, found in sorted(
                by_type.items(), key=lambda item: _INSERT_ORDER[table_of(item[0]).name]
            )
        ]
        for model, made in ((tables.AuditEvent, self._audit), (tables.OutboxEvent, self._outbox)):
            if made:
                batches.append(
                    (
                        table(model),
                        [{**values, "client_instruction_pk": r.id} for r, values in made],
                    )
                )
        self._inserts, self._audit, self._outbox = [], [], []
        insert_many(self.connection, batches)

    def _write_changes(self) -> None:
        groups: dict[tuple[type[Row], tuple[str, ...]], list[dict[str, Any]]] = {}
        for row, before in self._adopted.values():
            row_type = type(row)
            names = columns(row_type)
            now = values_of(row)
            changed = tuple(
                name for name, old, new in zip(names, before, now, strict=True) if old != new
            )
            if not changed:
                continue
            key = key_of(row_type)
            values = {key: before[names.index(key)]}
            values.update((name, getattr(row, name)) for name in changed)
            groups.setdefault((row_type, changed), []).append(values)
        for (row_type, _), found in sorted(
            groups.items(), key=lambda item: _INSERT_ORDER[table_of(item[0][0]).name]
        ):
            update_many(self.connection, table_of(row_type), key_of(row_type), found)
        self._adopted = {}


def _insert_values(row_type: type[Row], found: Sequence[Row]) -> tuple[Table, list[dict[str, Any]]]:
    """The table and column values of new rows of one type; without the serial id when no
    row has one (the column's default gives it)."""
    names = list(columns(row_type))
    serial = serial_id(row_type)
    if serial is not None:
        missing = sum(1 for row in found if not getattr(row, serial))
        if missing == len(found):
            names.remove(serial)
        elif missing:
            raise ValueError(
                f"{row_type.__name__}: {missing} of {len(found)} new rows have no id; "
                "allocate one for every row or none"
            )
    return table_of(row_type), [{name: getattr(row, name) for name in names} for row in found]


class Store:
    """The tracking domain's database (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 5, pre_ping: bool = True) -> Store:
        """A store on `url` (`models.db.make_engine`: SQLite or PostgreSQL). `pre_ping`: False
        for a caller that handles a lost connection itself (a batch fails, its steps run again)."""
        return cls(make_engine(url, pool_size=pool_size, pre_ping=pre_ping))

    @property
    def postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def url(self) -> str:
        """The database's URL with the password hidden (for keys and logs)."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction: committed with what it made and changed when the block ends, rolled
        back (nothing written) when it raises. Database errors leave it as the store's
        (`worker.store.errors`)."""
        with translated(), self.engine.begin() as connection:
            tx = Tx(connection)
            yield tx
            tx.write()
        tx.committed()

    def close(self) -> None:
        """Close the store's connections."""
        self.engine.dispose()


def _amount_limit() -> Decimal:
    amount = table(tables.ClientInstruction).c.amount.type
    assert isinstance(amount, Numeric) and amount.precision and amount.scale is not None
    return Decimal(10) ** (amount.precision - amount.scale)


#: The magnitude an amount must stay below to fit the amount column.
AMOUNT_LIMIT = _amount_limit()
