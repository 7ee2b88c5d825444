"""The store's errors: what the services catch instead of SQLAlchemy's.

Every statement of the store runs inside `translated()`, which turns SQLAlchemy's exceptions
into these (the original stays as `__cause__`): a database away (`DatabaseAway`: connection
refused or lost, a pool timeout, a deadlock), a value it refuses (`ValueRefused`, SQLSTATE
class 22), a key already taken (`KeyTaken`), a row gone that was to be updated (`StaleRow`),
anything else (`DatabaseError`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc


class DatabaseError(Exception):
    """The database failed a statement: `kind` names the driver's error and `detail` is its
    own words (the first line, no SQL); the message is `kind: detail`."""

    def __init__(self, detail: str, kind: str = "DatabaseError") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.detail = detail
        self.kind = kind


class DatabaseAway(DatabaseError):
    """The database cannot be reached now (refused, lost, restarting, no connection free)."""


class ValueRefused(DatabaseError):
    """The database refuses a value (too long, out of range, NUL in text): refused every time."""


class KeyTaken(DatabaseError):
    """A unique key or a foreign key refused a row (another process stored it first)."""


class StaleRow(DatabaseError):
    """A row to be updated is no longer there."""


def _driver_words(error: BaseException) -> tuple[str, str]:
    """The driver's error name and the first line of what it said (SQLAlchemy's statement
    dump left out)."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip()
    return type(cause).__name__, text.splitlines()[0] if text else ""


_AWAY = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
)


def translate(error: exc.SQLAlchemyError) -> DatabaseError:
    """The store's error for one of SQLAlchemy's."""
    kind, detail = _driver_words(error)
    if isinstance(error, _AWAY):
        return DatabaseAway(detail, kind)
    if isinstance(error, exc.DataError):
        return ValueRefused(detail, kind)
    if isinstance(error, exc.IntegrityError):
        return KeyTaken(detail, kind)
    return DatabaseError(detail, kind)


@contextmanager
def translated() -> Iterator[None]:
    """Run a block of statements; SQLAlchemy's errors leave it as the store's."""
    try:
        yield
    except exc.SQLAlchemyError as error:
        raise translate(error) from error
