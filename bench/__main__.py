"""`python -m bench`: see bench/report.py for the table and bench/RESULTS.md for a full run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, targets
from bench.common import Services, log

ALL = ("throughput", "drain", "limiter", "polling", "memory", "audit")
RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput against the floor, API calls per instruction, memory and "
        "audit-query timings, on real PostgreSQL and RabbitMQ with the sandbox over a socket.",
    )
    parser.add_argument(
        "--only",
        default=",".join(ALL),
        help=f"comma-separated subset of {','.join(ALL)} (default: all)",
    )
    parser.add_argument("--n", type=int, default=5000, help="throughput: instructions")
    parser.add_argument(
        "--floor-processes",
        default="2,3",
        help="throughput: process counts the floor runs at (each with every thread count)",
    )
    parser.add_argument(
        "--floor-threads",
        default="4,8,16",
        help="throughput: thread counts the floor runs at; its best rate counts",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="throughput: paired rounds (the floor at its best shape, then the pipeline); "
        "the median round's ratio counts",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="throughput: skip the profiled pipeline run"
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="throughput: also run the pipeline of an earlier commit (a git worktree) in every "
        "round, against the same floor; its median ratio is reported beside this one's",
    )
    parser.add_argument(
        "--compare-env",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="throughput: a setting for the earlier commit's processes only (repeatable; when "
        "given, the earlier commit does not get the rate limits the current one runs at)",
    )
    parser.add_argument(
        "--drain", type=int, default=2000, help="drain: transfers published at once"
    )
    parser.add_argument("--singles", type=int, default=200, help="polling: single transfers")
    parser.add_argument(
        "--bulk-members", type=int, default=1000, help="polling: bulk-member transfers"
    )
    parser.add_argument("--bulk-sets", type=int, default=20, help="polling: bulk requests")
    parser.add_argument("--pending", type=int, default=100_000, help="memory: pending instructions")
    parser.add_argument("--memory-seconds", type=float, default=45.0, help="memory: sampling")
    parser.add_argument(
        "--instructions", type=int, default=1_000_000, help="audit: client instructions"
    )
    parser.add_argument("--audit-events", type=int, default=10_000_000, help="audit: events")
    parser.add_argument("--repeats", type=int, default=200, help="audit: timings per query")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server to make databases on (each benchmark drops its own)",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        help="RabbitMQ (each benchmark makes and deletes a vhost)",
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "latest.json", help="where the JSON goes"
    )
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    bad = [item for item in args.compare_env if "=" not in item]
    if bad:
        parser.error(f"--compare-env takes NAME=VALUE, not {bad[0]!r}")
    unknown = set(args.only) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    services = Services(args.database_url, args.broker_url)
    log_root = Path(tempfile.mkdtemp(prefix="ibkr-bench-"))
    log(f"logs and raw profiles under {log_root}")
    results: dict[str, Any] = {"machine": targets.machine(), "started_at": time.time()}
    for name in args.only:
        started = time.monotonic()
        try:
            results[name] = run_one(name, args, services, log_root)
        except Exception as error:
            log(f"{name} failed: {type(error).__name__}: {error}")
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results[name]["wall_s"] = round(time.monotonic() - started, 1)
    results["targets"] = targets.targets(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report.markdown(results))
    log(f"JSON written to {args.json}")
    failed = [t for t in results["targets"] if t["verdict"] == "FAIL"]
    return 1 if failed or any("error" in results[n] for n in args.only) else 0


def run_one(name: str, args: argparse.Namespace, services: Services, log_root: Path) -> Any:
    if name == "throughput":
        from bench import throughput

        return throughput.run(
            services,
            log_root,
            n=args.n,
            floor_threads=[int(t) for t in args.floor_threads.split(",") if t],
            floor_processes=[int(p) for p in args.floor_processes.split(",") if p],
            profile_run=not args.no_profile,
            rounds=args.rounds,
            compare=args.compare,
            compare_env=dict(item.split("=", 1) for item in args.compare_env)
            if args.compare_env
            else None,
        )
    if name == "drain":
        from bench import drain

        return drain.run(services, log_root, n=args.drain)
    if name == "limiter":
        from bench import limiter

        return limiter.run(services, log_root)
    if name == "polling":
        from bench import polling

        return polling.run(
            services,
            log_root,
            singles=args.singles,
            bulk_members=args.bulk_members,
            bulk_sets=args.bulk_sets,
        )
    if name == "memory":
        from bench import memory

        return memory.run(services, log_root, pending=args.pending, seconds=args.memory_seconds)
    from bench import audit

    return audit.run(
        services,
        log_root,
        instructions=args.instructions,
        events=args.audit_events,
        repeats=args.repeats,
    )


if __name__ == "__main__":
    sys.exit(main())
