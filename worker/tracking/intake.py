"""Persist the intent of an inbound request before anything is sent.

Recognise a redelivery or a repeated clientInstructionId, assign ids for requests that came
without one, and commit RECEIVED rows (with their audit and outbox events). A request that
cannot be sent but still names a request (`checks`) ends FAILED here with the field named and
costs no API call; one that cannot even be identified is refused with `Unprocessable` (it
becomes a dead letter). New and failed requests are written the same way: their rows made
here, their ids drawn for the whole batch at once, inserted when the transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from worker import jsontext
from worker.store import Tx, tracked
from worker.store.errors import KeyTaken, ValueRefused
from worker.store.rows import ClientInstruction
from worker.tracking.checks import (
    Checked,
    Inbound,
    Unprocessable,
    check,
    check_arguments,
    member_json,
)
from worker.tracking.context import TrackingContext
from worker.tracking.decisions import (
    DUPLICATE_MESSAGE_CODE,
    DUPLICATE_REQUEST_CODE,
    same_intent,
)
from worker.tracking.intake_rows import Batch, Intake, new_request, record_failed

__all__ = [
    "Inbound",
    "Intake",
    "Received",
    "Unprocessable",
    "check_arguments",
    "receive",
    "receive_all",
]


#: What `receive_all` gives for each request: a call that returns its `Intake` (or raises
#: `Unprocessable`) once the transaction has committed, or None when the request must be
#: received on its own after that commit (an earlier request of the batch holds its ids).
Received = Callable[[], Intake] | None


def receive(
    ctx: TrackingContext,
    *,
    request: Any,
    correlation_id: Any,
    message_id: str | None,
    begin_submission: bool = False,
) -> Intake:
    """Persist the intent of one inbound request (see the module docstring).

    `begin_submission`: also mark a new request's members SUBMITTING for its first attempt in
    the same transaction (`submit.begin_attempt`), so the caller can POST right after the
    commit without another transaction.
    """
    inbound = Inbound(request, correlation_id, message_id, begin_submission)
    for attempt in range(3):
        try:
            with ctx.store.transaction() as tx:
                [finish] = receive_all(tx, ctx, [inbound])
            assert finish is not None, "a request received alone is never deferred"
            return finish()
        except ValueRefused as error:
            # The database refuses a value of this request (SQLSTATE class 22): it would refuse
            # it on every retry, so the message is set aside now instead of retried.
            detail = error.detail[:300] or error.kind
            raise Unprocessable(f"the database refused a value of the request: {detail}") from None
        except KeyTaken:
            # Another process stored the same clientInstructionId at the same moment: look again,
            # the repeat is then recognised as such.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def receive_all(tx: Tx, ctx: TrackingContext, inbounds: Sequence[Inbound]) -> list[Received]:
    """Persist the intent of several inbound requests in the caller's transaction.

    Redeliveries and owners of the clientInstructionIds are looked up with one query each for
    the whole batch, and the new rows are written when the transaction commits, so receiving
    many requests together costs a few statements, not a few per request.
    """
    checked = [check(inbound) for inbound in inbounds]
    found = tracked.look_up_received(
        tx,
        [c.inbound.message_id for c in checked],
        [i for c in checked for i in c.ids if i is not None],
    )
    batch = Batch(tx, ctx, ctx.clock.now(), ctx.clock.monotonic(), found.owners)
    received: list[Received] = []
    for item in checked:
        message_id = item.inbound.message_id
        if message_id is not None and message_id in found.fingerprints:
            fingerprint = found.fingerprints[message_id]
            if item.unprocessable is None and fingerprint not in ("", item.fingerprint):
                # The message id is the request's idempotency key: another request under it
                # is never taken for the first one, nor silently dropped.
                received.append(_done(_duplicate_message(batch, item, message_id)))
            else:
                intake = Intake("same_intent", None, found.known.get(message_id, ()))
                received.append(_done(intake))
            continue
        if item.unprocessable is not None:
            received.append(_raise(item.unprocessable))
            continue
        given = {i for i in item.ids if i is not None}
        if (message_id is not None and message_id in batch.held_messages) or (
            given & batch.held_ids
        ):
            received.append(None)
            continue
        batch.held_ids |= given
        if message_id is not None:
            batch.held_messages.add(message_id)
        received.append(_receive(batch, item))
    batch.insert()
    return received


def _done(intake: Intake) -> Callable[[], Intake]:
    return lambda: intake


def _raise(error: Unprocessable) -> Callable[[], Intake]:
    def finish() -> Intake:
        raise error

    return finish


def _duplicate_message(batch: Batch, item: Checked, message_id: str) -> Intake:
    """Record a request that came under a message id another request already used: FAILED
    (DUPLICATE_MESSAGE_ID), nothing sent."""
    problem = (
        f"message id {message_id} was already used for a different request; a message id "
        "names one request (publish a new request with a new message id)"
    )
    return record_failed(batch, item, problem, code=DUPLICATE_MESSAGE_CODE, first_of_message=False)


def _receive(batch: Batch, item: Checked) -> Callable[[], Intake]:
    """Receive one checked request; its new rows join the batch's. The rows are this
    process's (its lease) until the scheduler's first look at them."""
    parsed = item.parsed
    if parsed is None:
        assert item.problem is not None
        return _done(record_failed(batch, item, item.problem))
    ids_given = list(item.ids)
    given = [i for i in ids_given if i is not None]
    if len(set(given)) != len(given):
        problem = "instructions: a clientInstructionId appears more than once in this bulk request"
        return _done(record_failed(batch, item, problem))
    owners = {i: batch.owners[i] for i in given if i in batch.owners}
    if owners:
        repeats = [
            owners.get(i) is not None
            and same_intent(
                _stored_member_json(owners[i]) or "",
                member_json(parsed.instruction_type, parsed.members[index]),
            )
            for index, i in enumerate(ids_given)
            if i is not None
        ]
        if len(owners) == len(ids_given) and all(repeats):
            return _done(Intake("same_intent", None, tuple(int(i) for i in given)))
        used = ", ".join(str(i) for i in sorted(owners))
        problem = (
            f"clientInstructionId {used} is already used by another request; a "
            "clientInstructionId is never reused for a different request"
        )
        return _done(record_failed(batch, item, problem, code=DUPLICATE_REQUEST_CODE))
    final_ids = [int(i) if i is not None else batch.free_id() for i in ids_given]
    return new_request(batch, item, parsed, final_ids)


def _stored_member_json(owner: ClientInstruction) -> str | None:
    submission = owner.submission
    if submission is None:
        return None
    body = jsontext.loads(submission.request_json)
    if not isinstance(body, dict):
        return None
    member = body["instructions"][owner.position] if submission.is_bulk else body.get("instruction")
    return member_json(submission.instruction_type, member) if isinstance(member, dict) else None
