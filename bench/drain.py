"""4: a burst drained at IBKR's real limits, in the default configuration.

2,000 internal cash transfers are published at once. The sandbox (its own process) limits as
IBKR does (10 requests per second per endpoint, 600 per minute, 429 beyond) and stamps every
request on receipt, token requests included; half the transfers answer 201, the other half 202
and finish 1-3 s later. The worker and the scheduler run exactly as the Procfile starts them
(`ibkr-worker worker`, `ibkr-worker scheduler`, no flags), with the product's default limits.

Reported: wall time from the first publish to the last final status, against the least the
limits allow for the calls made (calls / 10 per second: IBKR's 600 a minute); calls per
instruction; the most arrivals per endpoint in any second and per client in any minute, as the
sandbox counted them; 429s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import runs
from bench.common import (
    BIN,
    Services,
    await_consumers,
    await_scheduler,
    instruction_messages,
    log,
    make_key,
    publish,
    scenario,
    start_sandbox,
    wait_for,
    worker_env,
)

FIRST_ID = 4_000_000_001
#: IBKR's limit for a client: 600 a minute, 10 a second on average.
CLIENT_RATE_PER_S = 10.0


def transfer(client_instruction_id: int) -> dict[str, Any]:
    # Every second one above the sandbox's threshold: 202, finished 1-3 s later.
    slow = client_instruction_id % 2 == 0
    return runs.transfer(client_instruction_id, 150 if slow else 2.5)


def _finals(database_url: str, n: int) -> tuple[int, float | None]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            count, last = connection.execute(
                text(
                    "SELECT count(*), extract(epoch FROM max(final_at)) FROM client_instructions "
                    "WHERE client_instruction_id BETWEEN :first AND :last "
                    "AND final_at IS NOT NULL"
                ),
                {"first": FIRST_ID, "last": FIRST_ID + n - 1},
            ).one()
    finally:
        engine.dispose()
    return int(count), float(last) if last is not None else None


def run(services: Services, log_root: Path, *, n: int) -> dict[str, Any]:
    with (
        scenario(services, "drain", log_root) as (database_url, broker_url, processes),
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
                "internal_cash_async_above": 100,
                "timings": {"internal_cash_async_delay_s": [1.0, 3.0]},
            },
        )
        env = worker_env(database_url, broker_url, sandbox, private_key)
        alive = lambda: processes.check_alive("worker", "scheduler")  # noqa: E731
        processes.start("worker", [str(BIN / "ibkr-worker"), "worker"], env)
        processes.start("scheduler", [str(BIN / "ibkr-worker"), "scheduler"], env)
        await_consumers(broker_url, 1, alive)
        await_scheduler(processes, alive)
        bodies = instruction_messages(transfer(FIRST_ID + i) for i in range(n))
        log(f"drain: {n} transfers at IBKR's limits, half 202 finishing 1-3 s later")
        started = publish(broker_url, "ibkr.instructions", bodies)
        wait_for(
            lambda: _finals(database_url, n)[0] >= n,
            1800,
            f"{n} final instructions",
            every_s=1.0,
            alive=alive,
        )
        _, last_final = _finals(database_url, n)
        stats = sandbox.stats()
        processes.stop("worker")
        processes.stop("scheduler")
    assert last_final is not None
    arrivals = stats["arrivals"]
    calls = int(arrivals["total"])
    per_endpoint = {
        endpoint: count
        for counts in arrivals["maxPerEndpointPerSecond"].values()
        for endpoint, count in counts.items()
    }
    wall_s = last_final - started
    least_s = calls / CLIENT_RATE_PER_S
    return {
        "instructions": n,
        "calls": calls,
        "calls_by_endpoint": {name: e["count"] for name, e in stats["endpoints"].items()},
        "calls_per_instruction": round(calls / n, 3),
        "drain_s": round(wall_s, 1),
        "least_s": round(least_s, 1),
        "wall_over_least": round(wall_s / least_s, 3),
        "max_per_endpoint_per_second": max(per_endpoint.values(), default=0),
        "max_per_endpoint_per_second_by_endpoint": per_endpoint,
        "max_per_client_per_minute": max(arrivals["maxPerClientPerMinute"].values(), default=0),
        "throttled_429": stats["throttled"],
    }
