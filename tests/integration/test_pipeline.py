"""The worker end to end: real RabbitMQ, real PostgreSQL, the sandbox over a socket, and the
`worker` and `scheduler` commands as processes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import transfer
from tests.integration.pipeline import EventCollector, Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def test_internal_transfers_reach_processed_with_events_in_order(pipeline: Pipeline) -> None:
    events = EventCollector(pipeline.broker_url)
    pipeline.start_worker()
    pipeline.start_scheduler()
    pipeline.publish([transfer(810000 + i) for i in range(20)], correlation_id="batch-1")
    statuses = pipeline.wait_final(20, timeout_s=60)
    assert set(statuses.values()) == {"PROCESSED"}
    assert all(count == 1 for count in pipeline.sandbox.ledger_counts().values())
    pipeline.wait_for(lambda: len(events.drain()) >= 60, 30, "60 events")
    by_instruction: dict[int, list[dict[str, Any]]] = {}
    for event in events.events:
        by_instruction.setdefault(event["clientInstructionId"], []).append(event)
    for cid, seq in by_instruction.items():
        assert [e["sequence"] for e in seq] == sorted(e["sequence"] for e in seq), cid
        assert [e["status"] for e in seq] == ["RECEIVED", "SUBMITTING", "PROCESSED"]
        assert seq[-1]["correlationId"] == "batch-1"
    assert set(events.message_ids) == {e["eventId"] for e in events.events}
