"""IBKR's view of our instructions: its instructions and sets as IBKR last showed them."""

from __future__ import annotations

from datetime import datetime

from worker import jsontext
from worker.ibkr.responses import ApiResult
from worker.redaction import mask_bank_details
from worker.status import Status
from worker.store import Tx, ibkr, tracked
from worker.store.rows import ClientInstruction, Instruction, InstructionSet, Submission
from worker.tracking.decisions import Decision


def record_ibkr_view(
    tx: Tx,
    row: ClientInstruction,
    decision: Decision,
    result: ApiResult | None,
    now: datetime,
) -> None:
    """Keep IBKR's view of the row's set and instruction (not for a CONFLICT: the transaction
    IBKR shows is not ours)."""
    if decision.to_status == Status.CONFLICT:
        return
    set_id = row.instruction_set_id
    if set_id is None:
        set_id = decision.instruction_set_id
    if set_id is not None and decision.to_status is not None:
        upsert_instruction_set(
            tx, set_id, row.submission, result.http_status if result else None, now
        )
    upsert_instruction(tx, row, decision, now, set_id)


def upsert_instruction(
    tx: Tx,
    row: ClientInstruction,
    decision: Decision,
    now: datetime,
    instruction_set_id: int | None = None,
) -> None:
    """Keep IBKR's view of the instruction (by IBKR's instructionId); `instruction_set_id` is
    the row's set (default: `row.instruction_set_id`)."""
    if decision.instruction_id is None or decision.to_status == Status.CONFLICT:
        return
    instruction = ibkr.instruction(tx, decision.instruction_id)
    if instruction is None:
        instruction = Instruction(
            instruction_id=decision.instruction_id, created_at=now, updated_at=now
        )
        ibkr.add_instruction(tx, instruction)
    instruction.client_instruction_pk = row.id
    instruction.instruction_set_id = (
        decision.instruction_set_id or instruction_set_id or row.instruction_set_id
    )
    instruction.instruction_type = row.instruction_type
    instruction.ibkr_status = decision.ibkr_status
    instruction.ib_reference_id = decision.ib_reference_id
    instruction.processed_at = decision.processed_timestamp
    if decision.result is not None:
        instruction.result = jsontext.to_plain(mask_bank_details(decision.result))
    instruction.updated_at = now


def upsert_instruction_set(
    tx: Tx,
    instruction_set_id: int,
    submission: Submission | None,
    http_status: int | None,
    now: datetime,
) -> None:
    """Keep IBKR's set: made with its submission's member count when first seen, marked as
    looked at afterwards."""
    existing = ibkr.instruction_set(tx, instruction_set_id)
    if existing is not None:
        existing.updated_at = now
        existing.last_polled_at = now
        return
    ibkr.add_set(
        tx,
        InstructionSet(
            instruction_set_id=instruction_set_id,
            submission_id=submission.id if submission else None,
            http_status=http_status,
            member_count=_member_count(tx, submission),
            created_at=now,
            updated_at=now,
        ),
    )


def _member_count(tx: Tx, submission: Submission | None) -> int:
    """A submission's members: one for a single request, else as read with it (or counted)."""
    if submission is None or not submission.is_bulk:
        return 1
    return len(submission.members) or tracked.count_members(tx, submission.id)
