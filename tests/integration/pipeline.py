"""The whole pipeline for integration tests: the sandbox over a real socket, a real PostgreSQL
database, a RabbitMQ vhost of its own, and `ibkr-worker worker` / `scheduler` as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from sqlalchemy import create_engine, select, text

from ibkr_sandbox import Sandbox, SandboxConfig
from models import ClientInstruction
from worker.broker import build_message, make_broker

BIN = Path(sys.executable).parent
FINAL = frozenset({"PROCESSED", "REJECTED", "FAILED", "CONFLICT"})
#: The worst IBKR the reference allows, for the sandbox: a re-POST of a used id registers a
#: second transaction, and some POSTs are held in flight longer than the worker's HTTP timeout
#: (5 s) before they register, while status GETs answer 404.
WORST_IBKR: dict[str, Any] = {
    "duplicate_post": "accept",
    "inflight_rate": 0.06,
    "inflight_hold_s": 8.0,
}
CLIENT_ID = "it-client"
KEY_ID = "it-key"


@dataclass
class Pipeline:
    database_url: str
    broker_url: str
    sandbox: Sandbox
    private_key_file: Path
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _logs: list[Any] = field(default_factory=list)

    # --- processes ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "BROKER_URL": self.broker_url,
            "IBKR_BASE_URL": self.sandbox.base_url,
            "IBKR_CLIENT_ID": CLIENT_ID,
            "IBKR_KEY_ID": KEY_ID,
            "IBKR_PRIVATE_KEY_FILE": str(self.private_key_file),
            "IBKR_HONOR_DOWNTIME": "false",
            "POLL_INITIAL_DELAY_S": "0.5",
            "POLL_MAX_DELAY_S": "2",
            "POLL_BACKOFF_FACTOR": "1.5",
            # Scaled together so that a fault run stays quick: a POST leaves within 5 s or not
            # at all, its body expires with its 20 s lease, and one whose answer was lost may
            # register until max(20, 5 + 10) + 2 s after it began: no resend before that.
            "IBKR_HTTP_TIMEOUT_S": "5",
            # A SIGKILLed holder's rows are taken over after this (crash tests wait for it).
            "IBKR_LEASE_S": "20",
            "IBKR_BODY_LIFETIME_S": "20",
            "IBKR_INFLIGHT_HORIZON_S": "10",
            "IBKR_MAX_CLOCK_SKEW_S": "2",
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        }

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `ibkr-worker <args>` as the process called `name` (logs under log_dir)."""
        log = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log)
        process = subprocess.Popen(
            [str(BIN / "ibkr-worker"), *args], env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        self.processes[name] = process
        self.commands[name] = args
        return process

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start the process called `name` again with the arguments it was started with (after
        it was killed or stopped)."""
        if self.alive(name):
            raise AssertionError(f"{name} is still running; kill it first")
        return self.start(name, *self.commands[name])

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `ibkr-worker <args>` to completion against this pipeline; stdout and stderr kept."""
        return subprocess.run(
            [str(BIN / "ibkr-worker"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def status_json(self, client_instruction_id: int) -> dict[str, Any]:
        """`ibkr-worker status N --json` of one instruction."""
        done = self.cli("status", str(client_instruction_id), "--json")
        if done.returncode != 0:
            raise AssertionError(f"status {client_instruction_id} failed: {done.stderr}")
        state: dict[str, Any] = json.loads(done.stdout)
        return state

    def dead_letters(self) -> list[dict[str, Any]]:
        """`ibkr-worker dead-letters list --json`, one dict per dead letter."""
        done = self.cli("dead-letters", "list", "--json")
        if done.returncode != 0:
            raise AssertionError(f"dead-letters list failed: {done.stderr}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def start_worker(self, name: str = "worker", threads: int = 8) -> subprocess.Popen[bytes]:
        """One worker process (a SIGKILL then kills exactly one) with `threads` threads."""
        return self.start(name, "worker", "--processes", "1", "--threads", str(threads))

    def start_scheduler(self, name: str = "scheduler") -> subprocess.Popen[bytes]:
        return self.start(name, "scheduler")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.send_signal(sig)
        process.wait(30)

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in self._logs:
            log.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    # --- producing ------------------------------------------------------------------------
    def publish(
        self, requests: Iterable[dict[str, Any]], *, correlation_id: str | None = None
    ) -> list[str]:
        """Publish each request as a message; returns the message ids."""
        broker = make_broker(self.broker_url)
        ids = []
        try:
            for request in requests:
                kwargs: dict[str, Any] = {"request": request}
                if correlation_id is not None:
                    kwargs["correlation_id"] = correlation_id
                message = build_message(kwargs)
                broker.enqueue(message)
                ids.append(message.message_id)
        finally:
            broker.close()
        return ids

    def publish_raw(self, bodies: Iterable[bytes]) -> None:
        """Publish raw bodies to the inbound queue (malformed-message tests)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        channel = connection.channel()
        for body in bodies:
            channel.basic_publish("", "ibkr.instructions", body)
        connection.close()

    # --- observing ------------------------------------------------------------------------
    def statuses(self) -> dict[int, str]:
        """clientInstructionId -> status of every owning row."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    select(ClientInstruction.client_instruction_id, ClientInstruction.status).where(
                        ClientInstruction.duplicate_of_id.is_(None)
                    )
                ).all()
        finally:
            engine.dispose()
        return {int(row[0]): str(row[1]) for row in rows}

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql), params).all())
        finally:
            engine.dispose()

    def wait_for(
        self, condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.25
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(poll_s)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.logs()}")

    def applied_twice_or_lost(self, cids: Iterable[int]) -> dict[str, Any]:
        """What the sandbox's books say went wrong: ids applied more than once, ids of `cids`
        never applied (empty both when every instruction moved exactly once)."""
        counts = self.sandbox.ledger_counts()
        return {
            "applied_twice": {cid: n for cid, n in counts.items() if n > 1},
            "lost": sorted(set(cids) - set(counts)),
        }

    def wait_final(
        self, count: int, timeout_s: float = 60.0, poll_s: float = 0.25
    ) -> dict[int, str]:
        """Wait until `count` tracked instructions are final (looking every `poll_s`); returns
        all statuses."""

        def done() -> bool:
            statuses = self.statuses()
            return len(statuses) >= count and all(s in FINAL for s in statuses.values())

        self.wait_for(done, timeout_s, f"{count} final instructions", poll_s)
        return self.statuses()


