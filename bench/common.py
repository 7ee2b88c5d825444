"""What every benchmark needs: a database and a RabbitMQ vhost of its own (removed afterwards,
even on failure), an RSA key, the sandbox in a process of its own, and processes to start,
watch and stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
CLIENT_ID = "bench-client"
KEY_ID = "bench-key"
FINAL = ("PROCESSED", "REJECTED", "FAILED", "CONFLICT")
# The floor's queue and actor (bench/floor.py), on the same broker as the pipeline.
FLOOR_QUEUE = "bench.floor"
FLOOR_ACTOR = "floor_post"


@dataclass(frozen=True)
class Services:
    """Where the shared servers are (a database and a vhost are made per benchmark)."""

    database_url: str
    broker_url: str


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def temporary_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database (its URL), dropped on the way out whatever happened."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# --- RabbitMQ --------------------------------------------------------------------------------


def _rabbitmqctl(*args: str, attempts: int = 5) -> None:
    # Other test runs on this machine may restart RabbitMQ: wait for it rather than fail.
    for attempt in range(attempts):
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=120)
        if done.returncode == 0:
            return
        if attempt == attempts - 1:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()[:300]}"
            )
        time.sleep(3.0)


@contextmanager
def temporary_vhost(broker_url: str, prefix: str) -> Iterator[str]:
    """A fresh RabbitMQ vhost (the broker URL pointing at it), deleted on the way out."""
    params = pika.URLParameters(broker_url)
    user = params.credentials.username  # type: ignore[attr-defined]
    vhost = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        base = broker_url.rsplit("/", 1)[0]
        yield f"{base}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def queue_consumers(broker_url: str, queue: str) -> int:
    """Consumers on `queue` (0 when it does not exist yet)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
    finally:
        if connection.is_open:
            connection.close()


def instruction_messages(requests: Iterable[dict[str, Any]]) -> list[bytes]:
    """Each request as the plain dramatiq message a producer publishes to `ibkr.instructions`."""
    return [
        dramatiq_message("ibkr.instructions", "submit_instruction", {"request": request})
        for request in requests
    ]


def await_consumers(broker_url: str, count: int, alive: Callable[[], None]) -> None:
    """Wait until `count` worker processes consume `ibkr.instructions`."""
    wait_for(
        lambda: queue_consumers(broker_url, "ibkr.instructions") >= count,
        60,
        "the worker's consumers",
        alive=alive,
    )


def await_scheduler(processes: Processes, alive: Callable[[], None]) -> None:
    """Wait until the process called "scheduler" says it started."""
    wait_for(
        lambda: "scheduler started" in processes.log_text("scheduler"),
        60,
        "the scheduler",
        alive=alive,
    )


def dramatiq_message(queue: str, actor: str, kwargs: dict[str, Any]) -> bytes:
    """The plain dramatiq message JSON (as the README shows non-Python producers)."""
    return json.dumps(
        {
            "queue_name": queue,
            "actor_name": actor,
            "args": [],
            "kwargs": kwargs,
            "options": {},
            "message_id": str(uuid.uuid4()),
            "message_timestamp": int(time.time() * 1000),
        },
        separators=(",", ":"),
    ).encode()


def publish(broker_url: str, queue: str, bodies: list[bytes]) -> float:
    """Publish `bodies` (persistent) to `queue` on the default exchange; returns the time of
    the first publish (epoch seconds). No publisher confirms, so the producer is not what
    limits the rate; the benchmarks count every message's result, so a loss would show."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        started = time.time()
        for body in bodies:
            channel.basic_publish("", queue, body, properties)
        channel.close()
    finally:
        if connection.is_open:
            connection.close()
    return started


# --- key and sandbox -------------------------------------------------------------------------


def make_key(directory: Path) -> tuple[Path, Path]:
    """A 3072-bit RSA key pair (private, public PEM paths) in `directory`."""
    from worker.ibkr.keygen import generate_key_pair

    return generate_key_pair(directory, 3072)


@dataclass
class Processes:
    """Processes started by a benchmark; logs under `log_dir`; all stopped by `stop_all`."""

    log_dir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[Any] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in `cwd` (the repository unless said; `python -m` imports from it)."""
        log_file = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log_file)
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd or REPO,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        self.running[name] = process
        return process

    def log_text(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, timeout_s: float = 30.0) -> None:
        process = self.running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        # The whole process group: supervisors forward, but their children must not outlive us.
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # Children that outlived their parent (same group).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
        for log_file in self._logs:
            log_file.close()
        self._logs.clear()

    def check_alive(self, *names: str) -> None:
        for name in names:
            process = self.running.get(name)
            if process is not None and process.poll() is not None:
                tail = self.log_text(name)[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")


@dataclass
class SandboxProcess:
    """The sandbox served from its own process (see bench/sandbox_server.py)."""

    base_url: str

    def admin(self, path: str) -> Any:
        with urllib.request.urlopen(self.base_url + "/__admin" + path, timeout=120) as answer:
            return json.loads(answer.read())

    def stats(self, *, include_requests: bool = False) -> dict[str, Any]:
        return dict(self.admin("/stats" + ("?requests=true" if include_requests else "")))

    def final_transitions(self) -> dict[str, dict[str, Any]]:
        return dict(self.admin("/final-transitions"))


def start_sandbox(
    processes: Processes, public_key: Path, config: dict[str, Any], name: str = "sandbox"
) -> SandboxProcess:
    """Start the sandbox with `config` (SandboxConfig fields; `timings` a dict of Timings
    fields) in a process of its own and return once it answers."""
    url_file = processes.log_dir / f"{name}.url"
    url_file.unlink(missing_ok=True)
    spec = {
        "config": config,
        "client_id": CLIENT_ID,
        "key_id": KEY_ID,
        "public_key": str(public_key),
        "url_file": str(url_file),
    }
    processes.start(
        name, [sys.executable, "-m", "bench.sandbox_server", json.dumps(spec)], child_env()
    )
    wait_for(url_file.exists, 60, "the sandbox", alive=lambda: processes.check_alive(name))
    return SandboxProcess(base_url=url_file.read_text().strip())


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IBKR_", "POLL_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def worker_env(
    database_url: str,
    broker_url: str,
    sandbox: SandboxProcess,
    private_key: Path,
    **extra: str,
) -> dict[str, str]:
    """The product's settings for `ibkr-worker worker` / `scheduler` against the sandbox."""
    return child_env(
        DATABASE_URL=database_url,
        BROKER_URL=broker_url,
        IBKR_BASE_URL=sandbox.base_url,
        IBKR_CLIENT_ID=CLIENT_ID,
        IBKR_KEY_ID=KEY_ID,
        IBKR_PRIVATE_KEY_FILE=str(private_key),
        IBKR_HONOR_DOWNTIME="false",
        LOG_LEVEL="INFO",
        **extra,
    )


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    every_s: float = 0.2,
    alive: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if alive is not None:
            alive()
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@contextmanager
def scenario(services: Services, name: str, log_root: Path) -> Iterator[tuple[str, str, Processes]]:
    """(database URL, broker URL, processes) of one benchmark, all removed afterwards."""
    log_dir = log_root / name
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        database_url = stack.enter_context(
            temporary_database(services.database_url, f"bench_{name}")
        )
        broker_url = stack.enter_context(temporary_vhost(services.broker_url, f"bench-{name}"))
        processes = Processes(log_dir)
        stack.callback(processes.stop_all)
        yield database_url, broker_url, processes


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile (`fraction` in 0..1) of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]
