"""The shared rate-limit rings on PostgreSQL: processes together stay inside the limits, the
rings never grow past the limits, and different clients never wait for each other."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from models.db import make_engine
from models.tables import RateLimitGrant
from worker.ibkr.ratelimit import (
    MemoryLedger,
    WindowLimit,
    client_bucket,
    endpoint_bucket,
)
from worker.store.ratelimit import SqlLedger

pytestmark = pytest.mark.postgres

T0 = 1_800_000_000.0


def max_in_any_window(times: list[float], window_s: float) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_s + 1e-9:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_processes_sharing_postgres_never_exceed_either_window(pg_url: str) -> None:
    # Each "process" has its ledger and its own connection, as separate processes would.
    ledgers = [SqlLedger(SqlLedger.own_engine(pg_url)) for _ in range(8)]
    limits = [
        WindowLimit(endpoint_bucket("acme", "POST /x", 10, 1.05), 10, 1.05),
        WindowLimit(client_bucket("acme", 40, 60.05), 40, 60.05),
    ]
    barrier = threading.Barrier(8)
    granted: list[float] = []
    lock = threading.Lock()

    def work(ledger: SqlLedger) -> None:
        barrier.wait()
        for step in range(12):
            slots = ledger.reserve_batch([limits] * (1 + step % 3), T0 + step * 0.01)
            with lock:
                granted.extend(slots)

    threads = [threading.Thread(target=work, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 8 * (4 * 1 + 4 * 2 + 4 * 3)
    assert max_in_any_window(granted, 1.05) == 10
    assert max_in_any_window(granted, 60.05) == 40
    engine = make_engine(pg_url)
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(RateLimitGrant)).scalar_one()
    # One ring row per grant, up to each limit: 10 + 40, whatever the number of grants.
    assert rows == 10 + 40
    engine.dispose()


def test_clients_do_not_block_each_other_on_postgres(pg_url: str) -> None:
    ledger = SqlLedger(SqlLedger.own_engine(pg_url))
    one = [WindowLimit(endpoint_bucket("one", "GET /a", 1, 1.0), 1, 1.0)]
    two = [WindowLimit(endpoint_bucket("two", "GET /a", 1, 1.0), 1, 1.0)]
    assert ledger.reserve_batch([one], T0) == [T0]
    assert ledger.reserve_batch([two], T0) == [T0]
    assert ledger.reserve_batch([one], T0) == [T0 + 1.0]


calls = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2.0),
        st.sampled_from(["GET /a", "POST /b", "POST /c"]),
        st.integers(min_value=1, max_value=6),
        st.one_of(st.none(), st.floats(min_value=0, max_value=3.0)),
    ),
    min_size=1,
    max_size=40,
)


@given(schedule=calls, per_minute=st.sampled_from([7, 25]))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_database_function_grants_what_the_python_rule_grants(
    pg_database_factory, schedule: list[tuple[float, str, int, float | None]], per_minute: int
) -> None:  # type: ignore[no-untyped-def]
    """`rate_limit_grant` (migration 0002) and `ratelimit.grant_batch` are one rule: for the same
    calls (some with a deadline they may refuse) they grant, and refuse, the same."""
    from worker.store.migrate import upgrade_to_head

    url = pg_database_factory()
    upgrade_to_head(url)
    in_database, in_memory = SqlLedger(SqlLedger.own_engine(url)), MemoryLedger()
    now = T0
    for gap, endpoint, count, patience in schedule:
        now += gap
        limits = [
            WindowLimit(endpoint_bucket("c", endpoint, 3, 1.05), 3, 1.05),
            WindowLimit(client_bucket("c", per_minute, 60.05), per_minute, 60.05),
        ]
        batch = [limits] * count
        latest = [None if patience is None else now + patience] * count
        assert in_database.reserve_batch(batch, now, latest) == pytest.approx(
            in_memory.reserve_batch(batch, now, latest)
        )
