"""The thin dramatiq edge: decode a message, hand it to tracking, and set aside what cannot be
processed. Actors are declared on a broker passed in (nothing is read at import time)."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from worker import jsontext
from worker.broker import ACTOR_NAME, QUEUE_NAME
from worker.logging import get_logger
from worker.tracking.context import TrackingContext
from worker.tracking.deadletters import record_dead_letter
from worker.tracking.intake import Unprocessable, check_arguments, receive
from worker.tracking.submit import release_unfinished, send

log = get_logger(__name__)


# Messages being handled in this process: a copy redelivered meanwhile must not take over.
_in_hand: set[str] = set()
_in_hand_lock = threading.Lock()


def handle_message(
    ctx: TrackingContext, args: tuple[Any, ...], kwargs: dict[str, Any], message: Any
) -> None:
    """Process one inbound message: persist the intent, then submit it (or record why not)."""
    message_id = getattr(message, "message_id", None)
    if message_id is None:
        _handle(ctx, args, kwargs, message, None, in_hand_by_another_thread=False)
        return
    with _in_hand_lock:
        in_hand_by_another_thread = message_id in _in_hand
        _in_hand.add(message_id)
    try:
        _handle(
            ctx,
            args,
            kwargs,
            message,
            message_id,
            in_hand_by_another_thread=in_hand_by_another_thread,
        )
    finally:
        if not in_hand_by_another_thread:
            with _in_hand_lock:
                _in_hand.discard(message_id)


def _handle(
    ctx: TrackingContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: Any,
    message_id: str | None,
    *,
    in_hand_by_another_thread: bool,
) -> None:
    try:
        request, correlation_id = check_arguments(args, kwargs)
        # RECEIVED and SUBMITTING commit together: one transaction fewer before the POST.
        intake = receive(
            ctx,
            request=request,
            correlation_id=correlation_id,
            message_id=message_id,
            begin_submission=True,
        )
    except Unprocessable as error:
        body: bytes | str
        try:
            body = message.encode() if message is not None else jsontext.dumps(kwargs)
        except (TypeError, ValueError):
            body = repr(kwargs)
        record_dead_letter(
            ctx.session_factory,
            body=body,
            reason=error.reason,
            now=ctx.clock.now(),
            message_id=message_id,
            queue_name=QUEUE_NAME,
        )
        return
    log.info(
        "request received",
        message_id=message_id,
        disposition=intake.disposition,
        client_instruction_ids=list(intake.client_instruction_ids[:20]),
    )
    if intake.disposition == "new" and intake.attempt is not None:
        send(ctx, intake.attempt.submission_id, attempt=intake.attempt)
    elif (
        intake.disposition == "same_intent"
        and message_id is not None
        and not in_hand_by_another_thread
    ):
        # Handled again (a retry after our own failure): what this process left half-done is
        # resolved by the scheduler now rather than when its lease runs out.
        released = release_unfinished(ctx, message_id)
        if released:
            log.info("unfinished submission handed to the scheduler", message_id=message_id)


def declare_actors(broker: dramatiq.Broker, ctx: TrackingContext) -> dramatiq.Actor[Any, None]:
    """Declare `submit_instruction` on `broker`, bound to the tracking context `ctx`."""

    def submit_instruction(*args: Any, **kwargs: Any) -> None:
        handle_message(ctx, args, kwargs, CurrentMessage.get_current_message())

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
