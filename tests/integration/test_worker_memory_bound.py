"""A worker with its defaults (threads x prefetch included) stays under 400 MB RSS whatever
arrives: a flood of the largest messages it accepts, of value bombs, nesting bombs and messages
above MAX_MESSAGE_BYTES, published faster than it can take them. The peak (VmHWM) is read from
/proc after every message has its outcome; the numbers are printed (`pytest -s`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pika
import pytest

from tests.integration.pipeline import Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

MAX_RSS_BYTES = 400 * 1024 * 1024
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
EACH_KIND = 40


def body(kwargs_json: bytes) -> bytes:
    head = json.dumps(
        {
            "queue_name": "ibkr.instructions",
            "actor_name": "submit_instruction",
            "args": [],
            "message_id": str(uuid.uuid4()),
            "options": {"eta": 10**15},
        }
    ).encode()
    return head[:-1] + b', "kwargs": ' + kwargs_json + b"}"


def request(cid: int, note: bytes) -> bytes:
    instruction = (
        b'{"clientInstructionId": %d, "sourceAccountId": "U46377", "targetAccountId": "U15667", '
        b'"amount": "1.00", "currency": "USD", "clientNote": ' % cid
    )
    return b'{"request": {"instructionType": "INTERNAL_CASH_TRANSFER", "instruction": ' + (
        instruction + note + b"}}}"
    )


def flood() -> list[tuple[str, bytes]]:
    room = MAX_MESSAGE_BYTES - 600
    kinds: list[tuple[str, bytes]] = []
    for i in range(EACH_KIND):
        # Accepted by the edge, FAILED by the intake: the largest decoded messages.
        kinds.append(("long string", body(request(8_000_000 + i, b'"' + b"x" * room + b'"'))))
        items = b",".join([b'"abcdefghijklmnop"'] * 99_000)
        kinds.append(("99k values", body(request(8_100_000 + i, b"[" + items + b"]"))))
        # Refused by the edge on their bytes.
        kinds.append(
            ("value bomb", body(request(8_200_000 + i, b"[" + b"[]," * (room // 3) + b"0]")))
        )
        kinds.append(("nesting bomb", body(request(8_300_000 + i, b"[" * room))))
        kinds.append(("too large", body(request(8_400_000 + i, b'"' + b"x" * (3 * 2**20) + b'"'))))
    # One as large as RabbitMQ lets through by default (128 MiB): read whole by the client
    # library before anyone can look at it.
    kinds.append(("giant", body(request(8_500_000, b'"' + b"x" * (120 * 2**20) + b'"'))))
    return kinds


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("threads", [None, 256], ids=["default threads", "256 threads"])
def test_a_flood_of_the_worst_messages_keeps_the_worker_under_400_mb(
    make_pipeline: Callable[..., Pipeline], threads: int | None
) -> None:
    """Revert checks (measured): without `edge.drop_payload` each of dramatiq's threads keeps
    its last message alive and the peak passes 700 MB; without `BoundedContentAssembler` the
    giant message alone costs twice its 120 MiB inside pika (490 MB with the rest)."""
    pipeline = make_pipeline(speed=60.0)
    # The defaults (threads, prefetch, MAX_MESSAGE_BYTES), and the most threads the CLI allows.
    pipeline.start("worker", "worker", *(["--threads", str(threads)] if threads else []))
    pipeline.publish([json.loads(request(7_999_999, b'"warm-up"'))["request"]])
    pipeline.wait_for(lambda: "PROCESSED" in pipeline.statuses().values(), 60, "the worker")
    pid = pipeline.processes["worker"].pid
    idle = peak_rss(pid)

    messages = flood()
    connection = pika.BlockingConnection(pika.URLParameters(pipeline.broker_url))
    channel = connection.channel()
    started = time.monotonic()
    for _, raw in messages:
        channel.basic_publish("", "ibkr.instructions", raw)
    connection.close()
    published_s = time.monotonic() - started

    def all_set_aside() -> bool:
        letters = pipeline.query("SELECT count(*) FROM dead_letters")[0][0]
        failed = pipeline.query("SELECT count(*) FROM client_instructions WHERE status = 'FAILED'")
        return int(letters) + int(failed[0][0]) >= len(messages)

    pipeline.wait_for(all_set_aside, 600, "every message set aside", poll_s=1.0)
    took_s = time.monotonic() - started
    peak = peak_rss(pid)
    size = sum(len(raw) for _, raw in messages)
    print(
        f"\nworker RSS: idle peak {idle / 2**20:.0f} MB, flood peak {peak / 2**20:.0f} MB; "
        f"{len(messages)} messages, {size / 2**20:.0f} MB, published in {published_s:.1f} s, "
        f"all set aside in {took_s:.1f} s"
    )
    assert pipeline.alive("worker")
    assert peak < MAX_RSS_BYTES, peak
    # Each set aside for its own reason; the giant one under its message id (from its tail).
    reasons = [str(row[0]) for row in pipeline.query("SELECT reason FROM dead_letters")]
    assert sum("more than 100,000 JSON values" in r for r in reasons) == 2 * EACH_KIND
    assert sum("above MAX_MESSAGE_BYTES" in r for r in reasons) == EACH_KIND + 1
    giant_id = json.loads(messages[-1][1][:300].split(b', "kwargs"')[0] + b"}")["message_id"]
    assert (
        pipeline.query("SELECT count(*) FROM dead_letters WHERE message_id = :m", m=giant_id)[0][0]
        == 1
    )
