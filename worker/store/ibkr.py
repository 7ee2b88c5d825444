"""IBKR's instructions and sets as the store keeps them (`instructions`, `instruction_sets`).

A transaction looks them up by IBKR's ids once (several answers recorded together: one query
per table for all of them) and remembers what it found, what is not there, and what it
created, so the next member of the same set finds the row made for the first without a query.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from worker.store.database import Tx, table_of
from worker.store.rows import Instruction, InstructionSet

_INSTRUCTIONS = table_of(Instruction)
_SETS = table_of(InstructionSet)
_KNOWN_INSTRUCTIONS = "ibkr instructions"
_KNOWN_SETS = "ibkr sets"


def _known_instructions(tx: Tx) -> dict[int, Instruction | None]:
    known: dict[int, Instruction | None] = tx.known.setdefault(_KNOWN_INSTRUCTIONS, {})
    return known


def _known_sets(tx: Tx) -> dict[int, InstructionSet | None]:
    known: dict[int, InstructionSet | None] = tx.known.setdefault(_KNOWN_SETS, {})
    return known


def look_up(tx: Tx, *, instruction_ids: Iterable[int], set_ids: Iterable[int]) -> None:
    """Read IBKR's instructions and sets by id, one query per table, for this transaction
    (the rows found are adopted: changes to them are written at the commit)."""
    instructions, sets = _known_instructions(tx), _known_sets(tx)
    wanted_instructions = {i for i in instruction_ids if i not in instructions}
    wanted_sets = {i for i in set_ids if i not in sets}
    if wanted_instructions:
        instructions.update(dict.fromkeys(wanted_instructions))
        query = select(*_INSTRUCTIONS.columns).where(
            tx.one_of(_INSTRUCTIONS.c.instruction_id, wanted_instructions)
        )
        for row in tx.read(Instruction, query, adopt=True):
            instructions[row.instruction_id] = row
    if wanted_sets:
        sets.update(dict.fromkeys(wanted_sets))
        query = select(*_SETS.columns).where(tx.one_of(_SETS.c.instruction_set_id, wanted_sets))
        for found in tx.read(InstructionSet, query, adopt=True):
            sets[found.instruction_set_id] = found


def instruction(tx: Tx, instruction_id: int) -> Instruction | None:
    """IBKR's instruction `instruction_id` as this transaction knows it (read if need be)."""
    if instruction_id not in _known_instructions(tx):
        look_up(tx, instruction_ids=[instruction_id], set_ids=())
    return _known_instructions(tx)[instruction_id]


def instruction_set(tx: Tx, instruction_set_id: int) -> InstructionSet | None:
    """IBKR's set `instruction_set_id` as this transaction knows it (read if need be)."""
    if instruction_set_id not in _known_sets(tx):
        look_up(tx, instruction_ids=(), set_ids=[instruction_set_id])
    return _known_sets(tx)[instruction_set_id]


def add_instruction(tx: Tx, row: Instruction) -> None:
    """A new instruction of IBKR's, inserted at the commit with the values it holds then."""
    tx.insert(row)
    _known_instructions(tx)[row.instruction_id] = row


def add_set(tx: Tx, row: InstructionSet) -> None:
    """A new set of IBKR's, inserted at the commit with the values it holds then."""
    tx.insert(row)
    _known_sets(tx)[row.instruction_set_id] = row
