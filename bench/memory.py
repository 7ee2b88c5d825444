"""4: peak RSS of the worker and scheduler processes while 100,000 instructions are pending.

The pending rows are written straight into PostgreSQL (PENDING internal cash transfers with
their submissions, already sent, `next_poll_at` spread 5-65 minutes ahead), so the scheduler
holds them without being allowed to poll them all during the sampling. To see the processes
working rather than idle, 2,000 new instructions (answered 201 by the sandbox) are published
at the start of the sampling; RSS is sampled every 0.25 s for the whole window.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text

from bench.common import (
    BIN,
    Services,
    dramatiq_message,
    log,
    make_key,
    publish,
    queue_consumers,
    scenario,
    start_sandbox,
    wait_for,
    worker_env,
)
from bench.throughput import transfer

TRAFFIC = 2000
TRAFFIC_FIRST_ID = 4_000_000_001
PENDING_FIRST_ID = 3_000_000_001

FILL_SUBMISSIONS = """
INSERT INTO submissions (id, message_id, correlation_id, instruction_type, is_bulk,
    endpoint_path, request_json, attempt_count, sent_attempts, instruction_set_id, http_status,
    created_at, updated_at)
SELECT g, 'pending-' || g, 'mem-' || (g % 1000), 'INTERNAL_CASH_TRANSFER', false,
    '/gw/api/v1/internal-cash-transfers',
    '{"instructionType":"INTERNAL_CASH_TRANSFER","instruction":{"clientInstructionId":'
        || (:first + g - 1) || ',"sourceAccountId":"U46377","targetAccountId":"U15667",'
        || '"amount":' || '2.50,"currency":"USD"}}',
    1, 1, 500000 + g, 202, now() - interval '1 minute', now() - interval '1 minute'
FROM generate_series(1, :n) AS g
"""

FILL_PENDING = """
INSERT INTO client_instructions (id, client_instruction_id, submission_id, position,
    instruction_type, account_id, target_account_id, amount, currency, correlation_id,
    message_id, status, instruction_id, instruction_set_id, attempt_count, poll_count,
    error_retry_count, api_call_count, next_poll_at, deadline_at, event_sequence,
    created_at, updated_at)
SELECT g, :first + g - 1, g, 0, 'INTERNAL_CASH_TRANSFER', 'U46377', 'U15667', 2.50, 'USD',
    'mem-' || (g % 1000), 'pending-' || g, 'PENDING', 60000000 + g, 500000 + g, 1, 0, 0, 1,
    now() + interval '5 minutes' + (g % 3600) * interval '1 second',
    now() + interval '2 hours', 3, now() - interval '1 minute', now() - interval '1 minute'
FROM generate_series(1, :n) AS g
"""


def fill_pending(database_url: str, n: int) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(FILL_SUBMISSIONS), {"n": n, "first": PENDING_FIRST_ID})
            connection.execute(text(FILL_PENDING), {"n": n, "first": PENDING_FIRST_ID})
            for table in ("submissions", "client_instructions"):
                connection.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE client_instructions"))
            connection.execute(text("VACUUM ANALYZE submissions"))
    finally:
        engine.dispose()


def _rss_mb(process: psutil.Process) -> float | None:
    try:
        return process.memory_info().rss / 1_000_000
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def sample(roles: dict[str, int], seconds: float, every_s: float = 0.25) -> dict[str, float]:
    """Peak RSS (MB, 10^6 bytes) per role; a role's processes are the pid and its descendants, each
    counted on its own (`worker` children are separate processes)."""
    peaks: dict[str, float] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for role, pid in roles.items():
            try:
                root = psutil.Process(pid)
                family = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in family:
                rss = _rss_mb(process)
                if rss is None:
                    continue
                label = role if process.pid == pid else f"{role} child"
                peaks[label] = max(peaks.get(label, 0.0), rss)
        time.sleep(every_s)
    return {label: round(value, 1) for label, value in sorted(peaks.items())}


def run(services: Services, log_root: Path, *, pending: int, seconds: float) -> dict[str, Any]:
    with (
        scenario(services, "memory", log_root) as (database_url, broker_url, processes),
        tempfile.TemporaryDirectory(prefix="bench-key-") as key_dir,
    ):
        from worker.store.migrate import upgrade_to_head

        private_key, public_key = make_key(Path(key_dir))
        upgrade_to_head(database_url)
        log(f"memory: writing {pending} pending instructions")
        fill_pending(database_url, pending)
        sandbox = start_sandbox(processes, public_key, {"rate_limits": False})
        env = worker_env(database_url, broker_url, sandbox, private_key)
        alive = lambda: processes.check_alive("worker", "scheduler")  # noqa: E731
        worker = processes.start(
            "worker",
            # The default thread count: every thread holds a message and its stack.
            [str(BIN / "ibkr-worker"), "worker", "--processes", "2"],
            env,
        )
        wait_for(
            lambda: queue_consumers(broker_url, "ibkr.instructions") >= 2,
            60,
            "the worker's consumers",
            alive=alive,
        )
        scheduler = processes.start("scheduler", [str(BIN / "ibkr-worker"), "scheduler"], env)
        wait_for(
            lambda: "scheduler started" in processes.log_text("scheduler"),
            60,
            "the scheduler",
            alive=alive,
        )
        bodies = [
            dramatiq_message(
                "ibkr.instructions",
                "submit_instruction",
                {"request": transfer(TRAFFIC_FIRST_ID + i)},
            )
            for i in range(TRAFFIC)
        ]
        log(f"memory: sampling RSS for {seconds:.0f} s while {TRAFFIC} new instructions flow")
        publish(broker_url, "ibkr.instructions", bodies)
        peaks = sample({"worker": worker.pid, "scheduler": scheduler.pid}, seconds)
        alive()
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                processed = connection.execute(
                    text(
                        "SELECT count(*) FROM client_instructions WHERE status = 'PROCESSED' "
                        "AND client_instruction_id >= :lo"
                    ),
                    {"lo": TRAFFIC_FIRST_ID},
                ).scalar_one()
                still_pending = connection.execute(
                    text("SELECT count(*) FROM client_instructions WHERE status = 'PENDING'")
                ).scalar_one()
        finally:
            engine.dispose()
        processes.stop("worker")
        processes.stop("scheduler")
        return {
            "pending": int(still_pending),
            "traffic_processed": int(processed),
            "traffic": TRAFFIC,
            "seconds": seconds,
            "peak_rss_mb": peaks,
            "max_process_rss_mb": max(peaks.values(), default=0.0),
        }
