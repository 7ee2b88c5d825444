"""The edges around tracking: IBKR's downtime, the actor on dramatiq's stub broker, the relay."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest
import structlog
from dramatiq import Worker
from sqlalchemy import select

from models import ClientInstruction, DeadLetter, OutboxEvent
from tests.unit.tracking_support import (
    ScriptedIbkr,
    answer,
    envelope,
    make_context,
    sessions,
    transfer,
)
from worker.actors import declare_actors
from worker.broker import build_message, make_broker
from worker.clock import ManualClock
from worker.events import MemoryPublisher, OutgoingEvent
from worker.ibkr.calendar import EASTERN, downtime_end
from worker.tracking.intake import receive
from worker.tracking.outbox import relay_once
from worker.tracking.poll import run_round
from worker.tracking.submit import send

SATURDAY_NOON = datetime(2026, 11, 28, 12, 0, tzinfo=EASTERN).astimezone(UTC)


def test_nothing_is_sent_inside_ibkr_downtime_and_the_look_moves_past_the_window(
    sqlite_url: str,
) -> None:
    clock = ManualClock(SATURDAY_NOON)
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 1, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, clock, honor_downtime=True)
    intake = receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
    assert send(ctx, intake.submission_id) is False
    clock.advance(3600)
    assert run_round(ctx) == 0
    assert ibkr.calls == []
    with sessions(ctx)() as session:
        row = session.execute(select(ClientInstruction)).scalar_one()
    window_end = downtime_end(SATURDAY_NOON)
    assert row.status == "RECEIVED" and window_end is not None and row.next_poll_at >= window_end
    # After the window the scheduler sends it.
    clock.advance((row.next_poll_at - clock.now()).total_seconds() + 1)
    run_round(ctx)
    assert ibkr.count("POST") == 1


def test_the_calendar_is_ignored_when_downtime_is_not_honoured(sqlite_url: str) -> None:
    clock = ManualClock(SATURDAY_NOON)
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 1, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, clock, honor_downtime=False)
    assert send(
        ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m").submission_id
    )
    assert ibkr.count("POST") == 1


@pytest.fixture
def stub_worker(sqlite_url: str):  # type: ignore[no-untyped-def]
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, 1, 1012983, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, ManualClock())
    broker = make_broker("stub://")
    declare_actors(broker, ctx)
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield broker, ctx, ibkr
    worker.stop()
    broker.close()


def test_the_actor_submits_a_good_request(stub_worker) -> None:  # type: ignore[no-untyped-def]
    broker, ctx, ibkr = stub_worker
    broker.enqueue(build_message({"request": transfer()}))
    broker.join("ibkr.instructions")
    assert ibkr.count("POST") == 1
    with sessions(ctx)() as session:
        assert session.execute(select(ClientInstruction.status)).scalar_one() == "PROCESSED"


def test_the_post_runs_with_the_message_and_the_submission_bound_for_its_log_line(
    sqlite_url: str,
) -> None:
    # The client's "ibkr api call" line is the one line a submission logs: the logging setup
    # merges these bound values into it.
    bound: list[dict[str, Any]] = []

    def post(body: dict[str, Any]) -> Any:
        bound.append(structlog.contextvars.get_contextvars())
        return answer(201, envelope(201, 1, 1012983, "PROCESSED"))

    ibkr = ScriptedIbkr(posts=[post])
    ctx = make_context(sqlite_url, ibkr, ManualClock())
    broker = make_broker("stub://")
    declare_actors(broker, ctx)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        message = build_message({"request": transfer()})
        broker.enqueue(message)
        broker.join("ibkr.instructions")
    finally:
        worker.stop()
        broker.close()
    with sessions(ctx)() as session:
        submission_id = session.execute(select(ClientInstruction.submission_id)).scalar_one()
    assert bound == [
        {"message_id": message.message_id, "submission_id": submission_id, "attempt": 1}
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request": transfer(), "unexpected": 1},
        {"correlation_id": "x"},
        {"request": ["not", "an", "object"]},
        {"request": {"instructionType": "INTERNAL_CASH_TRANSFER"}},
    ],
)
def test_a_message_that_names_no_request_becomes_a_dead_letter_without_retries(
    stub_worker, kwargs
) -> None:  # type: ignore[no-untyped-def]
    broker, ctx, ibkr = stub_worker
    message = build_message(kwargs)
    broker.enqueue(message)
    broker.join("ibkr.instructions", fail_fast=True)
    with sessions(ctx)() as session:
        letter = session.execute(select(DeadLetter)).scalar_one()
    assert letter.message_id == message.message_id and letter.reason
    assert json.loads(letter.body)["message_id"] == message.message_id
    assert ibkr.calls == [] and broker.dead_letters == []


def test_positional_arguments_are_refused_with_a_reason(stub_worker) -> None:  # type: ignore[no-untyped-def]
    broker, ctx, _ = stub_worker
    broker.enqueue(
        dramatiq.Message(
            queue_name="ibkr.instructions",
            actor_name="submit_instruction",
            args=(1,),
            kwargs={},
            options={},
        )
    )
    broker.join("ibkr.instructions")
    with sessions(ctx)() as session:
        assert "positional" in session.execute(select(DeadLetter.reason)).scalar_one()


class FlakyPublisher(MemoryPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def publish(self, events: Sequence[OutgoingEvent]) -> None:
        if self.fail:
            self.fail = False
            raise ConnectionError("broker away")
        super().publish(events)


def test_the_relay_publishes_in_commit_order_and_keeps_events_until_confirmed(
    sqlite_url: str,
) -> None:
    ibkr = ScriptedIbkr(posts=[answer(202, envelope(202, 1, 1012983, "PENDING"))])
    clock = ManualClock()
    ctx = make_context(sqlite_url, ibkr, clock)
    send(ctx, receive(ctx, request=transfer(), correlation_id=None, message_id="m").submission_id)
    publisher = FlakyPublisher()
    with pytest.raises(ConnectionError):
        relay_once(ctx.store, publisher, clock)
    with sessions(ctx)() as session:
        assert (
            session.execute(select(OutboxEvent).where(OutboxEvent.published_at.is_(None)))
            .scalars()
            .all()
        )
    assert relay_once(ctx.store, publisher, clock) == 3
    assert [json.loads(e.body)["sequence"] for e in publisher.events] == [1, 2, 3]
    assert [e.routing_key for e in publisher.events] == [
        "instruction.received",
        "instruction.submitting",
        "instruction.pending",
    ]
    assert relay_once(ctx.store, publisher, clock) == 0
