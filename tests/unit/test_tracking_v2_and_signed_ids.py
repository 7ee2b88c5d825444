"""Through the worker's own steps (receive, send) on SQLite: a v2 request is sent to the v2
endpoint it was validated for, and a negative clientInstructionId is stored, sent and announced
as it is."""

from __future__ import annotations

import json

from sqlalchemy import select

from models import ClientInstruction, OutboxEvent
from tests.builders import v2
from tests.unit.tracking_support import (
    ScriptedIbkr,
    answer,
    envelope,
    make_context,
    sessions,
    transfer,
)
from worker.clock import ManualClock
from worker.tracking.intake import receive
from worker.tracking.submit import send


def test_a_v2_request_is_sent_to_the_v2_endpoint(sqlite_url: str, clock: ManualClock) -> None:
    """(Pick the endpoint from the instructionType alone in submit.begin_attempt to see the v2
    body go to the v1 path.)"""
    ibkr = ScriptedIbkr(
        posts=[answer(202, envelope(202, 9101, 7013018, "PENDING", instructionType="FOP"))]
    )
    ctx = make_context(sqlite_url, ibkr, clock)
    raw = v2()
    raw["instruction"]["clientInstructionId"] = 7013018
    intake = receive(ctx, request=raw, correlation_id=None, message_id="m-v2")
    assert intake.disposition == "new"
    send(ctx, intake.submission_id)
    [(call, body)] = ibkr.calls
    assert call == "POST /gw/api/v2/external-asset-transfers"
    assert body["instruction"]["positions"][0] == {"conid": 12123, "quantity": 10}


def test_a_negative_client_instruction_id_is_tracked_as_given(
    sqlite_url: str, clock: ManualClock
) -> None:
    ibkr = ScriptedIbkr(posts=[answer(201, envelope(201, -7, -1988905739, "PROCESSED"))])
    ctx = make_context(sqlite_url, ibkr, clock)
    intake = receive(ctx, request=transfer(cid=-1988905739), correlation_id=None, message_id="m")
    send(ctx, intake.submission_id)
    with sessions(ctx)() as session:
        [row] = session.execute(select(ClientInstruction)).scalars()
        bodies = [
            json.loads(event.body_json)
            for event in session.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars()
        ]
    assert (row.client_instruction_id, row.instruction_set_id, row.status) == (
        -1988905739,
        -7,
        "PROCESSED",
    )
    assert {body["clientInstructionId"] for body in bodies} == {-1988905739}
    _, sent = ibkr.calls[0]
    assert sent["instruction"]["clientInstructionId"] == -1988905739
