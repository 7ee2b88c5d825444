"""`quiet_logs` drops one thread's records of a logger, never another thread's: the check of
whether RabbitMQ answers (`broker_reachable`) keeps pika's error lines of its own attempt out
of the log while a worker thread's pika lines still reach it."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pika
import pytest

from worker.broker import broker_reachable


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def pika_records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("pika")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class HangUpServer:
    """Accepts one connection, says nothing, and hangs up once told to: pika's handshake
    fails, and pika logs errors about it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.accepted = threading.Event()
        self.hang_up = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.sock.getsockname()[1]}/%2F"

    def _serve(self) -> None:
        connection, _ = self.sock.accept()
        self.accepted.set()
        self.hang_up.wait(10)
        connection.close()
        self.sock.close()


def connect(url: str) -> None:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 3
    with pytest.raises(pika.exceptions.AMQPError):
        pika.BlockingConnection(params)


def test_a_failed_handshake_makes_pika_log_errors(pika_records: Records) -> None:
    # What the quiet attempt below has to keep out of the log.
    server = HangUpServer()
    server.hang_up.set()
    connect(server.url)
    assert any(r.levelno >= logging.ERROR for r in pika_records.records)


def test_a_quiet_attempt_drops_its_own_pika_lines_and_no_other_threads(
    pika_records: Records,
) -> None:
    """Guard: `quiet_logs` in `broker_reachable` (flip the pika logger's level instead, as it
    once did, and the other thread's line is lost; drop it and the attempt's lines appear)."""
    server = HangUpServer()
    answer: list[str | None] = []
    checking = threading.Thread(target=lambda: answer.append(broker_reachable(server.url, 3)))
    checking.start()
    assert server.accepted.wait(5)  # the attempt is under way, quiet
    logging.getLogger("pika.adapters.blocking_connection").error("another thread's pika line")
    server.hang_up.set()
    checking.join(10)
    [reason] = answer
    assert reason is not None and reason != "timed out"
    assert [r.getMessage() for r in pika_records.records] == ["another thread's pika line"]
