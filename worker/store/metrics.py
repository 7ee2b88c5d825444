"""The state figures the metrics serve, read in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from models.tables import OutboxEvent
from worker.store.database import Tx, table, table_of
from worker.store.rows import ClientInstruction, DeadLetter

_M = table_of(ClientInstruction).c
_OUTBOX = table(OutboxEvent)


@dataclass(frozen=True)
class StateFigures:
    """Instructions by status, overdue and applied twice; the oldest not final; dead letters;
    the outbox backlog and its oldest event."""

    by_status: dict[str, int]
    overdue: int
    oldest_pending_at: datetime | None
    dead_letters: int
    applied_twice: int
    outbox_backlog: int
    oldest_unpublished_at: datetime | None


def state_figures(tx: Tx) -> StateFigures:
    """The figures as the database holds them now."""
    by_status = {
        status: int(count)
        for status, count in tx.execute(select(_M.status, func.count()).group_by(_M.status))
    }
    overdue = tx.execute(
        select(func.count()).where(_M.overdue_at.is_not(None), _M.final_at.is_(None))
    ).scalar_one()
    oldest = tx.execute(
        select(func.min(_M.created_at)).where(_M.next_poll_at.is_not(None))
    ).scalar_one()
    letters = tx.execute(select(func.count()).select_from(table_of(DeadLetter))).scalar_one()
    twice = tx.execute(select(func.count()).where(_M.applied_twice_at.is_not(None))).scalar_one()
    backlog, oldest_event = tx.execute(
        select(func.count(), func.min(_OUTBOX.c.created_at)).where(_OUTBOX.c.published_at.is_(None))
    ).one()
    return StateFigures(
        by_status, int(overdue), oldest, int(letters), int(twice), int(backlog), oldest_event
    )
