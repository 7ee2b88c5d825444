"""Dead letters, their original bytes, and the failure counts of inbound messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select

from worker.store.database import Tx, table_of
from worker.store.ids import allocate
from worker.store.rows import DeadLetter, DeadLetterOriginal, MessageFailure

_LETTERS = table_of(DeadLetter)
_ORIGINALS = table_of(DeadLetterOriginal)
_FAILURES = table_of(MessageFailure)


def same_letter(tx: Tx, message_id: str | None, digest: str, size: int) -> DeadLetter | None:
    """The newest letter of the same message (same message id, or none, and the same bytes);
    adopted."""
    c = _LETTERS.c
    same_id = c.message_id == message_id if message_id is not None else c.message_id.is_(None)
    query = (
        select(*_LETTERS.columns)
        .where(same_id, c.body_sha256 == digest, c.body_size == size)
        .order_by(c.id.desc())
        .limit(1)
    )
    found = tx.read(DeadLetter, query, adopt=True)
    return found[0] if found else None


def add_letter(tx: Tx, letter: DeadLetter, original: bytes | None) -> int:
    """Insert a new letter (and its original bytes, when kept) at the commit; returns its id."""
    [letter.id] = allocate(tx, {DeadLetter: 1})[DeadLetter]
    tx.insert(letter)
    if original is not None:
        tx.insert(DeadLetterOriginal(dead_letter_id=letter.id, body=original))
    return letter.id


def letters(tx: Tx, ids: Iterable[int]) -> dict[int, DeadLetter]:
    """The letters with these ids (those that exist), adopted."""
    query = select(*_LETTERS.columns).where(tx.one_of(_LETTERS.c.id, ids))
    found = tx.read(DeadLetter, query, adopt=True)
    return {letter.id: letter for letter in found}


def listed(tx: Tx, limit: int) -> list[DeadLetter]:
    """The oldest `limit` letters."""
    return tx.read(DeadLetter, select(*_LETTERS.columns).order_by(_LETTERS.c.id).limit(limit))


def originals(tx: Tx, ids: Iterable[int]) -> dict[int, bytes]:
    """The original bytes kept of these letters, by letter id."""
    c = _ORIGINALS.c
    query = select(c.dead_letter_id, c.body).where(tx.one_of(c.dead_letter_id, ids))
    return {letter_id: bytes(body) for letter_id, body in tx.execute(query)}


def failure(tx: Tx, key: str) -> MessageFailure | None:
    """The failure count of a message, locked; adopted."""
    query = tx.locked(select(*_FAILURES.columns).where(_FAILURES.c.key == key))
    found = tx.read(MessageFailure, query, adopt=True)
    return found[0] if found else None


def add_failure(tx: Tx, row: MessageFailure) -> None:
    """A first failure count of a message, inserted at the commit."""
    tx.insert(row)


def forget_failures(tx: Tx, keys: Sequence[str]) -> None:
    """Delete the failure counts of these messages (a fresh count for each)."""
    tx.execute(delete(_FAILURES).where(tx.one_of(_FAILURES.c.key, keys)))
