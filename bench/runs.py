"""One timed run of the floor or of the pipeline, for the throughput benchmark (bench.throughput
pairs them in rounds): the processes started, the messages published, the clock stopped where
each one's work is done, and the CPU each process used."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import cpu, profile
from bench.common import (
    BIN,
    FLOOR_ACTOR,
    FLOOR_QUEUE,
    Processes,
    SandboxProcess,
    await_consumers,
    await_scheduler,
    dramatiq_message,
    instruction_messages,
    publish,
    queue_consumers,
    wait_for,
)

POST_ENDPOINT = "POST /gw/api/v1/internal-cash-transfers"
FLOOR_FIRST_ID = 7_000_000_001
# What the profile's "inclusive" line reports: the steps of one instruction.
STEPS = (
    "handle_message",
    "receive",
    "send",
    "post_instruction",
    "sign",
    "change_status",
    "relay_once",
    "publish",
)
#: The pipeline runs with the shared rate limiter on, at limits the sandbox never comes near.
LIMITER_PER_SECOND = 1000
LIMITER_PER_MINUTE = 60000


@dataclass(frozen=True)
class Shape:
    processes: int
    threads: int


def transfer(client_instruction_id: int, amount: float = 1.25) -> dict[str, Any]:
    return {
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instruction": {
            "clientInstructionId": client_instruction_id,
            "sourceAccountId": "U46377",
            "targetAccountId": "U15667",
            "amount": amount,
            "currency": "USD",
        },
    }


def _posts_answered(sandbox: SandboxProcess) -> int:
    endpoint = sandbox.stats()["endpoints"].get(POST_ENDPOINT, {})
    return int(endpoint.get("statuses", {}).get("201", 0))


def run_floor(
    sandbox: SandboxProcess,
    broker_url: str,
    env: dict[str, str],
    processes: Processes,
    n: int,
    shape: Shape,
    first_id: int = FLOOR_FIRST_ID,
) -> dict[str, Any]:
    name = "floor"
    argv = [
        str(BIN / "dramatiq"),
        "bench.floor",
        "--processes",
        str(shape.processes),
        "--threads",
        str(shape.threads),
        "--queues",
        FLOOR_QUEUE,
    ]
    process = processes.start(name, argv, env)
    wait_for(
        lambda: queue_consumers(broker_url, FLOOR_QUEUE) >= shape.processes,
        60,
        "the floor's consumers",
        alive=lambda: processes.check_alive(name),
    )
    before = _posts_answered(sandbox)
    bodies = [
        dramatiq_message(FLOOR_QUEUE, FLOOR_ACTOR, {"request": transfer(first_id + i)})
        for i in range(n)
    ]
    meter = cpu.CpuMeter({"floor": [process.pid], "sandbox": [processes.running["sandbox"].pid]})
    meter.start()
    started = publish(broker_url, FLOOR_QUEUE, bodies)
    wait_for(
        lambda: _posts_answered(sandbox) - before >= n,
        600,
        f"{n} floor POSTs",
        every_s=0.25,
        alive=lambda: processes.check_alive(name),
    )
    cpu_s = meter.stop()
    requests = sandbox.stats(include_requests=True)["requests"]
    last = max(r["at"] for r in requests if r["endpoint"] == POST_ENDPOINT and r["status"] == 201)
    processes.stop(name)
    elapsed = last - started
    return {
        "n": n,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(n / elapsed, 1),
        "cpu_s": cpu_s,
    }


def _pipeline_state(database_url: str, first_id: int, n: int) -> tuple[int, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            processed = connection.execute(
                text(
                    "SELECT count(*) FROM client_instructions WHERE status = 'PROCESSED' "
                    "AND client_instruction_id BETWEEN :lo AND :hi"
                ),
                {"lo": first_id, "hi": first_id + n - 1},
            ).scalar_one()
            unpublished = connection.execute(
                text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(processed), int(unpublished)


def _pipeline_end(database_url: str, first_id: int, n: int) -> dict[str, Any]:
    params = {"lo": first_id, "hi": first_id + n - 1}
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            last_final, api_calls = connection.execute(
                text(
                    "SELECT extract(epoch FROM max(final_at)), sum(api_call_count) "
                    "FROM client_instructions WHERE client_instruction_id BETWEEN :lo AND :hi"
                ),
                params,
            ).one()
            last_published, events = connection.execute(
                text(
                    "SELECT extract(epoch FROM max(o.published_at)), count(*) FROM outbox o "
                    "JOIN client_instructions c ON c.id = o.client_instruction_pk "
                    "WHERE c.client_instruction_id BETWEEN :lo AND :hi"
                ),
                params,
            ).one()
    finally:
        engine.dispose()
    return {
        "last_final_at": float(last_final),
        "last_published_at": float(last_published),
        "events": int(events),
        "api_calls": int(api_calls),
    }


def _group_commit_stats(log_text: str) -> dict[str, Any]:
    """Transactions and steps of the workers' group commits (logged when they stop)."""
    batches = steps = writers = 0
    busy_s = cpu_s = 0.0
    for line in log_text.splitlines():
        if '"group commit stopped"' in line:
            entry = json.loads(line)
            writers += 1
            batches += int(entry["batches"])
            steps += int(entry["steps"])
            busy_s += float(entry.get("busy_s", 0.0))
            cpu_s += float(entry.get("cpu_s", 0.0))
    return {
        "transactions": batches,
        "steps": steps,
        "steps_per_transaction": round(steps / batches, 1) if batches else None,
        "writers": writers,
        "writer_busy_s": round(busy_s, 2),
        "writer_cpu_s": round(cpu_s, 2),
    }


