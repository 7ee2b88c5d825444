"""The running commands: `worker`, `scheduler`, `submit`, `health`, `dead-letters replay`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click

from worker.cli_settings import settings_or_exit
from worker.config import ConfigError, Settings
from worker.ibkr.requests import RequestValidationError, parse_request
from worker.logging import get_logger
from worker.store import Store
from worker.store.errors import DatabaseAway, DatabaseError
from worker.store.migrate import is_up_to_date

log = get_logger(__name__)
T = TypeVar("T")
OUTBOX_MAX_AGE_S = 60.0


def _settings() -> Settings:
    return settings_or_exit()


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ibkr-worker: {message}", err=True)
    sys.exit(code)


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
        _fail(f"configuration error: {error}", 2)
    up_to_date = _once_the_database_answers(
        lambda: is_up_to_date(settings.database_url), stop, time.monotonic() + wait_s
    )
    if up_to_date is False:
        _fail("the database schema is not up to date; run `ibkr-worker migrate` first", 2)


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
                _fail(f"cannot reach the database at DATABASE_URL: {error.kind}", 2)
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
            _fail(f"cannot reach the database at DATABASE_URL: {error.kind}", 2)


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
        _require_ready(_settings())
        _supervise(processes, threads)
        return
    stop = stop_on_signal()
    settings = _settings()
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
    settings = _settings()
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


def read_entries(raw_text: str) -> list[Any]:
    """One JSON object, a JSON array, or JSON Lines -> the list of entries (ValueError names the
    line that is not JSON)."""
    stripped = raw_text.strip()
    if not stripped:
        raise ValueError("the input is empty")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        entries = []
        for number, line in enumerate(stripped.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number}: not valid JSON ({error.msg})") from None
        return entries
    return whole if isinstance(whole, list) else [whole]


def entry_kwargs(number: int, entry: Any) -> dict[str, Any]:
    """The actor's keyword arguments for one entry, validated (ValueError names entry and field)."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry {number}: must be a JSON object")
    if "instructionType" in entry:
        kwargs: dict[str, Any] = {"request": entry}
    elif "request" in entry:
        unexpected = sorted(set(entry) - {"request", "correlation_id"})
        if unexpected:
            raise ValueError(f"entry {number}: unexpected keys {', '.join(unexpected)}")
        kwargs = dict(entry)
        correlation_id = kwargs.get("correlation_id")
        if correlation_id is not None and (
            not isinstance(correlation_id, str)
            or len(correlation_id) > 128
            or not correlation_id.isascii()
        ):
            raise ValueError(
                f"entry {number}: correlation_id must be an ASCII string of at most 128 characters"
            )
        if correlation_id is None:
            kwargs.pop("correlation_id", None)
    else:
        raise ValueError(
            f"entry {number}: neither a request body (with instructionType) nor "
            '{"request": ..., "correlation_id": ...}'
        )
    try:
        parse_request(kwargs["request"])
    except RequestValidationError as error:
        raise ValueError(f"entry {number}: {error}") from None
    return kwargs


def member_ids(request: dict[str, Any]) -> list[Any]:
    members = request["instructions"] if "instructions" in request else [request["instruction"]]
    return [member.get("clientInstructionId") for member in members]


@click.command("submit")
@click.argument("source", default="-", type=click.File("r", encoding="utf-8"))
def submit_command(source: Any) -> None:
    """Publish instruction requests from FILE (or - for standard input) to `ibkr.instructions`.

    FILE holds one JSON object, a JSON array, or JSON Lines; each entry is a bare IBKR request
    body or {"request": ..., "correlation_id": ...}. Prints one JSON line per request member:
    its clientInstructionId (null when the worker assigns it) and the messageId. Invalid input
    exits 2 naming the entry and field, and nothing is published.
    """
    settings = _settings()
    try:
        entries = read_entries(source.read())
        all_kwargs = [entry_kwargs(number, entry) for number, entry in enumerate(entries, start=1)]
    except ValueError as error:
        _fail(f"invalid input: {str(error).rstrip('.')}; nothing was published", 2)
    from worker.broker import build_message, make_broker

    broker = make_broker(settings.broker_url)
    try:
        for kwargs in all_kwargs:
            message = build_message(kwargs)
            broker.enqueue(message)
            for client_instruction_id in member_ids(kwargs["request"]):
                if isinstance(client_instruction_id, str) and client_instruction_id.isdigit():
                    client_instruction_id = int(client_instruction_id)
                click.echo(
                    json.dumps(
                        {
                            "clientInstructionId": client_instruction_id,
                            "messageId": message.message_id,
                        }
                    )
                )
    finally:
        broker.close()


@click.command("health")
def health_command() -> None:
    """Exit 0 when the database and the broker answer and the outbox is flowing (no event
    older than a minute waits); otherwise exit 1 with the reasons."""
    settings = _settings()
    from worker.broker import broker_reachable
    from worker.store import events

    problems: list[str] = []
    store = Store.connect(settings.database_url)
    try:
        if not is_up_to_date(settings.database_url):
            problems.append("database: schema not up to date (run `ibkr-worker migrate`)")
            oldest = None
        else:
            with store.transaction() as tx:
                oldest = events.oldest_unpublished_at(tx)
        if oldest is not None:
            age = (datetime.now(UTC) - oldest).total_seconds()
            if age > OUTBOX_MAX_AGE_S:
                problems.append(
                    f"outbox: the oldest unpublished event waits for {age:.0f} s "
                    "(is a scheduler running?)"
                )
    except DatabaseError as error:  # the driver's own words, without SQL
        problems.append(f"database: unreachable ({error})")
    finally:
        store.close()
    broker_problem = broker_reachable(settings.broker_url)
    if broker_problem is not None:
        problems.append(f"broker: unreachable ({broker_problem})")
    if problems:
        for problem in problems:
            click.echo(f"unhealthy: {problem}")
        sys.exit(1)
    click.echo("healthy: database, broker and outbox OK")


@click.command("replay")
@click.argument("ids", nargs=-1, required=True, type=int)
def replay_command(ids: tuple[int, ...]) -> None:
    """Re-enqueue the dead letters IDS (from `dead-letters list`) to `ibkr.instructions`: the
    original bytes, unchanged, with the message's failure count reset."""
    settings = _settings()
    from worker.broker import publish_raw
    from worker.tracking.deadletters import letters_to_replay, mark_replayed

    store = Store.connect(settings.database_url)
    try:
        with store.transaction() as tx:
            replays = letters_to_replay(tx, list(ids))
            # Reset first: a worker may take the message as soon as it is published.
            mark_replayed(tx, replays, datetime.now(UTC))
            publish_raw(settings.broker_url, [replay.original for replay in replays])
    except (LookupError, ValueError) as error:
        _fail(str(error), 1)
    finally:
        store.close()
    for letter_id in ids:
        click.echo(json.dumps({"id": letter_id, "replayed": True}))


@click.command("demo")
@click.option(
    "--database-url", help="Use this database instead of SQLite in a temporary directory."
)
@click.option("--broker-url", help="Use this RabbitMQ instead of the in-process broker.")
def demo_command(database_url: str | None, broker_url: str | None) -> None:
    """The whole pipeline on embedded defaults (sandbox, SQLite, in-process broker): a
    back-office morning, live progress, the final table and one audit trail. Exit 0 only if
    every outcome was the expected one."""
    from worker.demo import run_demo
    from worker.logging import configure_logging

    configure_logging("WARNING", "console")
    sys.exit(run_demo(database_url, broker_url))
