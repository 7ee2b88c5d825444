"""The shared rate-limit ledger on PostgreSQL: many workers together stay inside the limits."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from models import Base
from models.db import make_engine
from models.tables import RateLimitSlot
from worker.ibkr.ratelimit import SqlLedger, WindowLimit, client_bucket, endpoint_bucket

pytestmark = pytest.mark.postgres

T0 = 1_800_000_000.0


def max_in_any_window(times: list[float], window_s: float) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_s + 1e-6:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_workers_sharing_postgres_never_exceed_either_window(empty_pg_url: str) -> None:
    engine = make_engine(empty_pg_url, pool_size=10)
    Base.metadata.create_all(engine)
    # Each "worker" has its own ledger object (as separate processes would), one database.
    ledgers = [SqlLedger(engine, prune_every=5) for _ in range(8)]
    limits = [
        WindowLimit(endpoint_bucket("acme", "POST /x"), 10, 1.05),
        WindowLimit(client_bucket("acme"), 40, 60.05),
    ]
    barrier = threading.Barrier(8)
    granted: list[float] = []
    lock = threading.Lock()

    def work(ledger: SqlLedger) -> None:
        barrier.wait()
        for step in range(12):
            slot = ledger.reserve("acme", limits, T0 + step * 0.01)
            with lock:
                granted.append(slot)

    threads = [threading.Thread(target=work, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 96
    assert max_in_any_window(granted, 1.05) == 10
    assert max_in_any_window(granted, 60.05) == 40
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(RateLimitSlot)).scalar_one()
    assert rows == 2 * 96
    engine.dispose()


def test_clients_do_not_block_each_other_on_postgres(empty_pg_url: str) -> None:
    engine = make_engine(empty_pg_url)
    Base.metadata.create_all(engine)
    ledger = SqlLedger(engine)
    one = [WindowLimit(endpoint_bucket("one", "GET /a"), 1, 1.0)]
    two = [WindowLimit(endpoint_bucket("two", "GET /a"), 1, 1.0)]
    assert ledger.reserve("one", one, T0) == T0
    assert ledger.reserve("two", two, T0) == T0
    assert ledger.reserve("one", one, T0) == T0 + 1.0
    engine.dispose()
