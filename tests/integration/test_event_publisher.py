"""The relay's AMQP publisher on a real RabbitMQ: a batch is published in order as one AMQP
transaction, and a batch whose commit fails publishes nothing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.integration.pipeline import EventCollector
from worker.broker import AmqpEventPublisher
from worker.events import OutgoingEvent


def events(count: int, start: int = 0) -> list[OutgoingEvent]:
    return [
        OutgoingEvent(
            event_id=str(uuid.uuid4()),
            routing_key="instruction.processed" if i % 2 else "instruction.received",
            body=f'{{"clientInstructionId": {i}, "sequence": 1}}'.encode("ascii"),
            sequence=1,
        )
        for i in range(start, start + count)
    ]


def drained(collector: EventCollector, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(collector.drain()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return collector.events


def test_batches_arrive_whole_and_in_order(fresh_amqp_url: str) -> None:
    collector = EventCollector(fresh_amqp_url)
    publisher = AmqpEventPublisher(fresh_amqp_url)
    sent = events(700) + events(700, start=700)
    try:
        publisher.publish(sent[:700])
        publisher.publish(sent[700:])
    finally:
        publisher.close()
    got = drained(collector, len(sent))
    assert [e["clientInstructionId"] for e in got] == list(range(1400))
    assert collector.message_ids == [e.event_id for e in sent]
    assert [e["_routing_key"] for e in got] == [e.routing_key for e in sent]


def test_a_batch_whose_commit_fails_publishes_nothing(
    fresh_amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = EventCollector(fresh_amqp_url)
    publisher = AmqpEventPublisher(fresh_amqp_url)
    channel = publisher.channel()

    def broken_commit() -> None:
        raise ConnectionError("lost before tx.commit was answered")

    monkeypatch.setattr(channel, "tx_commit", broken_commit)
    with pytest.raises(ConnectionError):
        publisher.publish(events(50))
    # The failure closed the connection with the transaction uncommitted; the next batch goes
    # through a new one.
    publisher.publish(events(3, start=50))
    publisher.close()
    drained(collector, 3)
    time.sleep(0.3)  # anything of the failed batch would have arrived by now
    assert [e["clientInstructionId"] for e in collector.drain()] == [50, 51, 52]
