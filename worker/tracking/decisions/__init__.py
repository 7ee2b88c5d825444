"""Pure: from what we know of an instruction and what IBKR answered, decide what happens next.

No I/O here. Every function takes plain values (the tracked facts and a parsed `ApiResult`) and
returns a `Decision`: the next tracked status (or none), the audit reason, the ids and result to
record, and the next step (done, poll, resolve a lost answer, resend, retry after an error).

By concern: `model` (the values), `answers` (one instruction result, shared by all), `post`
(the answer to our POST), `ownership` (whose transaction a status answer describes) and
`lookup` (status answers: a client instruction, an instruction set).
"""

from worker.tracking.decisions.answers import adopt, member_result
from worker.tracking.decisions.lookup import ABSENCE_CONFIRM_GAP_S, after_lookup, after_set_read
from worker.tracking.decisions.model import (
    APPLIED_TWICE_CODE,
    CONFLICT_CODE,
    DUPLICATE_MESSAGE_CODE,
    DUPLICATE_POST_CODE,
    DUPLICATE_REQUEST_CODE,
    FINAL_STATUSES,
    INVALID_ARGUMENT_CODE,
    INVALID_REQUEST_CODE,
    NOT_FINAL_IBKR_STATUSES,
    Action,
    AttemptFate,
    Decision,
    Tracked,
)
from worker.tracking.decisions.ownership import (
    business_content,
    business_mismatch,
    reconcile,
    same_intent,
)
from worker.tracking.decisions.post import after_submit

__all__ = [
    "ABSENCE_CONFIRM_GAP_S",
    "APPLIED_TWICE_CODE",
    "CONFLICT_CODE",
    "DUPLICATE_MESSAGE_CODE",
    "DUPLICATE_POST_CODE",
    "DUPLICATE_REQUEST_CODE",
    "FINAL_STATUSES",
    "INVALID_ARGUMENT_CODE",
    "INVALID_REQUEST_CODE",
    "NOT_FINAL_IBKR_STATUSES",
    "Action",
    "AttemptFate",
    "Decision",
    "Tracked",
    "adopt",
    "after_lookup",
    "after_set_read",
    "after_submit",
    "business_content",
    "business_mismatch",
    "member_result",
    "reconcile",
    "same_intent",
]
