"""5: the shared rate limiter's own cost per reservation, at IBKR's limits (10/s, 600/min) and
at 100 times them (1,000/s, 60,000/min), on PostgreSQL.

Each ring is filled first (a reservation then replaces the limit-th latest grant, as in a
steady run), then reservations are timed one at a time (a thread alone) and sixteen to a
transaction (what the reserver does when threads wait together). The cost should not depend on
the limits: a reservation reads and writes one ring position per limit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import Services, log, temporary_database

SINGLE = 1500
BATCHED = 400
BATCH = 16
SHAPES = {"10/s, 600/min": (10, 600), "1000/s, 60000/min": (1000, 60000)}


def _cost(url: str, per_second: int, per_minute: int) -> dict[str, float]:
    from worker.ibkr.ratelimit import WindowLimit, client_bucket, endpoint_bucket
    from worker.store.ratelimit import SqlLedger

    engine = SqlLedger.own_engine(url)
    ledger = SqlLedger(engine)
    limits = [
        WindowLimit(endpoint_bucket("bench", "POST /x", per_second, 1.15), per_second, 1.15),
        WindowLimit(client_bucket("bench", per_minute, 60.15), per_minute, 60.15),
    ]
    now = 1_800_000_000.0
    try:
        # Full rings first, in large batches.
        for start in range(0, per_minute, 5000):
            ledger.reserve_batch([limits] * min(5000, per_minute - start), now)
        started = time.perf_counter()
        for i in range(SINGLE):
            ledger.reserve_batch([limits], now + i)
        single_us = (time.perf_counter() - started) / SINGLE * 1e6
        started = time.perf_counter()
        for i in range(BATCHED):
            ledger.reserve_batch([limits] * BATCH, now + SINGLE + i)
        batched_us = (time.perf_counter() - started) / (BATCHED * BATCH) * 1e6
    finally:
        engine.dispose()
    return {"alone_us": round(single_us, 1), "batched_us": round(batched_us, 1)}


ROUNDS = 3


def run(services: Services, log_root: Path) -> dict[str, Any]:
    """Each shape measured `ROUNDS` times, the shapes taking turns (this machine's speed swings
    from minute to minute); the median of each counts."""
    del log_root
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in SHAPES}
    for round_number in range(ROUNDS):
        for label, (per_second, per_minute) in SHAPES.items():
            with temporary_database(services.database_url, "bench_limiter") as url:
                from worker.store.migrate import upgrade_to_head

                upgrade_to_head(url)
                log(f"limiter: round {round_number + 1}, cost per reservation at {label}")
                runs[label].append(_cost(url, per_second, per_minute))
    costs = {
        label: {
            key: sorted(run[key] for run in measured)[len(measured) // 2]
            for key in ("alone_us", "batched_us")
        }
        for label, measured in runs.items()
    }
    small, large = (costs[label]["alone_us"] for label in SHAPES)
    return {"per_reservation": costs, "large_over_small": round(large / small, 3), "runs": runs}
