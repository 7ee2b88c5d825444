"""5: status and audit queries at scale, and the plan of the scheduler's "due now" query.

The schema comes from the product's migrations (so the real indexes are measured). The rows
are generated in SQL (`INSERT ... SELECT generate_series`): the secondary indexes of the two
big tables are dropped first and rebuilt afterwards from their own definitions, which is far
faster than maintaining them row by row and leaves exactly the same indexes.

The data: N client instructions (99% final, 1% PENDING with `next_poll_at` spread an hour
either side of now), in instruction sets of 50, on 20,000 accounts, 10 per correlation id;
E audit events spread round-robin over the instructions (so one instruction's events lie far
apart in the table, as they do in production), over a year. The queries are the functions the
`status` and `audit` commands call (worker/audit.py), each timed in-process around the call
with a fresh session, with a different random key every repetition.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from bench.common import Services, log, percentile, temporary_database

FIRST_CLIENT_ID = 1_000_000_000
FIRST_INSTRUCTION_ID = 40_000_000
FIRST_SET_ID = 9_000
SET_SIZE = 50
ACCOUNTS = 20_000
PER_CORRELATION = 10
SPAN_DAYS = 365
TARGET_P95_MS = 50.0

FILL_INSTRUCTIONS = """
INSERT INTO client_instructions (id, client_instruction_id, position, instruction_type,
    account_id, target_account_id, amount, currency, correlation_id, message_id, status,
    instruction_id, instruction_set_id, ib_reference_id, attempt_count, poll_count,
    error_retry_count, api_call_count, next_poll_at, event_sequence, created_at, updated_at,
    final_at)
SELECT g, :first_client + g - 1, (g - 1) % :set_size, 'INTERNAL_CASH_TRANSFER',
    'U' || (1000000 + g % :accounts), 'U15667', 100.25, 'USD',
    'corr-' || ((g - 1) / :per_correlation), 'msg-' || g,
    CASE WHEN g % 100 = 0 THEN 'PENDING' ELSE 'PROCESSED' END,
    :first_instruction + g - 1, :first_set + (g - 1) / :set_size, 130000000 + g, 1,
    1, 0, 2,
    CASE WHEN g % 100 = 0 THEN now() + ((g % 7200) - 3600) * interval '1 second' END,
    3, :base + (g - 1) * :step, :base + (g - 1) * :step + interval '3 seconds',
    CASE WHEN g % 100 = 0 THEN NULL ELSE :base + (g - 1) * :step + interval '3 seconds' END
FROM generate_series(1, :n) AS g
"""

# Event e belongs to instruction i = (e - 1) % n + 1 and is its k-th (k = (e - 1) / n):
# RECEIVED, SUBMITTING, then PENDING / PROCESSED and poll notes carrying IBKR's ids.
FILL_EVENTS = """
INSERT INTO audit_events (id, at, client_instruction_pk, client_instruction_id, instruction_id,
    instruction_set_id, account_id, correlation_id, from_status, to_status, reason, actor,
    api_method, api_path, api_http_status, api_latency_ms)
SELECT e, :base + (e - 1) * :event_step, i, :first_client + i - 1,
    CASE WHEN k >= 2 THEN :first_instruction + i - 1 END,
    CASE WHEN k >= 2 THEN :first_set + (i - 1) / :set_size END,
    'U' || (1000000 + i % :accounts), 'corr-' || ((i - 1) / :per_correlation),
    CASE k WHEN 0 THEN NULL WHEN 1 THEN 'RECEIVED' WHEN 2 THEN 'SUBMITTING' ELSE 'PENDING' END,
    CASE k WHEN 0 THEN 'RECEIVED' WHEN 1 THEN 'SUBMITTING' ELSE 'PENDING' END,
    CASE k WHEN 0 THEN 'received INTERNAL_CASH_TRANSFER request from message msg-' || i
           WHEN 1 THEN 'sending attempt 1: POST /gw/api/v1/internal-cash-transfers'
           ELSE 'still PENDING at IBKR; next look scheduled' END,
    CASE WHEN k = 0 THEN 'worker' ELSE 'scheduler' END,
    CASE WHEN k >= 2 THEN 'GET' END,
    CASE WHEN k >= 2 THEN '/gw/api/v1/client-instructions/{clientInstructionId}' END,
    CASE WHEN k >= 2 THEN 200 END,
    CASE WHEN k >= 2 THEN 40.5 + (e % 50) END
