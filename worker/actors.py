"""The thin dramatiq edge: decode a message, hand it to tracking, and set aside what cannot be
processed. Actors are declared on a broker passed in (nothing is read at import time)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from worker import jsontext
from worker.broker import ACTOR_NAME, QUEUE_NAME
from worker.inbound.context import MessageContext
from worker.inbound.edge import arrival_of
from worker.inbound.retries import Retrier
from worker.logging import get_logger
from worker.store import Tx
from worker.store.group import GroupCommit, StepKind
from worker.tracking.checks import MAX_CORRELATION_ID
from worker.tracking.context import TrackingContext
from worker.tracking.deadletters import record_dead_letter
from worker.tracking.intake import (
    Inbound,
    Intake,
    Received,
    Unprocessable,
    check_arguments,
    receive,
    receive_all,
)
from worker.tracking.submit import (
    Answer,
    post,
    record,
    record_answers,
    release_unfinished,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class GroupedSteps:
    """The worker's two database steps, run in shared transactions by `group`."""

    group: GroupCommit
    receive: StepKind[Inbound, Intake]
    record: StepKind[Answer, None]


def grouped_steps(ctx: TrackingContext, group: GroupCommit) -> GroupedSteps:
    """Receiving requests and recording answers through `group` (see `store.group`)."""

    def receive_batch(tx: Tx, items: Sequence[Inbound]) -> list[Received]:
        return receive_all(tx, ctx, items)

    def receive_alone(item: Inbound) -> Intake:
        return receive(
            ctx,
            request=item.request,
            correlation_id=item.correlation_id,
            message_id=item.message_id,
            begin_submission=item.begin_submission,
        )

    def record_batch(tx: Tx, answers: Sequence[Answer]) -> list[Callable[[], None]]:
        record_answers(tx, ctx, answers)
        return [_nothing] * len(answers)

    return GroupedSteps(
        group,
        StepKind("receive", receive_batch, receive_alone),
        StepKind("record", record_batch, partial(record, ctx)),
    )


def _nothing() -> None:
    return None


def handle_message(
    ctx: TrackingContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: Any,
    steps: GroupedSteps | None = None,
    *,
    in_hand_elsewhere: bool = False,
) -> None:
    """Process one inbound message: persist the intent, then submit it (or record why not).

    `steps`: run the database steps in transactions shared with other threads (the worker);
    without it each step has a transaction of its own. `in_hand_elsewhere`: another thread
    already handles the same message (`MessageContext`), so what it left unfinished is not
    this one's to release.
    """
    # A message without an id reaches us with an empty one (see `worker.broker`): no id.
    message_id = getattr(message, "message_id", None) or None
    try:
        request, correlation_id = check_arguments(args, kwargs)
        # RECEIVED and SUBMITTING commit together: one transaction fewer before the POST. The
        # connection permit comes first, so the POST leaves right after that commit.
        inbound = Inbound(request, correlation_id, message_id, begin_submission=True)
        with ctx.ibkr.permit():
            if steps is not None:
                intake = steps.group.run(steps.receive, inbound)
            else:
                intake = receive(
                    ctx,
                    request=request,
                    correlation_id=correlation_id,
                    message_id=message_id,
                    begin_submission=True,
                )
            answer = (
                post(ctx, intake.attempt)
                if intake.disposition == "new" and intake.attempt is not None
                else None
            )
    except Unprocessable as error:
        # The bytes as received (the edge kept them); a message built in this process has none.
        arrival = arrival_of(message)
        body: bytes | str
        if arrival is not None:
            body = arrival.kept_bytes
        else:
            try:
                body = message.encode() if message is not None else jsontext.dumps(kwargs)
            except (TypeError, ValueError):
                body = repr(kwargs)
        record_dead_letter(
            ctx.store,
            body=body,
            reason=error.reason,
            now=ctx.clock.now(),
            message_id=message_id,
            queue_name=QUEUE_NAME,
            received_bytes=arrival.size_bytes if arrival is not None else None,
        )
        return
    if answer is not None:
        # The client logged the call (one line per message that went out), with the message
        # id bound by `MessageContext` and the submission bound by `post`.
        if steps is not None:
            steps.group.run(steps.record, answer)
        else:
            record(ctx, answer)
        return
    log.info(
        "request received",
        disposition=intake.disposition,
        client_instruction_ids=list(intake.client_instruction_ids[:20]),
    )
    if intake.disposition == "same_intent" and message_id is not None and not in_hand_elsewhere:
        # Handled again (a retry after our own failure): what this process left half-done is
        # resolved by the scheduler now rather than when its lease runs out.
        released = release_unfinished(ctx, message_id)
        if released:
            log.info("unfinished submission handed to the scheduler")


def declare_actors(
    broker: dramatiq.Broker, ctx: TrackingContext, group: GroupCommit | None = None
) -> dramatiq.Actor[Any, None]:
    """Declare `submit_instruction` on `broker`, bound to the tracking context `ctx` (with
    `group`, its threads share transactions), and add `MessageContext` to `broker` (once)."""
    steps = grouped_steps(ctx, group) if group is not None else None
    retrier = Retrier.for_database(ctx.store, ctx.clock, QUEUE_NAME)
    if not any(isinstance(m, MessageContext) for m in broker.middleware):
        broker.add_middleware(MessageContext(max_correlation_id_chars=MAX_CORRELATION_ID))

    def submit_instruction(*args: Any, **kwargs: Any) -> None:
        message = CurrentMessage.get_current_message()
        handled = MessageContext.current()
        in_hand_elsewhere = handled is not None and handled.in_hand_elsewhere
        # A refused message is set aside without reaching tracking; anything that raises out
        # of tracking is retried by our count, never by dramatiq (see `inbound.retries`).
        retrier.run(
            arrival_of(message),
            str(getattr(message, "message_id", "") or ""),
            bool(getattr(message, "redelivered", False)),
            lambda: handle_message(
                ctx, args, kwargs, message, steps, in_hand_elsewhere=in_hand_elsewhere
            ),
        )

    actor: dramatiq.Actor[Any, None] = dramatiq.actor(
        broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME
    )(submit_instruction)
    return actor


def declare_producer_actor(broker: dramatiq.Broker) -> dramatiq.Actor[Any, None]:
    """The same actor name on a producer's broker, for `send_with_options` (never executed)."""

    def submit_instruction(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("producers only enqueue submit_instruction; the worker executes it")

    actor: dramatiq.Actor[Any, None] = dramatiq.actor(
        broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME
    )(submit_instruction)
    return actor
