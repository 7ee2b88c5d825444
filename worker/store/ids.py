"""Ids for new rows, drawn before the rows are written.

New submissions and client instructions get their ids before the commit writes them, so that
the rows, their audit events and their outbox events can all go out in one statement. On
PostgreSQL the ids come from the tables' own sequences (the column defaults'), drawn `ahead`
so that most batches need no query (ids a process never uses are gaps, as a sequence's are
anyway). On SQLite they follow the largest id in the table: the transaction holds the write
lock from its BEGIN, and the transaction counts on from there for its later allocations.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from sqlalchemy import Table, func, insert, select, text

from models.tables import CLIENT_INSTRUCTION_ID_SEQUENCE, IdCounter
from worker.store.database import Tx, table, table_of
from worker.store.rows import ClientInstruction, Row

#: Ids for new submissions and client instructions a process draws from the sequences beyond
#: what a batch needs, for its next batches.
IDS_DRAWN_AHEAD = 256


def allocate(
    tx: Tx, wanted: Mapping[type[Row], int], *, ahead: int = 0
) -> dict[type[Row], list[int]]:
    """Ids for `wanted[row_type]` new rows of each type, ascending, with one query at most."""
    by_table = {table_of(row_type): n for row_type, n in wanted.items() if n > 0}
    if not by_table:
        return {row_type: [] for row_type in wanted}
    if tx.postgresql:
        allocated = _drawn_ahead.take(tx, by_table, ahead)
    else:
        allocated = _counted(tx, by_table)
    return {row_type: allocated.get(table_of(row_type), []) for row_type in wanted}


def _counted(tx: Tx, wanted: dict[Table, int]) -> dict[Table, list[int]]:
    """SQLite: past the largest id of each table (read once per transaction)."""
    unread = sorted(
        (t for t in wanted if ("next id", t.name) not in tx.known), key=lambda t: t.name
    )
    if unread:
        queries = [
            select(func.coalesce(func.max(t.c[_id_column(t)]), 0)).scalar_subquery() for t in unread
        ]
        found = tx.execute(select(*queries)).one()
        for t, largest in zip(unread, found, strict=True):
            tx.known[("next id", t.name)] = int(largest) + 1
    allocated: dict[Table, list[int]] = {}
    for t, n in wanted.items():
        first = tx.known[("next id", t.name)]
        allocated[t] = list(range(first, first + n))
        tx.known[("next id", t.name)] = first + n
    return allocated


class _DrawnAhead:
    """Ids drawn from PostgreSQL sequences ahead of use, by database and table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], list[int]] = {}

    def take(self, tx: Tx, wanted: dict[Table, int], ahead: int) -> dict[Table, list[int]]:
        database = tx.connection.engine.url.render_as_string(hide_password=True)
        with self._lock:
            short = {
                t: n + ahead
                for t, n in sorted(wanted.items(), key=lambda item: item[0].name)
                if len(self._kept.get((database, t.name), [])) < n
            }
            if short:
                queries = [
                    f"(SELECT array_agg(nextval('{_sequence_name(t)}')) "
                    f"FROM generate_series(1, {n}))"
                    for t, n in short.items()
                ]
                found = tx.connection.exec_driver_sql("SELECT " + ", ".join(queries)).one()
                for t, ids in zip(short, found, strict=True):
                    key = (database, t.name)
                    self._kept[key] = sorted(self._kept.get(key, []) + list(ids))
            taken: dict[Table, list[int]] = {}
            for t, n in wanted.items():
                key = (database, t.name)
                taken[t], self._kept[key] = self._kept[key][:n], self._kept[key][n:]
            return taken


_drawn_ahead = _DrawnAhead()


def _id_column(t: Table) -> str:
    column = t.autoincrement_column
    assert column is not None, f"{t.name} has no serial id"
    return column.name


def _sequence_name(t: Table) -> str:
    """The sequence behind the table's serial id (as PostgreSQL names it for BIGSERIAL)."""
    return f"{t.name}_{_id_column(t)}_seq"


def next_client_instruction_id(tx: Tx, start: int) -> int:
    """The next clientInstructionId for a request that came without one.

    Sequential, as IBKR prefers: `start - 1 + n` where n comes from a PostgreSQL sequence, or
    from the `id_counters` row on databases without sequences (SQLite, whose transaction holds
    the write lock).
    """
    if tx.postgresql:
        value = tx.execute(text(f"SELECT nextval('{CLIENT_INSTRUCTION_ID_SEQUENCE}')")).scalar_one()
    else:
        value = tx.execute(
            text("UPDATE id_counters SET value = value + 1 WHERE name = :name RETURNING value"),
            {"name": CLIENT_INSTRUCTION_ID_SEQUENCE},
        ).scalar()
        if value is None:
            tx.execute(
                insert(table(IdCounter)).values(name=CLIENT_INSTRUCTION_ID_SEQUENCE, value=1)
            )
            value = 1
    return int(start) - 1 + int(value)


def free_client_instruction_id(tx: Tx, start: int, taken: set[int]) -> int:
    """The next clientInstructionId from the sequence that no instruction of ours holds, nor
    one of `taken` (held by rows of this transaction not written yet)."""
    ids = table_of(ClientInstruction).c.client_instruction_id
    while True:
        candidate = next_client_instruction_id(tx, start)
        if candidate in taken:
            continue
        if tx.execute(select(ids).where(ids == candidate).limit(1)).first() is None:
            return candidate
