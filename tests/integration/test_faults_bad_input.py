"""Malformed messages among good ones: every bad one is set aside within seconds with its reason
(a FAILED row naming the field, or a dead letter), none is retried with backoff, none holds up
the good ones, and both processes keep running."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.builders import DROP, bulk, transfer, transfer_member
from tests.integration.pipeline import Pipeline
from worker.broker import ACTOR_NAME, QUEUE_NAME

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

GOOD_FIRST = 5_500_000
BAD_FIRST = 5_600_000
SET_ASIDE_WITHIN_S = 20.0  # from publishing until every bad message is visible with a reason


# Every option a producer could set; dramatiq would act on each (hold the message until the
# eta, interrupt it after 1 ms, pipe or call back into other actors). The worker ignores them.
STRAY_OPTIONS: dict[str, Any] = {
    "eta": int(time.time() * 1000) + 10 * 24 * 3600 * 1000,
    "delay": 10 * 24 * 3600 * 1000,
    "retries": 99,
    "max_retries": 0,
    "min_backoff": 10**9,
    "max_backoff": 10**9,
    "time_limit": 1,
    "max_age": 1,
    "pipe_target": {"queue_name": "elsewhere", "actor_name": "x", "args": [], "kwargs": {}},
    "pipe_ignore": False,
    "on_success": "transfer_money",
    "on_failure": "transfer_money",
    "on_retry_exhausted": "transfer_money",
    "notify_shutdown": True,
    "throws": "Exception",
    "broker_priority": 255,
}


def message(
    kwargs: Any,
    *,
    args: list[Any] | None = None,
    actor: str = ACTOR_NAME,
    options: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    """(message id, body) of a dramatiq message as a non-Python producer writes it."""
    message_id = str(uuid.uuid4())
    body = {
        "queue_name": QUEUE_NAME,
        "actor_name": actor,
        "args": args or [],
        "kwargs": kwargs,
        "options": options or {},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    return message_id, json.dumps(body).encode()


def bad_messages() -> tuple[dict[str, bytes], dict[str, tuple[int, str, bytes]], list[bytes]]:
    """(messages that must become dead letters, by message id; messages that must become FAILED
    rows: message id -> (clientInstructionId, the field the reason names, body); bodies that are
    not dramatiq messages at all)."""
    n = iter(range(BAD_FIRST, BAD_FIRST + 100))
    dead: dict[str, bytes] = {}
    failed: dict[str, tuple[int, str, bytes]] = {}

    def expect_dead(kwargs: Any, **options: Any) -> None:
        message_id, body = message(kwargs, **options)
        dead[message_id] = body

    def expect_failed(request: dict[str, Any], field: str, **kwargs: Any) -> None:
        members = request.get("instructions") or [request["instruction"]]
        message_id, body = message({"request": request, **kwargs})
        failed[message_id] = (members[0]["clientInstructionId"], field, body)

    # Not something we can track: dead letters.
    expect_dead({"correlation_id": "no-request"})
    expect_dead({"request": transfer(next(n)), "priority": 5})
    expect_dead({"request": "INTERNAL_CASH_TRANSFER"})
    expect_dead({"request": [transfer(next(n))]})
    expect_dead({"request": {"instruction": transfer(next(n))["instruction"]}})
    expect_dead({"request": {"instructionType": "INTERNAL_CASH_TRANSFER"}})
    expect_dead({"request": transfer("twelve")})
    expect_dead({"request": transfer(0)})  # 0 stands for "made outside the API" at IBKR
    expect_dead({"request": transfer(2**53)})  # beyond what JSON's doubles carry exactly
    expect_dead({"request": {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": []}})
    expect_dead({"request": transfer(next(n))}, args=[1, 2])
    expect_dead({"request": transfer(next(n))}, actor="transfer_money")
    # Above MAX_MESSAGE_BYTES (2 MiB by default): set aside on its size alone.
    expect_dead({"request": transfer(next(n), clientNote="x" * (5 * 1024 * 1024))})
    # Nested deeper than any IBKR body (the parser, the validators and the redaction recurse).
    message_id, body = message({"request": transfer(next(n), sourceAccountId="DEEP")})
    dead[message_id] = body.replace(b'"DEEP"', b'{"a":' * 5000 + b'"U46377"' + b"}" * 5000)
    # Names a request, but IBKR would refuse it: FAILED with the field named, nothing sent.
    expect_failed(transfer(next(n), amount="-10.00"), "instruction.amount")
    expect_failed(transfer(next(n), amount="0"), "instruction.amount")
    expect_failed(transfer(next(n), amount="ten"), "instruction.amount")
    expect_failed(transfer(next(n), targetAccountId=DROP), "instruction.targetAccountId")
    expect_failed(transfer(next(n), currency=DROP), "instruction.currency")
    expect_failed(transfer(next(n), currency="DOLLARS"), "instruction.currency")
    expect_failed(transfer(next(n), clientNote="Überweisung für März"), "instruction.clientNote")
    expect_failed(transfer(next(n), clientNote="x" * (1024 * 1024)), "instruction.clientNote")
    expect_failed(
        {"instructionType": "TELEPORT_CASH", "instruction": transfer(next(n))["instruction"]},
        "instructionType",
    )
    cid = next(n)
    expect_failed(
        bulk("INTERNAL_CASH_TRANSFER", [transfer_member(cid), transfer_member(next(n), "-1")]),
        "instructions[1].amount",
    )
    expect_failed(transfer(next(n)), "correlation_id", correlation_id="c" * 500)
    expect_failed(transfer(next(n)), "correlation_id", correlation_id=12345)
    expect_failed(transfer(next(n), sourceAccountId=""), "instruction.sourceAccountId")
    expect_failed(transfer(next(n), amount="1e400"), "instruction.amount")
    # Not even a dramatiq message: dead letters without a message id.
    not_messages = [
        b"this is not json",
        b"\xff\xfe\x00\x01 binary garbage",
        b"",
        b"[1, 2, 3]",
        b'{"queue_name": "ibkr.instructions", "actor_name": "submit_instru',
        b'{"hello": "world"}',
        # Numbers whose decimal text would take gigabytes, and JSON's missing constants.
        message({"request": transfer(BAD_FIRST + 90)})[1].replace(b'"10.00"', b"1e-999999999"),
        message({"request": transfer(BAD_FIRST + 91)})[1].replace(b'"10.00"', b"1e999999999"),
        message({"request": transfer(BAD_FIRST + 92)})[1].replace(b'"10.00"', b"NaN"),
    ]
    return dead, failed, not_messages


def test_malformed_messages_are_set_aside_at_once_with_reasons_and_good_ones_go_through(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(speed=60.0)
    dead, failed, not_messages = bad_messages()
    assert len(dead) + len(failed) + len(not_messages) >= 30
    pipeline.start_worker()
    pipeline.start_scheduler()
    # Both running and consuming before the test's clock starts.
    pipeline.publish([transfer(GOOD_FIRST - 1)])
    pipeline.wait_final(1, timeout_s=60)

    good = [transfer(GOOD_FIRST + i) for i in range(30)]
    bad_bodies = [*dead.values(), *(body for _, _, body in failed.values()), *not_messages]
    # Interleave: bad messages must not hold up the good ones behind them. Every third good one
    # carries every option a producer could set: ignored, it is processed like the others.
    mixed: list[bytes] = []
    for i in range(max(len(bad_bodies), len(good))):
        if i < len(bad_bodies):
            mixed.append(bad_bodies[i])
        if i < len(good):
            options = STRAY_OPTIONS if i % 3 == 0 else None
            mixed.append(message({"request": good[i]}, options=options)[1])
    started = time.monotonic()
    pipeline.publish_raw(mixed)

    def set_aside() -> bool:
        letters = pipeline.query("SELECT message_id FROM dead_letters")
        failed_ids = pipeline.query(
            "SELECT message_id FROM client_instructions WHERE status = 'FAILED'"
        )
        return (
            {row[0] for row in letters if row[0]} >= set(dead)
            and len(letters) >= len(dead) + len(not_messages)
            and {row[0] for row in failed_ids} >= set(failed)
        )

    pipeline.wait_for(set_aside, SET_ASIDE_WITHIN_S, "every bad message set aside")
    set_aside_s = time.monotonic() - started
    statuses = pipeline.wait_final(1 + len(good) + len(failed), timeout_s=60)

    # Good ones: all processed.
    for request in good:
        assert statuses[request["instruction"]["clientInstructionId"]] == "PROCESSED"
    # Bad ones that name a request: FAILED, the field named, nothing sent to IBKR.
    rows = {
        r[0]: (int(r[1]), r[2], r[3], r[4])
        for r in pipeline.query(
            "SELECT message_id, client_instruction_id, status, error_message, api_call_count "
            "FROM client_instructions WHERE message_id = ANY(:ids) AND position = 0",
            ids=list(failed),
        )
    }
    for message_id, (cid, field, _) in failed.items():
        assert message_id in rows, (message_id, cid, field)
        row_cid, status, error_message, api_calls = rows[message_id]
        assert (row_cid, status, api_calls) == (cid, "FAILED", 0), rows[message_id]
        assert field in (error_message or ""), (field, error_message)
    sent = set(pipeline.sandbox.ledger_counts())
    assert not sent & {cid for cid, _, _ in failed.values()}
    # Bad ones that name none: dead letters with the reason, visible to operators.
    letters = pipeline.dead_letters()
    by_id = {letter["messageId"]: letter for letter in letters if letter.get("messageId")}
    for message_id in dead:
        assert by_id[message_id]["reason"], by_id[message_id]
    assert len(letters) == len(dead) + len(not_messages), letters
    # Set aside at once, never retried with backoff.
    assert set_aside_s < SET_ASIDE_WITHIN_S
    assert all("retries" not in letter["reason"] for letter in letters), letters
    worker_log = (pipeline.log_dir / "worker.log").read_text(errors="replace")
    assert "Retrying message" not in worker_log
    assert pipeline.alive("worker") and pipeline.alive("scheduler")
