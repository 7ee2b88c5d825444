"""The inbound edge on dramatiq's stub broker (worker.inbound.edge) and our own retries
(worker.inbound.retries): options never act, a message without an id stays without one, the
held-bytes budget bounds what is in hand, failures are counted by message id and end in a
dead letter with the reason."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.middleware import CurrentMessage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import DeadLetter, MessageFailure
from tests.unit.tracking_support import (
    ScriptedIbkr,
    answer,
    envelope,
    make_context,
    sessions,
    transfer,
)
from worker.actors import declare_actors
from worker.broker import ACTOR_NAME, QUEUE_NAME, make_broker
from worker.clock import ManualClock
from worker.inbound.arrival import inspect
from worker.inbound.edge import HeldBytes, arrival_of, install_encoder
from worker.inbound.retries import (
    OTHER_FAILURES,
    SERVICE_AWAY_FAILURES,
    Retrier,
    backoff_s,
)
from worker.store import Store
from worker.store.errors import DatabaseAway

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def raw_message(kwargs: dict[str, Any], **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "queue_name": QUEUE_NAME,
        "actor_name": ACTOR_NAME,
        "args": [],
        "kwargs": kwargs,
        "options": {},
        "message_id": "m-1",
        "message_timestamp": 1,
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.fixture
def probe() -> Iterator[tuple[dramatiq.Broker, list[Any], Worker]]:
    """An edge stub broker whose actor records each message it is handed (and sleeps 50 ms)."""
    seen: list[Any] = []
    broker = make_broker("stub://", held_bytes=10_000)

    def submit_instruction(*args: Any, **kwargs: Any) -> None:
        message = CurrentMessage.get_current_message()
        seen.append((message.message_id, message.queue_name, dict(message.options), kwargs))
        time.sleep(0.05)

    dramatiq.actor(broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME)(submit_instruction)
    worker = Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    yield broker, seen, worker
    worker.stop()
    broker.close()


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_producer_options_are_dropped_before_dramatiq_sees_them(probe: Any) -> None:
    """Revert check: with the options passed through by `EdgeEncoder.decode`, the eta holds the
    message back (and the next assertion times out)."""
    broker, seen, _ = probe
    far = int(time.time() * 1000) + 10**9
    options = {"eta": far, "time_limit": 1, "pipe_target": {"x": 1}, "on_failure": "x"}
    broker.queues[QUEUE_NAME].put(raw_message({"request": {"a": 1}}, options=options))
    wait_until(lambda: len(seen) == 1)
    message_id, queue_name, kept_options, kwargs = seen[0]
    assert (message_id, queue_name, kwargs) == ("m-1", QUEUE_NAME, {"request": {"a": 1}})
    assert list(kept_options) == ["ibkr_worker_arrival"]


def test_a_delay_queue_message_is_handled_at_once_and_acknowledged_there(probe: Any) -> None:
    broker, seen, _ = probe
    broker.enqueue(
        dramatiq.Message(
            queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(), kwargs={}, options={}
        ),
        delay=10**9,
    )
    wait_until(lambda: len(seen) == 1)
    assert seen[0][1] == QUEUE_NAME + ".DQ"
    broker.join(QUEUE_NAME + ".DQ", timeout=5000)  # acknowledged on the queue it came from


def test_a_message_without_an_id_reaches_the_actor_with_an_empty_one(probe: Any) -> None:
    broker, seen, _ = probe
    broker.queues[QUEUE_NAME].put(raw_message({"request": {}}, message_id=...))
    broker.queues[QUEUE_NAME].put(raw_message({"request": {}}, message_id=""))
    wait_until(lambda: len(seen) == 2)
    assert [entry[0] for entry in seen] == ["", ""]


def test_the_held_bytes_budget_bounds_the_messages_in_hand(probe: Any) -> None:
    """Each message holds more than half the 10,000-byte budget: one at a time is in hand,
    though four threads wait. Revert check: with `HeldBytes.take` not waiting, several are."""
    broker, seen, _ = probe
    held: HeldBytes = broker.edge_limits.held_bytes
    peak = [0]

    def watch() -> None:
        while len(seen) < 6:
            peak[0] = max(peak[0], held.held_bytes)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    body = raw_message({"request": {"note": "x" * 2_600}})
    cost = inspect(body, max_message_bytes=2**21, actor_name=ACTOR_NAME)[0].held_bytes
    assert 5_000 < cost <= 10_000
    for _ in range(6):
        broker.queues[QUEUE_NAME].put(body)
    wait_until(lambda: len(seen) == 6)
    watcher.join()
    assert peak[0] == cost
    wait_until(lambda: held.held_bytes == 0)


def test_a_message_larger_than_the_budget_is_let_in_alone() -> None:
    held = HeldBytes(100)
    held.take(1_000)
    taken = threading.Event()
    thread = threading.Thread(target=lambda: (held.take(1), taken.set()))
    thread.start()
    assert not taken.wait(0.1)
    held.give(1_000)
    assert taken.wait(2)
    thread.join()


# --- our retries -------------------------------------------------------------------------------


class RecordingClock(ManualClock):
    def __init__(self) -> None:
        super().__init__(NOW)
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


def database_away() -> DatabaseAway:
    """What the store raises when the database refuses connections."""
    return DatabaseAway("connection refused", "ConnectionRefusedError")


def arrival(kwargs: dict[str, Any] | None = None, message_id: str = "m-1") -> Any:
    raw = raw_message(kwargs or {"request": {}}, message_id=message_id)
    return inspect(raw, max_message_bytes=2**21, actor_name=ACTOR_NAME)[0]


def letters(factory: sessionmaker[Session]) -> list[DeadLetter]:
    with factory() as session:
        return list(session.execute(select(DeadLetter)).scalars())


def failures(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        rows = session.execute(select(MessageFailure)).scalars()
        return {row.key: row.failure_count for row in rows}


def test_a_service_away_is_waited_out_with_backoff_and_the_count_dropped_after(
    store: Store, factory: sessionmaker[Session]
) -> None:
    clock = RecordingClock()
    calls: list[int] = []

    def handle() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise database_away()
        assert failures(factory) == {"m-1": 3}  # counted where no producer can write

    Retrier.for_database(store, clock, QUEUE_NAME).run(arrival(), "m-1", False, handle)
    assert len(calls) == 4 and clock.sleeps == [1.0, 2.0, 4.0]
    assert failures(factory) == {} and letters(factory) == []


def test_a_bug_is_set_aside_after_three_tries_with_its_reason(
    store: Store, factory: sessionmaker[Session]
) -> None:
    clock = RecordingClock()
    calls: list[int] = []

    def handle() -> None:
        calls.append(1)
        raise ValueError("bankAccountNumber 004455667788 broke something")

    Retrier.for_database(store, clock, QUEUE_NAME).run(arrival(), "m-1", False, handle)
    assert len(calls) == OTHER_FAILURES and sum(clock.sleeps) <= 3.0
    [letter] = letters(factory)
    assert letter.message_id == "m-1" and letter.original_kept
    assert letter.reason.startswith("failed 3 times; last: ValueError: bankAccountNumber")
    assert "004455667788" not in letter.reason
    assert failures(factory) == {}


def test_a_service_away_for_good_ends_in_a_dead_letter_after_twelve_tries(
    store: Store, factory: sessionmaker[Session]
) -> None:
    clock = RecordingClock()
    calls: list[int] = []

    def handle() -> None:
        calls.append(1)
        raise database_away()

    Retrier.for_database(store, clock, QUEUE_NAME).run(arrival(), "m-1", False, handle)
    assert len(calls) == SERVICE_AWAY_FAILURES
    assert clock.sleeps == [backoff_s(n) for n in range(1, SERVICE_AWAY_FAILURES)]
    assert 300 < sum(clock.sleeps) < 420  # about six minutes
    assert "failed 12 times; last: DatabaseAway" in letters(factory)[0].reason


def test_a_message_delivered_again_too_often_is_set_aside_unhandled(
    store: Store, factory: sessionmaker[Session]
) -> None:
    """A message that kills the process each time comes back `redelivered`: each return is a
    failure, so it cannot come back forever."""
    retrier = Retrier.for_database(store, RecordingClock(), QUEUE_NAME)
    with factory.begin() as session:
        session.add(
            MessageFailure(
                key="m-1",
                failure_count=SERVICE_AWAY_FAILURES - 1,
                last_reason="x",
                first_failed_at=NOW,
                last_failed_at=NOW,
            )
        )
    retrier.run(arrival(), "m-1", True, lambda: pytest.fail("must not be handled"))
    assert "delivered again" in letters(factory)[0].reason


def test_failures_are_counted_in_memory_while_the_database_is_away(tmp_path: Any) -> None:
    away = Store.connect(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    retrier = Retrier.for_database(away, RecordingClock(), QUEUE_NAME)
    assert [retrier.counts.add("m-1", "x", NOW) for _ in range(3)] == [1, 2, 3]


def test_a_refused_message_is_set_aside_at_once(
    store: Store, factory: sessionmaker[Session]
) -> None:
    raw = b"\xff not a message"
    refused = inspect(raw, max_message_bytes=2**21, actor_name=ACTOR_NAME)[0]
    Retrier.for_database(store, RecordingClock(), QUEUE_NAME).run(
        refused, "", False, lambda: pytest.fail("must not be handled")
    )
    [letter] = letters(factory)
    assert letter.message_id is None and "not UTF-8" in letter.reason


def test_the_worker_actor_sets_aside_what_the_edge_refused(sqlite_url: str) -> None:
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 1, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, ManualClock())
    broker = make_broker("stub://")
    declare_actors(broker, ctx)
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        broker.queues[QUEUE_NAME].put(b'{"deep": ' + b"[" * 40 + b"]" * 40 + b"}")
        broker.queues[QUEUE_NAME].put(raw_message({"request": transfer()}, message_id="good"))
        broker.join(QUEUE_NAME, timeout=10_000)
    finally:
        worker.stop()
        broker.close()
    with sessions(ctx)() as session:
        reasons = list(session.execute(select(DeadLetter.reason)).scalars())
    assert len(reasons) == 1 and "nested deeper than 32" in reasons[0]
    assert ibkr.count("POST") == 1


def test_the_arrival_travels_with_the_message_it_was_decoded_from() -> None:
    install_encoder(QUEUE_NAME, ACTOR_NAME)
    message = dramatiq.Message.decode(raw_message({"request": {}}))
    found = arrival_of(message)
    assert found is not None and found.message_id == "m-1" and found.rejection is None


def assemble(assembler: Any, body: bytes, chunk: int = 4096) -> Any:
    from pika import frame, spec

    assembler.process(frame.Method(1, spec.Basic.Deliver(delivery_tag=1)))
    result = assembler.process(frame.Header(1, len(body), spec.BasicProperties()))
    for start in range(0, len(body), chunk):
        result = assembler.process(frame.Body(1, body[start : start + chunk]))
    return result[2]


def test_pika_keeps_only_the_beginning_and_the_end_of_a_body_above_the_limit() -> None:
    """RabbitMQ lets 128 MiB through by default; pika would hold such a body twice before the
    edge could look at its size. Revert check: with pika's own assembler the body is whole."""
    from worker._compat import BoundedContentAssembler, OversizedBody

    assembler = BoundedContentAssembler(limit_bytes=100_000)
    small = raw_message({"request": {"note": "x" * 50_000}})
    assert assemble(assembler, small) == small and not isinstance(
        assemble(assembler, small), OversizedBody
    )
    big = raw_message({"request": {"note": "x" * 1_000_000}}, message_id="big-7")
    kept = assemble(assembler, big)
    assert isinstance(kept, OversizedBody) and kept.received_size == len(big)
    assert bytes(kept) == big[: 64 * 1024] and kept.tail == big[-4096:]
    arrival, _ = inspect(
        kept,
        max_message_bytes=100_000,
        actor_name=ACTOR_NAME,
        received_size=kept.received_size,
        tail=kept.tail,
    )
    assert arrival.size_bytes == len(big) and arrival.message_id == "big-7"
    assert "above MAX_MESSAGE_BYTES" in arrival.rejection
    assert assemble(assembler, small) == small  # the next delivery starts afresh
