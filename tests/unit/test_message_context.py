"""`MessageContext` on dramatiq's StubBroker with real worker threads: the ids bound to the log
for one message's duration only, and a second delivery of a message still in hand told so."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import structlog
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import JSONEncoder

from worker.inbound.context import HandledMessage, MessageContext

QUEUE = "context-test"


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    # dramatiq's own encoder: the edge's (process-wide, once a worker broker was made) decodes
    # every message as one for the worker's actor.
    encoder = dramatiq.get_encoder()
    dramatiq.set_encoder(JSONEncoder())
    stub = StubBroker(middleware=[MessageContext(max_correlation_id_chars=16)])
    stub.emit_after("process_boot")
    yield stub
    stub.close()
    dramatiq.set_encoder(encoder)


def context_of(broker: StubBroker) -> MessageContext:
    [middleware] = [m for m in broker.middleware if isinstance(m, MessageContext)]
    return middleware


def run(broker: StubBroker, threads: int, send: Callable[[], None]) -> None:
    worker = Worker(broker, worker_threads=threads, worker_timeout=20)
    worker.start()
    try:
        send()
        broker.join(QUEUE, fail_fast=True)
        worker.join()
    finally:
        worker.stop()


def test_the_ids_are_bound_while_the_message_is_handled_and_cleared_after(
    broker: StubBroker,
) -> None:
    seen: list[tuple[dict[str, Any], HandledMessage | None]] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def handle(label: str, correlation_id: Any = None) -> None:
        seen.append((structlog.contextvars.get_contextvars(), MessageContext.current()))
        if label == "fails":
            raise RuntimeError("the handling failed")

    first = handle.message("fails", correlation_id="order-7")
    second = handle.message("plain")
    third = handle.message("odd", correlation_id="x" * 17)  # longer than the limit: not bound

    def send() -> None:
        for message in (first, second, third):
            broker.enqueue(message)

    # One thread: the later messages run where the earlier ones' context was bound.
    run(broker, 1, send)
    assert [bound for bound, _ in seen] == [
        {"message_id": first.message_id, "correlation_id": "order-7"},
        {"message_id": second.message_id},
        {"message_id": third.message_id},
    ]
    assert [handled for _, handled in seen] == [
        HandledMessage(first.message_id, "order-7", in_hand_elsewhere=False),
        HandledMessage(second.message_id, None, in_hand_elsewhere=False),
        HandledMessage(third.message_id, None, in_hand_elsewhere=False),
    ]
    assert context_of(broker).in_hand() == frozenset()


def test_a_second_delivery_of_a_message_in_hand_on_another_thread_is_told_so(
    broker: StubBroker,
) -> None:
    """Guard: the in-hand check in `MessageContext.before_process_message` (report False
    always and both deliveries believe they are the only one: the first then waits in vain)."""
    second_began = threading.Event()
    told: list[bool] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def handle() -> None:
        handled = MessageContext.current()
        assert handled is not None
        with lock:
            told.append(handled.in_hand_elsewhere)
        if handled.in_hand_elsewhere:
            second_began.set()
        else:  # the first delivery stays in hand until the copy has begun
            second_began.wait(3)

    message = handle.message()

    def deliver_twice() -> None:
        broker.enqueue(message)
        broker.enqueue(message)  # RabbitMQ's redelivery after a lost connection, say

    run(broker, 2, deliver_twice)
    assert sorted(told) == [False, True]
    assert second_began.is_set()
    assert context_of(broker).in_hand() == frozenset()


def test_a_message_without_an_id_binds_nothing_and_is_never_in_hand(
    broker: StubBroker,
) -> None:
    middleware = context_of(broker)
    proxy: Any = type("Proxy", (), {"message_id": "", "kwargs": {}})()
    middleware.before_process_message(broker, proxy)
    try:
        assert MessageContext.current() == HandledMessage(None, None, in_hand_elsewhere=False)
        assert structlog.contextvars.get_contextvars() == {}
        assert middleware.in_hand() == frozenset()
    finally:
        middleware.after_skip_message(broker, proxy)
    assert MessageContext.current() is None
