"""`submit`, `health`, `dead-letters replay`, `worker`/`scheduler` shutdown and metrics, run as
processes against real RabbitMQ and PostgreSQL (and the sandbox over a socket)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pika
import pytest

from tests.builders import bulk, transfer, transfer_member
from tests.integration.pipeline import Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def queue_depth(broker_url: str, queue: str = "ibkr.instructions") -> int:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
    finally:
        if connection.is_open:
            connection.close()


def queue_exists(broker_url: str, queue: str = "ibkr.instructions.XQ") -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def test_submit_publishes_every_entry_and_prints_one_line_per_member(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    request = bulk("INTERNAL_CASH_TRANSFER", [transfer_member(), transfer_member(amount="11.00")])
    lines = [
        json.dumps(transfer(940001)),
        json.dumps({"request": request, "correlation_id": "c-1"}),
    ]
    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = pipeline.cli("submit", str(source))
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["clientInstructionId"] for p in printed] == [940001, None, None]
    assert printed[1]["messageId"] == printed[2]["messageId"] != printed[0]["messageId"]
    assert queue_depth(pipeline.broker_url) == 2
    pipeline.start_worker()
    pipeline.start_scheduler()
    statuses = pipeline.wait_final(3, timeout_s=60)
    assert set(statuses.values()) == {"PROCESSED"}
    shown = pipeline.cli("status", "--message-id", printed[1]["messageId"], "--json")
    assert shown.returncode == 0, shown.stderr
    states = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(states) == 2 and all(s["correlationId"] == "c-1" for s in states)


def test_submit_refuses_invalid_input_naming_entry_and_field_and_publishes_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "requests.json"
    source.write_text(json.dumps([transfer(940010), transfer(940011, "-3")]))
    result = pipeline.cli("submit", str(source))
    assert result.returncode == 2
    assert "entry 2" in result.stderr and "amount" in result.stderr
    assert result.stdout == ""
    assert queue_depth(pipeline.broker_url) == 0


def test_health_is_ok_with_services_and_says_why_without_the_broker(pipeline: Pipeline) -> None:
    ok = pipeline.cli("health")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    pipeline.extra_env["BROKER_URL"] = "amqp://guest:guest@127.0.0.1:1/%2F"
    broken = pipeline.cli("health")
    assert broken.returncode == 1 and "broker" in broken.stdout


def test_health_fails_when_the_outbox_is_not_flowing(pipeline: Pipeline) -> None:
    pipeline.start_worker()  # no scheduler: nothing relays the events
    pipeline.publish([transfer(940020)])
    pipeline.wait_final(1, timeout_s=30)
    pipeline.query("SELECT 1")
    from sqlalchemy import create_engine, text

    engine = create_engine(pipeline.database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE outbox SET created_at = created_at - interval '5 minutes'"))
    engine.dispose()
    result = pipeline.cli("health")
    assert result.returncode == 1 and "outbox" in result.stdout


def test_undecodable_messages_become_dead_letters_and_can_be_replayed(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.start_scheduler()
    # A raw publish to a queue that does not exist yet is dropped by RabbitMQ: wait for the
    # worker to declare it (dramatiq producers declare it themselves when they enqueue).
    pipeline.wait_for(lambda: queue_exists(pipeline.broker_url), 30, "the inbound queue")
    pipeline.publish_raw([b"this is not json at all"])
    pipeline.wait_for(
        lambda: bool(pipeline.query("SELECT id FROM dead_letters")), 30, "a dead letter"
    )
    listed = pipeline.cli("dead-letters", "list", "--json")
    [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert "the message is not JSON" in letter["reason"]
    assert letter["replayable"] is True and letter["bodyIsOriginal"] is True
    assert pipeline.alive("worker") and pipeline.alive("scheduler")
    replayed = pipeline.cli("dead-letters", "replay", str(letter["id"]))
    assert replayed.returncode == 0, replayed.stderr
    # The same garbage comes back as the same dead letter, seen twice, replayed once.
    pipeline.wait_for(
        lambda: pipeline.query("SELECT seen_count, replay_count FROM dead_letters")[0][0] >= 2,
        30,
        "the replayed letter to come back",
    )
    assert pipeline.query("SELECT replay_count FROM dead_letters")[0][0] == 1
    missing = pipeline.cli("dead-letters", "replay", "999999")
    assert missing.returncode == 1 and "999999" in missing.stderr


def test_worker_and_scheduler_stop_cleanly_on_sigterm(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker()
    scheduler = pipeline.start_scheduler()
    pipeline.publish([transfer(940030)])
    pipeline.wait_final(1, timeout_s=30)
    pipeline.wait_for(lambda: "scheduler started" in pipeline.logs(), 30, "the scheduler up")
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    scheduler.send_signal(signal.SIGTERM)
    assert worker.wait(40) == 0 and scheduler.wait(40) == 0
    assert time.monotonic() - started < 40


def test_metrics_are_served_on_the_port_and_the_next_one(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pipeline.extra_env["METRICS_PORT"] = str(port)
    pipeline.start_worker()
    pipeline.extra_env["METRICS_PORT"] = str(port)  # the scheduler serves on port + 1
    pipeline.start_scheduler()
    pipeline.publish([transfer(940040)])
    pipeline.wait_final(1, timeout_s=30)

    def scrape(at: int) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{at}/metrics", timeout=5) as response:
                return str(response.read().decode())
        except OSError:  # not listening yet
            return ""

    pipeline.wait_for(lambda: "ibkr_api_calls_total" in scrape(port), 20, "worker metrics")
    pipeline.wait_for(lambda: "ibkr_outbox_backlog" in scrape(port + 1), 20, "scheduler metrics")
    worker_metrics = scrape(port)
    scheduler_metrics = scrape(port + 1)
    assert 'endpoint="/gw/api/v1/internal-cash-transfers"' in worker_metrics
    for name in (
        "ibkr_instructions{",
        "ibkr_outbox_backlog",
        "ibkr_dead_letters",
        "ibkr_oldest_pending_age_seconds",
    ):
        assert name in scheduler_metrics, name
    # Both listen on loopback only (METRICS_HOST unset): never on every interface.
    assert listening_addresses(port) == listening_addresses(port + 1) == {"127.0.0.1"}


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses a TCP socket listens on at `port` (from /proc/net)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                else:
                    found.add("::" if set(address) == {"0"} else address)
    return found