def run_pipeline(
    sandbox: SandboxProcess,
    database_url: str,
    broker_url: str,
    env: dict[str, str],
    processes: Processes,
    n: int,
    first_id: int,
    *,
    record: Path | None = None,
    baseline: Path | None = None,
) -> dict[str, Any]:
    """The product in its default configuration (`ibkr-worker worker`, `ibkr-worker
    scheduler`) on `n` messages; the clock stops when every one is PROCESSED and its events
    are published. `baseline`: the checkout of an earlier commit that `env` runs
    (`bench.baseline`), whose default process count this code does not know: its consumers are
    awaited until their count holds."""
    from worker.cli_processes import default_worker_processes

    # As the Procfile starts it: no process, thread or pool flags.
    worker = processes.start("worker", [str(BIN / "ibkr-worker"), "worker"], env, baseline)
    scheduler = processes.start("scheduler", [str(BIN / "ibkr-worker"), "scheduler"], env, baseline)
    alive = lambda: processes.check_alive("worker", "scheduler")  # noqa: E731
    if baseline is not None:
        _await_steady_consumers(broker_url, alive)
        expected_processes = queue_consumers(broker_url, "ibkr.instructions")
    else:
        expected_processes = default_worker_processes()
        await_consumers(broker_url, expected_processes, alive)
    await_scheduler(processes, alive)
    bodies = instruction_messages(transfer(first_id + i) for i in range(n))
    recorder = None
    if record is not None:
        recorder = profile.Recorder(record)
        for process in cpu.family([worker.pid]):
            if process.pid != worker.pid or expected_processes == 1:
                recorder.start("worker", process.pid)
        recorder.start("scheduler", scheduler.pid)
    meter = cpu.CpuMeter(
        {
            "worker": [worker.pid],
            "scheduler": [scheduler.pid],
            "sandbox": [processes.running["sandbox"].pid],
        }
    )
    opened_before = sandbox.stats()["connectionsOpened"]
    meter.start()
    started = publish(broker_url, "ibkr.instructions", bodies)
    seen: dict[str, int] = {}

    def done() -> bool:
        processed, unpublished = _pipeline_state(database_url, first_id, n)
        seen.update(processed=processed, unpublished=unpublished)
        return processed >= n and unpublished == 0

    try:
        wait_for(done, 900, f"{n} PROCESSED with their events published", every_s=0.25, alive=alive)
    except TimeoutError as error:
        raise TimeoutError(f"{error} (last seen: {seen})") from None
    cpu_s = meter.stop()
    outputs = recorder.stop() if recorder is not None else {}
    connections = sandbox.stats()["connectionsOpened"] - opened_before
    end = _pipeline_end(database_url, first_id, n)
    finished = max(end["last_final_at"], end["last_published_at"])
    log_start = len(processes.log_text("worker"))
    processes.stop("worker")
    processes.stop("scheduler")
    elapsed = finished - started
    result: dict[str, Any] = {
        "group_commit": _group_commit_stats(processes.log_text("worker")[log_start:]),
        "n": n,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(n / elapsed, 1),
        "last_final_after_s": round(end["last_final_at"] - started, 3),
        "last_published_after_s": round(end["last_published_at"] - started, 3),
        "events_published": end["events"],
        "api_calls": end["api_calls"],
        "connections_opened": connections,
        "cpu_s": cpu_s,
    }
    if outputs:
        result["profile"] = {
            label: profile.summarise(paths, inclusive=STEPS) for label, paths in outputs.items()
        }
    return result


def _await_steady_consumers(broker_url: str, alive: Any) -> None:
    """Until the queue has consumers and their count held for 3 s (60 s at most)."""
    counts: list[int] = []

    def steady() -> bool:
        counts.append(queue_consumers(broker_url, "ibkr.instructions"))
        return len(counts) > 6 and counts[-1] > 0 and len(set(counts[-7:])) == 1

    wait_for(steady, 60, "the baseline worker's consumers", every_s=0.5, alive=alive)
