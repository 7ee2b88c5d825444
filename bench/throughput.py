"""1 and 2: pipeline throughput against the floor of the same stack, in the same run.

Both publish N internal cash transfers that the sandbox (rate limits off, its own process)
answers 201 at once; both sign with the same 3072-bit key, parsed once per process.

- floor: `dramatiq bench.floor` signs and POSTs each message and stores nothing; its clock
  stops at the sandbox's answer to the N-th POST. It runs at several shapes to find its fastest
  (more threads only add GIL contention to a process that stores nothing), so the pipeline is
  held to the floor at its fastest.
- rounds: the floor at that shape and then the pipeline, three times; the target is the median
  round's ratio. On a machine whose speed swings by a third from minute to minute (this
  benchmark's VM), a pipeline run measured once against the best of six floor runs mostly
  measures the swing; a floor and a pipeline run back to back meet the same moment. The
  pipeline's best round against the floor's best run is printed beside it.
- pipeline: `ibkr-worker worker` and `ibkr-worker scheduler` exactly as the Procfile starts
  them (no flags), with the shared rate limiter on at 1,000/s and 60,000/min; the clock stops
  when every instruction is PROCESSED in the database and every event of theirs is published
  (the later of the last `final_at` and the last `published_at`).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import baseline, cpu, profile
from bench.common import (
    BIN,
    FLOOR_ACTOR,
    FLOOR_QUEUE,
    Processes,
    SandboxProcess,
    Services,
    dramatiq_message,
    log,
    make_key,
    publish,
    queue_consumers,
    scenario,
    start_sandbox,
    temporary_database,
    wait_for,
    worker_env,
)

POST_ENDPOINT = "POST /gw/api/v1/internal-cash-transfers"
FLOOR_FIRST_ID = 7_000_000_001
PIPELINE_FIRST_ID = 8_000_000_001
PROFILE_FIRST_ID = 9_000_000_001
BASELINE_FIRST_ID = 8_500_000_001
#: The pipeline runs with the shared rate limiter on, at limits the sandbox never comes near.
LIMITER_PER_SECOND = 1000
LIMITER_PER_MINUTE = 60000
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


@dataclass(frozen=True)
class Shape:
    processes: int
    threads: int


def transfer(client_instruction_id: int) -> dict[str, Any]:
    return {
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instruction": {
            "clientInstructionId": client_instruction_id,
            "sourceAccountId": "U46377",
            "targetAccountId": "U15667",
            "amount": 1.25,
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
        wait_for(
            lambda: queue_consumers(broker_url, "ibkr.instructions") >= expected_processes,
            60,
            "the worker's consumers",
            alive=alive,
        )
    wait_for(
        lambda: "scheduler started" in processes.log_text("scheduler"),
        60,
        "the scheduler",
        alive=alive,
    )
    bodies = [
        dramatiq_message(
            "ibkr.instructions", "submit_instruction", {"request": transfer(first_id + i)}
        )
        for i in range(n)
    ]
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


def run(
    services: Services,
    log_root: Path,
    *,
    n: int,
    floor_threads: list[int],
    floor_processes: list[int],
    profile_run: bool = True,
    rounds: int = 3,
    compare: str | None = None,
    compare_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The floor runs at each of `floor_processes` times `floor_threads` to find its best shape;
    then `rounds` paired rounds run the floor at that shape and the pipeline in its default
    configuration with the shared rate limiter on (at 1,000/s and 60,000/min, far above what
    the sandbox needs), one right after the other, and the median round's pipeline/floor ratio
    counts.

    `compare`: an earlier commit whose pipeline runs in every round too, against the same floor
    (its own database, migrated by its own code; the two pipelines take turns going first), so
    a change's cost is read from one run: the baseline's median ratio beside this one's.
    `compare_env`: settings of the baseline's own (e.g. the limits it was measured with)."""
    with ExitStack() as stack:
        database_url, broker_url, processes = stack.enter_context(
            scenario(services, "throughput", log_root)
        )
        key_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-key-"))
        from worker.store.migrate import upgrade_to_head

        private_key, public_key = make_key(Path(key_dir))
        upgrade_to_head(database_url)
        sandbox = start_sandbox(processes, public_key, {"rate_limits": False})
        env = worker_env(
            database_url,
            broker_url,
            sandbox,
            private_key,
            IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT=str(LIMITER_PER_SECOND),
            IBKR_MAX_REQUESTS_PER_MINUTE=str(LIMITER_PER_MINUTE),
        )
        old: tuple[str, dict[str, str], str, Path] | None = None
        if compare is not None:
            path = stack.enter_context(baseline.checkout(compare))
            old_database = stack.enter_context(
                temporary_database(services.database_url, "bench_throughput_baseline")
            )
            old_env = baseline.env_for(
                path,
                worker_env(old_database, broker_url, sandbox, private_key, **(compare_env or {})),
            )
            if compare_env is None:
                old_env.update(
                    IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT=str(LIMITER_PER_SECOND),
                    IBKR_MAX_REQUESTS_PER_MINUTE=str(LIMITER_PER_MINUTE),
                )
            baseline.migrate(path, old_env)
            old = (old_database, old_env, baseline.describe(path), path)
            log(f"throughput: baseline {old[2]}")
        floors = []
        floor_shapes = [
            Shape(count, threads) for count in floor_processes for threads in floor_threads
        ]
        for index, floor_shape in enumerate(floor_shapes):
            label = f"{floor_shape.processes}x{floor_shape.threads}"
            log(f"throughput: floor, {n} messages, {label}")
            # Each run its own clientInstructionIds: the sandbox refuses a repeated one.
            first_id = FLOOR_FIRST_ID + index * n
            floors.append(
                {
                    **run_floor(sandbox, broker_url, env, processes, n, floor_shape, first_id),
                    "processes": floor_shape.processes,
                    "threads": floor_shape.threads,
                }
            )
            log(f"throughput: floor {floors[-1]['rate_per_s']}/s at {label}")
        floor = max(floors, key=lambda run: float(run["rate_per_s"]))
        best = Shape(int(floor["processes"]), int(floor["threads"]))
        # Paired rounds: the floor at its best shape, then the pipeline, so both meet the same
        # moment of a noisy machine; the median round's ratio counts.
        pipeline_at = partial(run_pipeline, sandbox, database_url, broker_url, env, processes, n)
        paired: list[dict[str, Any]] = []
        for index in range(rounds):
            log(
                f"throughput: round {index + 1} of {rounds}: floor at {best.processes}x"
                f"{best.threads}, then the pipeline in its default configuration"
            )
            first_id = FLOOR_FIRST_ID + (len(floor_shapes) + index) * n
            again = run_floor(sandbox, broker_url, env, processes, n, best, first_id)
            before = None
            if old is not None and index % 2 == 1:
                before = _baseline_round(old, sandbox, broker_url, processes, n, index)
            pipeline = pipeline_at(PIPELINE_FIRST_ID + index * n)
            if old is not None and before is None:
                before = _baseline_round(old, sandbox, broker_url, processes, n, index)
            ratio = round(pipeline["rate_per_s"] / again["rate_per_s"], 3)
            paired.append({"floor": again, "pipeline": pipeline, "ratio": ratio})
            if before is not None:
                paired[-1]["baseline"] = before
                paired[-1]["baseline_ratio"] = round(before["rate_per_s"] / again["rate_per_s"], 3)
            log(
                f"throughput: floor {again['rate_per_s']}/s, pipeline "
                f"{pipeline['rate_per_s']}/s, ratio {ratio}"
                + (f", baseline ratio {paired[-1]['baseline_ratio']}" if before else "")
            )
        # The median round (of an even number, the lower of the middle two).
        median = sorted(paired, key=lambda r: float(r["ratio"]))[(len(paired) - 1) // 2]
        best_pipeline = max(float(r["pipeline"]["rate_per_s"]) for r in paired)
        result: dict[str, Any] = {
            "shape": "default (ibkr-worker worker, ibkr-worker scheduler)",
            "limiter": {"per_second": LIMITER_PER_SECOND, "per_minute": LIMITER_PER_MINUTE},
            "floor": floor,
            "floors": floors,
            "rounds": [
                {
                    "floor_rate_per_s": r["floor"]["rate_per_s"],
                    "floor_elapsed_s": r["floor"]["elapsed_s"],
                    "floor_cpu_s": r["floor"]["cpu_s"],
                    "pipeline_rate_per_s": r["pipeline"]["rate_per_s"],
                    "pipeline_elapsed_s": r["pipeline"]["elapsed_s"],
                    "pipeline_cpu_s": r["pipeline"]["cpu_s"],
                    "ratio": r["ratio"],
                    **(
                        {
                            "baseline_rate_per_s": r["baseline"]["rate_per_s"],
                            "baseline_elapsed_s": r["baseline"]["elapsed_s"],
                            "baseline_cpu_s": r["baseline"]["cpu_s"],
                            "baseline_ratio": r["baseline_ratio"],
                        }
                        if "baseline" in r
                        else {}
                    ),
                }
                for r in paired
            ],
            "pipeline": median["pipeline"],
            "ratio": median["ratio"],
            **({"baseline": _baseline_summary(old[2], paired)} if old is not None else {}),
            # The pipeline's fastest round against the floor's fastest run of all, shape
            # search and rounds alike: both at their best, whenever that was.
            "ratio_best_against_best": round(
                best_pipeline
                / max(
                    float(floor["rate_per_s"]), *(float(r["floor"]["rate_per_s"]) for r in paired)
                ),
                3,
            ),
        }
        if profile_run and profile.py_spy() is None:
            log("throughput: py-spy is not installed (pip install py-spy); no profile")
            result["profile"] = {}
            result["profile_missing"] = "py-spy is not installed (pip install py-spy)"
        elif profile_run:
            log("throughput: profiled pipeline run (not timed)")
            profiled = pipeline_at(PROFILE_FIRST_ID, record=processes.log_dir)
            result["profile"] = profiled.get("profile", {})
            result["profiled_run_rate_per_s"] = profiled["rate_per_s"]
        counts = sandbox.admin("/ledger-counts")
        last = PIPELINE_FIRST_ID + rounds * n
        applied = [v for k, v in counts.items() if PIPELINE_FIRST_ID <= int(k) < last]
        result["pipeline_exactly_once"] = len(applied) == rounds * n and all(
            v == 1 for v in applied
        )
        if old is not None:
            last = BASELINE_FIRST_ID + rounds * n
            applied = [v for k, v in counts.items() if BASELINE_FIRST_ID <= int(k) < last]
            result["baseline"]["exactly_once"] = len(applied) == rounds * n and all(
                v == 1 for v in applied
            )
        return result


def _baseline_round(
    old: tuple[str, dict[str, str], str, Path],
    sandbox: SandboxProcess,
    broker_url: str,
    processes: Processes,
    n: int,
    index: int,
) -> dict[str, Any]:
    database_url, env, _, path = old
    return run_pipeline(
        sandbox,
        database_url,
        broker_url,
        env,
        processes,
        n,
        BASELINE_FIRST_ID + index * n,
        baseline=path,
    )


def _baseline_summary(described: str, paired: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline's median round against this code's, each the median of its own ratios."""
    ratios = sorted(float(r["baseline_ratio"]) for r in paired)
    ours = sorted(float(r["ratio"]) for r in paired)
    middle = (len(ratios) - 1) // 2
    return {
        "commit": described,
        "ratio": ratios[middle],
        "ratio_now": ours[middle],
        "now_over_baseline": round(ours[middle] / ratios[middle], 3),
    }
