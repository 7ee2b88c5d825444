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

import tempfile
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from bench import baseline, profile
from bench.common import (
    Processes,
    SandboxProcess,
    Services,
    log,
    make_key,
    scenario,
    start_sandbox,
    temporary_database,
    worker_env,
)
from bench.runs import (
    FLOOR_FIRST_ID,
    LIMITER_PER_MINUTE,
    LIMITER_PER_SECOND,
    Shape,
    run_floor,
    run_pipeline,
)

PIPELINE_FIRST_ID = 8_000_000_001
PROFILE_FIRST_ID = 9_000_000_001
BASELINE_FIRST_ID = 8_500_000_001


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
