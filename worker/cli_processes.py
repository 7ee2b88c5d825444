"""The long-running commands, `worker` and `scheduler`: how they start (settings, schema, a
database that does not answer yet), stop (SIGTERM finishes the messages in hand) and, for
`worker`, supervise one process per core."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

import click

from worker.cli_settings import fail, settings_or_exit
from worker.config import ConfigError, Settings
from worker.logging import get_logger
from worker.store.errors import DatabaseAway, DatabaseError
from worker.store.migrate import is_up_to_date

log = get_logger(__name__)
T = TypeVar("T")


#: A long-running process that starts while the database does not answer (it is restarting,
#: failing over, or starting beside it) waits this long for it before it gives up with exit 2.
STARTUP_DATABASE_WAIT_S = 60.0
_STARTUP_RETRY_FIRST_S = 0.5
_STARTUP_RETRY_MAX_S = 5.0


def _require_ready(
    settings: Settings,
    stop: threading.Event | None = None,
    wait_s: float = STARTUP_DATABASE_WAIT_S,
) -> None:
    """Stop at start, with one clear line, when credentials or the schema are missing. A
    database that does not answer yet is waited for (up to `wait_s`, or until `stop` is set):
    a worker restarted while PostgreSQL restarts must come up by itself, not stay down."""
    try:
        settings.require_ibkr_credentials()
    except ConfigError as error:
        fail(f"configuration error: {error}", 2)
    up_to_date = _once_the_database_answers(
        lambda: is_up_to_date(settings.database_url), stop, time.monotonic() + wait_s
    )
    if up_to_date is False:
        fail("the database schema is not up to date; run `ibkr-worker migrate` first", 2)


def _once_the_database_answers(
    call: Callable[[], T], stop: threading.Event | None, deadline: float
) -> T | None:
    """`call()`, tried again (pauses doubling to `_STARTUP_RETRY_MAX_S`) while the database
    does not answer, until `deadline` (then exit 2 with one clear line). None when `stop` was
    set meanwhile. Any other database error exits at once: it will not go away by waiting."""
    pause_s = _STARTUP_RETRY_FIRST_S
    while True:
        try:
            return call()
        except DatabaseAway as error:
            if stop is not None and stop.is_set():
                return None  # stopped while waiting: the caller sees `stop` and leaves quietly
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                fail(f"cannot reach the database at DATABASE_URL: {error.kind}", 2)
            log.warning(
                "the database does not answer yet; waiting for it",
                error=error.kind,
                retry_in_s=round(min(pause_s, left_s), 3),
                gives_up_in_s=round(left_s, 1),
            )
            if stop is not None:
                stop.wait(min(pause_s, left_s))
            else:
                time.sleep(min(pause_s, left_s))
            pause_s = min(pause_s * 2, _STARTUP_RETRY_MAX_S)
        except DatabaseError as error:
            fail(f"cannot reach the database at DATABASE_URL: {error.kind}", 2)


def stop_on_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT. Installed first thing, so a signal that arrives
    while the process is still starting stops it cleanly once it has started."""
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def wait_for(stop: threading.Event) -> None:
    """Block until `stop` is set (a short timeout keeps the main thread responsive)."""
    while not stop.wait(1.0):
        pass


#: Threads per worker process: each holds one message. At most `REQUEST_CONNECTIONS` of them
#: talk to IBKR at once; the others receive or record in the shared transactions meanwhile.
DEFAULT_WORKER_THREADS = 64


