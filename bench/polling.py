"""3: polling efficiency with IBKR's limits on.

The sandbox (its own process) enforces 10 requests per second per endpoint and 600 per minute,
answers every internal cash transfer 202 and finishes it at its next batch: the batch period
is set to 1.5 s, so a single transfer is PROCESSED 1.5-3 s after it arrived, and the members of
a bulk request at the same next batch. The worker and scheduler run with the product's
defaults (client-side limits 10/s and 600/min, the per-type poll backoff).

Reported: API calls (at the sandbox, submissions included, the token request apart) per final
instruction, 429s seen, and the lag from the sandbox's final transition (`finalAtReal`) to the
database's `final_at`, in real seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.common import (
    BIN,
    Services,
    dramatiq_message,
    log,
    make_key,
    percentile,
    publish,
    queue_consumers,
    scenario,
    start_sandbox,
    wait_for,
    worker_env,
)

BATCH_PERIOD_S = 1.5
SINGLE_FIRST_ID = 5_000_000_001
BULK_FIRST_ID = 6_000_000_001


def _member(client_instruction_id: int) -> dict[str, Any]:
    return {
        "clientInstructionId": client_instruction_id,
        "sourceAccountId": "U46377",
        "targetAccountId": "U15667",
        "amount": 2.5,
        "currency": "USD",
    }


def requests(singles: int, bulk_members: int, bulk_sets: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"instructionType": "INTERNAL_CASH_TRANSFER", "instruction": _member(SINGLE_FIRST_ID + i)}
        for i in range(singles)
    ]
    per_set = max(1, bulk_members // max(bulk_sets, 1))
    for s in range(bulk_sets):
        first = BULK_FIRST_ID + s * per_set
        out.append(
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instructions": [_member(first + i) for i in range(per_set)],
            }
        )
    return out


def _final_times(database_url: str) -> dict[int, tuple[str, float | None]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT client_instruction_id, status, extract(epoch FROM final_at) "
                    "FROM client_instructions WHERE duplicate_of_id IS NULL"
                )
            ).all()
    finally:
        engine.dispose()
    return {int(r[0]): (str(r[1]), float(r[2]) if r[2] is not None else None) for r in rows}


def _lags(
    db: dict[int, tuple[str, float | None]], sandbox: dict[str, dict[str, Any]], ids: range
) -> list[float]:
    lags = []
    for cid in ids:
        final = db.get(cid)
        seen = sandbox.get(str(cid))
        if final is None or final[1] is None or seen is None:
            continue
        lags.append(final[1] - float(seen["finalAtReal"]))
    return lags


def _summary(values: list[float]) -> dict[str, float | None]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "count": len(values),
        "p50_s": rounded(percentile(values, 0.50)),
        "p99_s": rounded(percentile(values, 0.99)),
        "max_s": rounded(max(values) if values else None),
    }


def run(
    services: Services, log_root: Path, *, singles: int, bulk_members: int, bulk_sets: int
) -> dict[str, Any]:
    with (
        scenario(services, "polling", log_root) as (database_url, broker_url, processes),
        tempfile.TemporaryDirectory(prefix="bench-key-") as key_dir,
    ):
        from worker.store.migrate import upgrade_to_head

        private_key, public_key = make_key(Path(key_dir))
        upgrade_to_head(database_url)
        sandbox = start_sandbox(
            processes,
            public_key,
            {
                "rate_limits": True,
                "internal_cash_always_async": True,
                "timings": {"internal_cash_batch_s": BATCH_PERIOD_S},
            },
        )
        env = worker_env(database_url, broker_url, sandbox, private_key)
        alive = lambda: processes.check_alive("worker", "scheduler")  # noqa: E731
        processes.start(
            "worker",
            [str(BIN / "ibkr-worker"), "worker", "--processes", "1", "--threads", "8"],
            env,
        )
        wait_for(
            lambda: queue_consumers(broker_url, "ibkr.instructions") >= 1,
            60,
            "the worker's consumers",
            alive=alive,
        )
        processes.start("scheduler", [str(BIN / "ibkr-worker"), "scheduler"], env)
        wait_for(
            lambda: "scheduler started" in processes.log_text("scheduler"),
            60,
            "the scheduler",
            alive=alive,
        )
        bodies = [
            dramatiq_message("ibkr.instructions", "submit_instruction", {"request": request})
            for request in requests(singles, bulk_members, bulk_sets)
        ]
        per_set = max(1, bulk_members // max(bulk_sets, 1))
        total = singles + per_set * bulk_sets
        log(f"polling: {singles} singles and {bulk_sets} bulk requests of {per_set}")
        started = publish(broker_url, "ibkr.instructions", bodies)

        def all_final() -> bool:
            statuses = _final_times(database_url)
            return len(statuses) >= total and all(f is not None for _, f in statuses.values())

        wait_for(all_final, 900, f"{total} final instructions", every_s=0.5, alive=alive)
        db = _final_times(database_url)
        transitions = sandbox.final_transitions()
        stats = sandbox.stats()
        processes.stop("worker")
        processes.stop("scheduler")

        endpoints = stats["endpoints"]
        gw_calls = {name: e["count"] for name, e in endpoints.items() if " /gw/" in name}
        token_calls = sum(e["count"] for name, e in endpoints.items() if "/oauth2/" in name)
        statuses = [s for s, _ in db.values()]
        singles_ids = range(SINGLE_FIRST_ID, SINGLE_FIRST_ID + singles)
        bulk_ids = range(BULK_FIRST_ID, BULK_FIRST_ID + per_set * bulk_sets)
        single_lags = _lags(db, transitions, singles_ids)
        bulk_lags = _lags(db, transitions, bulk_ids)
        single_calls = sum(
            n
            for name, n in gw_calls.items()
            if name.endswith(("transfers", "{clientInstructionId}"))
        )
        bulk_calls = sum(
            n for name, n in gw_calls.items() if name.endswith((":bulk", "{instructionSetId}"))
        )
        last_final = max(f for _, f in db.values() if f is not None)
        return {
            "instructions": total,
            "processed": statuses.count("PROCESSED"),
            "api_calls": sum(gw_calls.values()),
            "api_calls_by_endpoint": gw_calls,
            "token_requests": token_calls,
            "calls_per_final": round(sum(gw_calls.values()) / total, 3),
            "singles_calls_per_final": round(single_calls / singles, 3) if singles else None,
            "bulk_calls_per_final": round(bulk_calls / (per_set * bulk_sets), 3)
            if bulk_sets
            else None,
            "throttled_429": stats["throttled"],
            "busiest_second_per_endpoint": {
                name: e["maxPerSecond"] for name, e in endpoints.items() if " /gw/" in name
            },
            "busiest_minute": max(
                (c["maxPerMinute"] for c in stats.get("clients", {}).values()), default=0
            ),
            "lag_all": _summary(single_lags + bulk_lags),
            "lag_singles": _summary(single_lags),
            "lag_bulk": _summary(bulk_lags),
            "all_final_after_s": round(last_final - started, 1),
            "sandbox_batch_period_s": BATCH_PERIOD_S,
        }
