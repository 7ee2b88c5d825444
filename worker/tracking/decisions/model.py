"""The values the decisions take and return: what we know of an instruction (`Tracked`), what to
do next (`Decision`, `Action`, `AttemptFate`) and the error codes they record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

FINAL_STATUSES = frozenset({"PROCESSED", "REJECTED", "FAILED", "CONFLICT"})
NOT_FINAL_IBKR_STATUSES = frozenset({"PENDING", "PENDING_VERIFICATION"})
DUPLICATE_POST_CODE = "CORRUPT_DATA_DUBPLICATE_CP"
CONFLICT_CODE = "CLIENT_INSTRUCTION_ID_CONFLICT"
DUPLICATE_REQUEST_CODE = "DUPLICATE_CLIENT_INSTRUCTION_ID"
INVALID_REQUEST_CODE = "INVALID_REQUEST"
INVALID_ARGUMENT_CODE = "INVALID_ARGUMENT"
DUPLICATE_MESSAGE_CODE = "DUPLICATE_MESSAGE_ID"
APPLIED_TWICE_CODE = "APPLIED_TWICE"


class Action(StrEnum):
    """The next step for an instruction."""

    DONE = "done"  # final: nothing more to do
    POLL = "poll"  # pending at IBKR: look again on the type's cadence
    RESOLVE = "resolve"  # our POST's outcome is unknown: GET /client-instructions/{id}
    RESEND = "resend"  # IBKR has not got it: POST again, same clientInstructionId and body
    RETRY = "retry"  # an error (429, 5xx, lost answer) interrupted a look: look again later


class AttemptFate(StrEnum):
    """What an answer shows about the latest attempt to send the instruction."""

    UNCHANGED = "unchanged"  # nothing new about it (a poll of an instruction IBKR has)
    OPEN = "open"  # it may still register: its answer is unknown (lost, 5xx, ...)
    REGISTERED = "registered"  # IBKR has a transaction for it
    NOT_REGISTERED = "not_registered"  # it never left, or IBKR refused it before registering


@dataclass(frozen=True)
class Tracked:
    """What we know of one client instruction when an answer arrives.

    `inflight_until`: until when the latest attempt may still register at IBKR (None: no
    attempt is open); `absent_since`: when IBKR was first seen not to know the id after that;
    `sent_attempts`: attempts that left and were not refused outright (two of them may both
    have registered); `expected`: the business content of our request (accounts, amount,
    currency, asset), to tell our transaction from another's under the same id.
    """

    client_instruction_id: int
    instruction_type: str
    status: str
    attempt_count: int
    instruction_set_id: int | None = None
    inflight_until: datetime | None = None
    absent_since: datetime | None = None
    sent_attempts: int = 0
    instruction_id: int | None = None
    applied_twice: bool = False
    expected: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """What to record and what to do next.

    `to_status` None keeps the current status (no event); `is_error` marks answers that consume
    the error budget (a 5xx, 429 or lost answer), never "still pending".
    """

    action: Action
    reason: str
    to_status: str | None = None
    instruction_id: int | None = None
    instruction_set_id: int | None = None
    ib_reference_id: int | None = None
    ibkr_status: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None
    retry_after_s: float | None = None
    is_error: bool = False
    processed_timestamp: str | None = None
    extra_audit: dict[str, Any] = field(default_factory=dict)
    #: What this answer shows about the latest attempt (see AttemptFate).
    fate: AttemptFate = AttemptFate.UNCHANGED
    #: Look again exactly then (instead of the cadence the action implies).
    look_at: datetime | None = None
    #: Record that IBKR does not know the id (first 404 after the attempt's horizon).
    absent_since: datetime | None = None
    #: IBKR shows two transactions of ours under the id: what it shows (for the audit).
    applied_twice: dict[str, Any] | None = None