FROM (SELECT e, (e - 1) % :n + 1 AS i, (e - 1) / :n AS k
      FROM generate_series(1, :events) AS e) AS s
"""

BIG_TABLES = ("client_instructions", "audit_events")


def _secondary_indexes(engine: Engine) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of the big tables' indexes that back no constraint."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i "
                "WHERE i.tablename = ANY(:tables) AND i.schemaname = current_schema() "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
            ),
            {"tables": list(BIG_TABLES)},
        ).all()
    return [(str(r[0]), str(r[1])) for r in rows]


def fill(database_url: str, instructions: int, events: int) -> dict[str, Any]:
    engine = create_engine(database_url)
    timings: dict[str, float] = {}
    base = datetime.now(UTC) - timedelta(days=SPAN_DAYS)
    span = timedelta(days=SPAN_DAYS)
    params = {
        "n": instructions,
        "events": events,
        "first_client": FIRST_CLIENT_ID,
        "first_instruction": FIRST_INSTRUCTION_ID,
        "first_set": FIRST_SET_ID,
        "set_size": SET_SIZE,
        "accounts": ACCOUNTS,
        "per_correlation": PER_CORRELATION,
        "base": base,
        "step": span / max(instructions, 1),
        "event_step": span / max(events, 1),
    }
    try:
        indexes = _secondary_indexes(engine)
        started = time.monotonic()
        with engine.begin() as connection:
            for name, _ in indexes:
                connection.execute(text(f'DROP INDEX "{name}"'))
            connection.execute(text(FILL_INSTRUCTIONS), params)
            timings["instructions_s"] = round(time.monotonic() - started, 1)
            connection.execute(text(FILL_EVENTS), params)
            timings["events_s"] = round(time.monotonic() - started - timings["instructions_s"], 1)
            for table in BIG_TABLES:
                connection.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
        started = time.monotonic()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("SET maintenance_work_mem = '512MB'"))
            for _, definition in indexes:
                connection.execute(text(definition))
            timings["indexes_s"] = round(time.monotonic() - started, 1)
            for table in BIG_TABLES:
                connection.execute(text(f"VACUUM ANALYZE {table}"))
            timings["vacuum_analyze_s"] = round(
                time.monotonic() - started - timings["indexes_s"], 1
            )
            sizes = connection.execute(
                text(
                    "SELECT pg_size_pretty(pg_total_relation_size('client_instructions')), "
                    "pg_size_pretty(pg_total_relation_size('audit_events'))"
                )
            ).one()
    finally:
        engine.dispose()
    return {
        "timings": timings,
        "indexes_rebuilt": [name for name, _ in indexes],
        "size_client_instructions": sizes[0],
        "size_audit_events": sizes[1],
        "base": base,
    }


def _time(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    samples = []
    rows = 0
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        samples.append((time.perf_counter() - started) * 1000.0)
        rows += len(result) if isinstance(result, list) else int(result is not None)
    return {
        "p50_ms": round(percentile(samples, 0.50) or 0.0, 2),
        "p95_ms": round(percentile(samples, 0.95) or 0.0, 2),
        "max_ms": round(max(samples), 2),
        "mean_rows": round(rows / repeats, 1),
        "repeats": repeats,
    }


def time_queries(
    database_url: str, instructions: int, events: int, base: datetime, repeats: int
) -> dict[str, Any]:
    from worker.audit import audit_trail, find_status
    from worker.store import Store

    store = Store.connect(database_url)
    rng = random.Random(20261124)
    span_s = SPAN_DAYS * 86400.0
    sets = max(1, instructions // SET_SIZE)
    correlations = max(1, instructions // PER_CORRELATION)

    def instruction() -> int:
        return rng.randrange(1, instructions + 1)

    def with_session(query: Callable[[Any], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with store.transaction() as tx:
                return query(tx)

        return call

    def window(hours: float) -> tuple[datetime, datetime]:
        start = base + timedelta(seconds=rng.uniform(0, span_s - hours * 3600))
        return start, start + timedelta(hours=hours)

    def account_since(session: Any) -> Any:
        since, _ = window(24 * 30)
        return audit_trail(session, account_id=f"U{1000000 + rng.randrange(ACCOUNTS)}", since=since)

    def time_range(session: Any) -> Any:
        since, until = window(1)
        return audit_trail(session, since=since, until=until)

    queries: dict[str, Callable[[], Any]] = {
        "status --client-instruction-id": with_session(
            lambda s: find_status(s, client_instruction_id=FIRST_CLIENT_ID + instruction() - 1)
        ),
        "status --message-id": with_session(
            lambda s: find_status(s, message_id=f"msg-{instruction()}")
        ),
        "audit --client-instruction-id": with_session(
            lambda s: audit_trail(s, client_instruction_id=FIRST_CLIENT_ID + instruction() - 1)
        ),
        "audit --instruction-id": with_session(
            lambda s: audit_trail(s, instruction_id=FIRST_INSTRUCTION_ID + instruction() - 1)
        ),
        "audit --instruction-set-id": with_session(
            lambda s: audit_trail(s, instruction_set_id=FIRST_SET_ID + rng.randrange(sets))
        ),
        "audit --account": with_session(
            lambda s: audit_trail(s, account_id=f"U{1000000 + rng.randrange(ACCOUNTS)}")
        ),
        "audit --correlation-id": with_session(
            lambda s: audit_trail(s, correlation_id=f"corr-{rng.randrange(correlations)}")
        ),
        "audit --since --until (1 h)": with_session(time_range),
        "audit --account --since (30 days)": with_session(account_since),
    }
    try:
        for call in queries.values():  # warm the pool and the statement caches
            call()
        return {name: _time(call, repeats) for name, call in queries.items()}
    finally:
        store.close()


def explain_due_now(database_url: str) -> dict[str, Any]:
    """Time the scheduler's claim (`store.tracked.claim_due`) once, capturing its SQL, inside a
    transaction that is rolled back; then EXPLAIN ANALYZE that SQL (also rolled back) on the
    same rows."""
    from models import make_engine
    from worker.config import DEFAULT_LEASE_S
    from worker.store import Tx
    from worker.store.tracked import claim_due

    engine = make_engine(database_url)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE CLIENT_INSTRUCTIONS"):
            captured.append((statement, parameters))

    try:
        with engine.connect() as connection:
            outer = connection.begin()
            event.listen(connection, "before_cursor_execute", capture)
            now = datetime.now(UTC)
            started = time.perf_counter()
            claimed = claim_due(
                Tx(connection),
                now=now,
                owner="bench-explain",
                lease_until=now + timedelta(seconds=DEFAULT_LEASE_S),
                limit=100,
            )
            claim_ms = (time.perf_counter() - started) * 1000.0
            outer.rollback()
        statement, parameters = captured[0]
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("BEGIN")
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = [str(row[0]) for row in cursor.fetchall()]
            cursor.execute("ROLLBACK")
        finally:
            raw.close()
    finally:
        engine.dispose()
    return {
        "statement": " ".join(statement.split()),
        "claimed": len(claimed),
        "claim_due_ms": round(claim_ms, 2),
        "plan": plan,
    }


def run(
    services: Services, log_root: Path, *, instructions: int, events: int, repeats: int
) -> dict[str, Any]:
    del log_root
    with (
        temporary_database(services.database_url, "bench_audit") as database_url,
        tempfile.TemporaryDirectory(),
    ):
        from worker.store.migrate import upgrade_to_head

        upgrade_to_head(database_url)
        log(f"audit: filling {instructions} instructions and {events} audit events")
        filled = fill(database_url, instructions, events)
        log(f"audit: filled in {filled['timings']}; timing queries")
        timings = time_queries(database_url, instructions, events, filled["base"], repeats)
        explain = explain_due_now(database_url)
        filled.pop("base")
        return {
            "instructions": instructions,
            "events": events,
            "fill": filled,
            "queries": timings,
            "due_now": explain,
            "target_p95_ms": TARGET_P95_MS,
        }
