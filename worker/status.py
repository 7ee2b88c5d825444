"""The statuses a tracked instruction goes through: one vocabulary for the database, the
decisions, the queries, the metrics and the events.

`RECEIVED` and `SUBMITTING` are ours (nothing IBKR has said yet), `PENDING` and
`PENDING_VERIFICATION` IBKR's words for "not final yet", `PROCESSED` and `REJECTED` IBKR's final
answers, `FAILED` and `CONFLICT` our own final verdicts. `Status` is a `str` enum: a member
equals its name, so rows, JSON and IBKR's answers compare with it directly.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "RECEIVED"
    SUBMITTING = "SUBMITTING"
    PENDING = "PENDING"
    PENDING_VERIFICATION = "PENDING_VERIFICATION"
    PROCESSED = "PROCESSED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    CONFLICT = "CONFLICT"


#: Nothing changes a row in one of these again (but a second look, see `tracking.poll`).
FINAL = frozenset({Status.PROCESSED, Status.REJECTED, Status.FAILED, Status.CONFLICT})
#: Rows the scheduler still follows.
NOT_FINAL = frozenset(
    {Status.RECEIVED, Status.SUBMITTING, Status.PENDING, Status.PENDING_VERIFICATION}
)
#: Not sent yet, or sent without a known outcome: the rows a POST (or its lookup) is for.
SENDING = frozenset({Status.RECEIVED, Status.SUBMITTING})
#: What IBKR answers while it is not done.
IBKR_NOT_FINAL = frozenset({Status.PENDING, Status.PENDING_VERIFICATION})
#: Statuses IBKR can report.
IBKR = frozenset({Status.PENDING, Status.PENDING_VERIFICATION, Status.PROCESSED, Status.REJECTED})
#: Statuses only we set.
LOCAL = frozenset({Status.RECEIVED, Status.SUBMITTING, Status.FAILED, Status.CONFLICT})