def default_worker_processes() -> int:
    """Worker processes `ibkr-worker worker` runs without `--processes`: one per core the
    process may use, plus one (a process's writer spends most of a transaction waiting for the
    database, and the extra process uses the core meanwhile), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores + 1, 8))


@click.command("worker")
@click.option(
    "--processes",
    default=None,
    type=click.IntRange(1, 64),
    help="Worker processes [default: one per core plus one, at most 8].",
)
@click.option(
    "--threads",
    default=DEFAULT_WORKER_THREADS,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Threads per process (messages in hand at once; they share database transactions).",
)
def worker_command(processes: int | None, threads: int) -> None:
    """Run the dramatiq consumers of `ibkr.instructions` (RabbitMQ from BROKER_URL).

    Each message is validated, persisted and submitted to IBKR exactly once in effect; SIGTERM
    finishes the messages in hand and returns the rest to the queue.
    """
    if processes is None:
        processes = default_worker_processes()
    if processes > 1:
        _require_ready(settings_or_exit())
        _supervise(processes, threads)
        return
    stop = stop_on_signal()
    settings = settings_or_exit()
    _require_ready(settings, stop)
    if stop.is_set():
        return
    from dramatiq import Worker

    from worker.actors import declare_actors
    from worker.broker import make_broker
    from worker.metrics import Metrics
    from worker.runtime import build_runtime
    from worker.store.group import GroupCommit

    metrics = Metrics()
    # The threads' database steps go through one writer (group commit); a few more connections
    # serve steps that run alone after a failed batch.
    runtime = _once_the_database_answers(
        lambda: build_runtime(
            settings, actor="worker", observer=metrics, pool_size=min(threads, 8)
        ),
        stop,
        time.monotonic() + STARTUP_DATABASE_WAIT_S,
    )
    if runtime is None:
        return
    if settings.metrics_port:
        metrics.watch_database(runtime.store)
        metrics.serve(settings.metrics_port, settings.metrics_host)
    broker = make_broker(settings.broker_url, max_message_bytes=settings.max_message_bytes)
    group = GroupCommit(runtime.writer_store())
    declare_actors(broker, runtime.ctx, group)
    consumer = Worker(broker, worker_threads=threads, worker_timeout=1000)
    consumer.start()
    log.info("worker started", threads=threads, queue="ibkr.instructions")
    try:
        wait_for(stop)
    finally:
        log.info("worker stopping: finishing the messages in hand")
        consumer.stop(timeout=30_000)
        group.stop()
        broker.close()
        runtime.close()


#: After an unexpected exit a worker process is started again after this many seconds (doubled
#: for each exit in a row, at most `_RESTART_MAX_S`).
_RESTART_FIRST_S = 1.0
_RESTART_MAX_S = 30.0


def _die_with_parent() -> None:
    """In a child, before it runs: Linux kills it when its parent dies (a SIGKILLed supervisor
    must not leave workers behind that nothing stops)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the children outlive a killed parent
        return


def _supervise(processes: int, threads: int) -> None:
    """Run `processes` single-process workers, forward SIGTERM/SIGINT to them, and start one
    again that exits on its own (after a pause that doubles while exits keep coming). Returns
    once a signal stopped them all."""
    command = [
        sys.executable,
        "-m",
        "worker.cli",
        "worker",
        "--processes",
        "1",
        "--threads",
        str(threads),
    ]
    stopping = threading.Event()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, preexec_fn=_die_with_parent)

    children = [start() for _ in range(processes)]

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    pause_s = _RESTART_FIRST_S
    while not stopping.is_set():
        exited = [index for index, child in enumerate(children) if child.poll() is not None]
        for index in exited:
            if stopping.is_set():
                break
            log.warning(
                "a worker process exited; starting it again",
                exit_code=children[index].returncode,
                pause_s=pause_s,
            )
            stopping.wait(pause_s)
            pause_s = min(pause_s * 2, _RESTART_MAX_S)
            if not stopping.is_set():
                children[index] = start()
        if not exited:
            pause_s = _RESTART_FIRST_S
        stopping.wait(1.0)
    codes = [child.wait() for child in children]
    if any(code not in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes):
        sys.exit(max(abs(code) for code in codes))


@click.command("scheduler")
@click.option(
    "--poll-threads",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Concurrent status calls.",
)
def scheduler_command(poll_threads: int) -> None:
    """Run the poll scheduler, the outbox relay and the dead-letter drain.

    Several schedulers may run at once on PostgreSQL (rows are claimed with leases); run one
    on SQLite.
    """
    stop = stop_on_signal()
    settings = settings_or_exit()
    _require_ready(settings, stop)
    if stop.is_set():
        return
    from worker.broker import AmqpEventPublisher, DeadLetterDrain, is_stub_url
    from worker.events import EventPublisher, MemoryPublisher
    from worker.metrics import Metrics
    from worker.runtime import build_runtime
    from worker.scheduler import Scheduler

    metrics = Metrics()
    runtime = _once_the_database_answers(
        lambda: build_runtime(
            settings, actor="scheduler", observer=metrics, pool_size=poll_threads + 4
        ),
        stop,
        time.monotonic() + STARTUP_DATABASE_WAIT_S,
    )
    if runtime is None:
        return
    if settings.metrics_port:
        metrics.watch_database(runtime.store)
        metrics.serve(settings.metrics_port + 1, settings.metrics_host)
    stub = is_stub_url(settings.broker_url)
    publisher: EventPublisher = (
        MemoryPublisher() if stub else AmqpEventPublisher(settings.broker_url)
    )
    drain = None if stub else DeadLetterDrain(settings.broker_url, settings.max_message_bytes)
    scheduler = Scheduler(runtime.ctx, publisher, drain, poll_threads=poll_threads)
    scheduler.start()
    log.info("scheduler started", poll_threads=poll_threads)
    try:
        wait_for(stop)
    finally:
        log.info("scheduler stopping")
        scheduler.stop()
        runtime.close()
