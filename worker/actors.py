"""The thin dramatiq edge: decode a message, hand it to tracking, and set aside what cannot be
processed. Actors are declared on a broker passed in (nothing is read at import time)."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from worker import jsontext
from worker.broker import ACTOR_NAME, QUEUE_NAME
from worker.logging import get_logger
from worker.tracking.context import TrackingContext
from worker.tracking.deadletters import record_dead_letter
from worker.tracking.intake import Unprocessable, check_arguments, receive
from worker.tracking.submit import send

log = get_logger(__name__)


def handle_message(
    ctx: TrackingContext, args: tuple[Any, ...], kwargs: dict[str, Any], message: Any
) -> None:
    """Process one inbound message: persist the intent, then submit it (or record why not)."""
    message_id = getattr(message, "message_id", None)
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