class EventCollector:
    """Binds a queue of its own to the event exchange and collects every event."""

    def __init__(
        self, broker_url: str, binding: str = "instruction.#", *, durable: bool = False
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.message_ids: list[str] = []
        self._params = pika.URLParameters(broker_url)
        connection = pika.BlockingConnection(self._params)
        channel = connection.channel()
        channel.exchange_declare("ibkr.instruction.events", exchange_type="topic", durable=True)
        # durable: the queue (and the persistent events in it) survives a broker restart.
        self.queue = channel.queue_declare(
            "", exclusive=False, auto_delete=False, durable=durable
        ).method.queue
        channel.queue_bind(self.queue, "ibkr.instruction.events", binding)
        connection.close()
        self._lock = threading.Lock()

    def drain(self) -> list[dict[str, Any]]:
        connection = pika.BlockingConnection(self._params)
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                break
            with self._lock:
                self.events.append({**json.loads(body), "_routing_key": method.routing_key})
                self.message_ids.append(properties.message_id)
        connection.close()
        return self.events


def make_sandbox(public_key_pem: bytes, **config: Any) -> Sandbox:
    sandbox = Sandbox(SandboxConfig(host="127.0.0.1", port=0, **config))
    sandbox.register_client(client_id=CLIENT_ID, key_id=KEY_ID, public_key_pem=public_key_pem)
    sandbox.start()
    return sandbox
