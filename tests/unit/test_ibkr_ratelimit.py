"""Client-side limits hold in every sliding window, in memory and on the shared SQL ledger, at a
cost that does not depend on the limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from models import Base
from models.db import make_engine
from worker.ibkr.ratelimit import (
    BucketState,
    MemoryLedger,
    RateLimiter,
    SlotReserver,
    WindowLimit,
    client_bucket,
    earliest,
    endpoint_bucket,
    grant_batch,
    refused,
)
from worker.store.ratelimit import SqlLedger

T0 = 1_800_000_000.0
PER_SECOND, PER_MINUTE, MARGIN = 10, 600, 0.05


def max_in_any_window(times: Sequence[float], window_s: float) -> int:
    """The most grants any half-open window [t, t + window_s) holds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_s + 1e-9:
            start += 1
        best = max(best, end - start + 1)
    return best


def limits(
    endpoint: str, per_second: int = PER_SECOND, per_minute: int = PER_MINUTE
) -> list[WindowLimit]:
    return [
        WindowLimit(endpoint_bucket("c", endpoint, per_second, 1.05), per_second, 1.0 + MARGIN),
        WindowLimit(client_bucket("c", per_minute, 60.05), per_minute, 60.0 + MARGIN),
    ]


class StillClock:
    """A manual clock whose sleep only records."""

    def __init__(self, start: float = T0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def wall_now(self) -> datetime:
        return self.now()

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class AdvancingClock(StillClock):
    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.t += max(seconds, 0.0)


# --- the pure grant ------------------------------------------------------------------------------


def fresh_states(batch: Sequence[Sequence[WindowLimit]]) -> dict[str, BucketState]:
    return {limit.bucket: BucketState() for limits_ in batch for limit in limits_}


def test_an_empty_ring_grants_now() -> None:
    batch = [limits("POST /x")]
    assert grant_batch(T0, batch, fresh_states(batch)) == [T0]


def test_the_eleventh_grant_waits_for_the_first_to_leave_its_window() -> None:
    batch = [limits("POST /x")] * 11
    grants = grant_batch(T0, batch, fresh_states(batch))
    assert grants[:10] == [T0] * 10
    assert grants[10] == pytest.approx(T0 + 1.05)


def test_grants_of_a_client_never_go_back_in_time() -> None:
    # A busy endpoint pushes its grants ahead; a call to another endpoint of the same client
    # then comes no earlier (the rings stay in time order, which makes them exact).
    batch = [limits("POST /x")] * 11 + [limits("GET /y")]
    grants = grant_batch(T0, batch, fresh_states(batch))
    assert grants[11] == grants[10]


calls = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2.0),
        st.sampled_from(["GET /a", "POST /b", "POST /c"]),
        st.integers(min_value=1, max_value=6),
    ),
    min_size=1,
    max_size=80,
)


def run_schedule(
    reserve: object, schedule: list[tuple[float, str, int]], per_minute: int
) -> dict[str, list[float]]:
    """Batches of calls at increasing times; returns the grants per endpoint."""
    now = T0
    granted: dict[str, list[float]] = {}
    for gap, endpoint, count in schedule:
        now += gap
        batch = [limits(endpoint, per_minute=per_minute)] * count
        for t in reserve(batch, now):  # type: ignore[operator]
            assert t >= now
            granted.setdefault(endpoint, []).append(t)
    return granted


def assert_within_limits(granted: dict[str, list[float]], per_minute: int) -> None:
    for times in granted.values():
        assert max_in_any_window(times, 1.0 + MARGIN) <= PER_SECOND
    everything = [t for times in granted.values() for t in times]
    assert max_in_any_window(everything, 60.0 + MARGIN) <= per_minute


@given(schedule=calls, per_minute=st.sampled_from([15, 25, 600]))
@settings(max_examples=200, deadline=None)
def test_no_window_ever_holds_more_than_the_limits(
    schedule: list[tuple[float, str, int]], per_minute: int
) -> None:
    ledger = MemoryLedger()
    assert_within_limits(run_schedule(ledger.reserve_batch, schedule, per_minute), per_minute)


@given(gaps=st.lists(st.floats(min_value=0, max_value=0.4), min_size=1, max_size=60))
@settings(max_examples=100, deadline=None)
def test_grants_are_as_early_as_the_limit_allows(gaps: list[float]) -> None:
    # One limit: grant k is at its arrival, or exactly when grant k-N leaves its window, or at
    # grant k-1 (time order), whichever is latest: never later than it needs to be.
    limit = WindowLimit("e", 3, 1.0)
    ledger = MemoryLedger()
    now, arrivals, grants = T0, [], []
    for gap in gaps:
        now += gap
        arrivals.append(now)
        [t] = ledger.reserve_batch([[limit]], now)
        grants.append(t)
    for k, t in enumerate(grants):
        earliest = arrivals[k]
        if k >= 1:
            earliest = max(earliest, grants[k - 1])
        if k >= 3:
            earliest = max(earliest, grants[k - 3] + 1.0)
        assert t == pytest.approx(earliest)


# --- the SQL ledger -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'slots.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@given(schedule=calls)
@settings(max_examples=20, deadline=None)
def test_the_sql_ledger_grants_what_the_memory_ledger_grants(
    tmp_path_factory: pytest.TempPathFactory, schedule: list[tuple[float, str, int]]
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'slots.db'}")
    Base.metadata.create_all(engine)
    try:
        in_sql = run_schedule(SqlLedger(engine).reserve_batch, schedule, 25)
        in_memory = run_schedule(MemoryLedger().reserve_batch, schedule, 25)
    finally:
        engine.dispose()
    assert in_sql.keys() == in_memory.keys()
    for endpoint, times in in_sql.items():
        assert times == pytest.approx(in_memory[endpoint])
    assert_within_limits(in_sql, 25)


def test_a_reservation_costs_the_same_at_10_per_second_and_at_60000_per_minute(
    sqlite_engine,  # type: ignore[no-untyped-def]
) -> None:
    """The statements of a reservation and the values they carry (the ring positions read and
    written) do not grow with the limits: only the replaced grant of each ring is read."""
    ledger = SqlLedger(sqlite_engine)
    seen: list[tuple[str, int]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        count = sum(len(p) for p in parameters) if executemany else len(parameters or ())
        seen.append((statement.split()[0], count))

    def cost(per_second: int, per_minute: int, at: float) -> list[tuple[str, int]]:
        batch = [
            [
                WindowLimit(endpoint_bucket("c", "POST /x", per_second, 1.05), per_second, 1.05),
                WindowLimit(client_bucket("c", per_minute, 60.05), per_minute, 60.05),
            ]
        ]
        seen.clear()
        event.listen(sqlite_engine, "before_cursor_execute", record)
        try:
            ledger.reserve_batch(batch, at)
        finally:
            event.remove(sqlite_engine, "before_cursor_execute", record)
        return list(seen)

    cost(10, 600, T0)  # creates the buckets
    cost(1000, 60000, T0)
    small = [cost(10, 600, T0 + 1 + i) for i in range(25)]
    large = [cost(1000, 60000, T0 + 1 + i) for i in range(25)]
    assert all(c == small[0] for c in small + large)


def test_two_ledgers_on_one_database_share_the_limits(sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    # Two processes (two ledgers) on one database: together they still hold the limit.
    first, second = SqlLedger(sqlite_engine), SqlLedger(sqlite_engine)
    limit = [WindowLimit("endpoint:c:GET /a:3/1s", 3, 1.0)]
    grants = [ledger.reserve_batch([limit], T0)[0] for ledger in (first, second) * 3]
    assert grants == [T0] * 3 + [T0 + 1.0] * 3


def test_threads_of_two_processes_never_exceed_the_window_on_sqlite(sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    ledgers = [SqlLedger(sqlite_engine) for _ in range(4)]
    barrier = threading.Barrier(4)
    granted: list[float] = []
    lock = threading.Lock()

    def work(ledger: SqlLedger) -> None:
        barrier.wait()
        for _ in range(15):
            [slot] = ledger.reserve_batch([limits("POST /x")], T0)
            with lock:
                granted.append(slot)

    threads = [threading.Thread(target=work, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 60
    assert max_in_any_window(granted, 1.0 + MARGIN) == 10


# --- the reserver and the limiter -----------------------------------------------------------------


def test_the_reserver_batches_the_threads_waiting_at_once() -> None:
    ledger = MemoryLedger()
    entered, gate = threading.Event(), threading.Event()
    batches: list[int] = []

    class SlowLedger:
        def reserve_batch(self, batch, now, latest=None):  # type: ignore[no-untyped-def]
            entered.set()
            gate.wait(5)
            batches.append(len(batch))
            return ledger.reserve_batch(batch, now, latest)

    reserver = SlotReserver(SlowLedger(), lambda: T0)
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        slot = reserver.reserve("c", limits("POST /x"))
        with lock:
            granted.append(slot)

    first = threading.Thread(target=work)
    first.start()
    assert entered.wait(5)  # the first reservation is being made ...
    rest = [threading.Thread(target=work) for _ in range(11)]
    for thread in rest:
        thread.start()
    time.sleep(0.3)  # ... while eleven more wait
    gate.set()
    for thread in [first, *rest]:
        thread.join()
    reserver.stop()
    assert batches == [1, 11]
    assert max_in_any_window(granted, 1.05) == 10


def test_a_failing_ledger_fails_every_caller_of_its_batch() -> None:
    class BrokenLedger:
        def reserve_batch(self, batch, now, latest=None):  # type: ignore[no-untyped-def]
            raise ConnectionError("database away")

    reserver = SlotReserver(BrokenLedger(), lambda: T0)
    with pytest.raises(ConnectionError):
        reserver.reserve("c", limits("POST /x"))
    reserver.stop()


def test_the_limiter_reserves_and_waits_on_the_shared_clock() -> None:
    clock = AdvancingClock()
    limiter = RateLimiter(MemoryLedger(), PER_SECOND, PER_MINUTE, MARGIN, clock)
    slots = []
    for _ in range(25):
        slot = limiter.reserve("c", "POST /x")
        assert slot.granted
        limiter.wait_until(slot.at)
        assert limiter.late_s(slot.at) == pytest.approx(0.0, abs=1e-9)
        slots.append(slot.at)
    limiter.close()
    assert slots[:10] == [T0] * 10
    assert slots[10:20] == [pytest.approx(T0 + 1.05)] * 10
    assert max_in_any_window(slots, 1.0 + MARGIN) == 10
    assert limiter.tolerance_s == pytest.approx(MARGIN / 2)


def test_zero_limits_grant_now_without_the_ledger() -> None:
    ledger = MemoryLedger()
    limiter = RateLimiter(ledger, 0, 0, MARGIN, StillClock())
    assert not limiter.enabled
    assert [limiter.reserve("c", "GET /a").at for _ in range(50)] == [T0] * 50
    assert ledger.reservations == 0


def test_buckets_name_their_limit_so_differently_configured_processes_never_share_a_ring() -> None:
    ten = RateLimiter(MemoryLedger(), 10, 600, 0.15, StillClock()).limits("c", "POST /x")
    fifty = RateLimiter(MemoryLedger(), 50, 600, 0.15, StillClock()).limits("c", "POST /x")
    assert ten[0].bucket != fifty[0].bucket
    assert ten[1].bucket == fifty[1].bucket


@given(
    schedule=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.5), st.floats(min_value=0, max_value=3.0)),
        min_size=1,
        max_size=80,
    )
)
@settings(max_examples=150, deadline=None)
def test_a_call_refused_for_its_deadline_takes_nothing_from_the_others(
    schedule: list[tuple[float, float]],
) -> None:
    """A slot past a call's deadline is refused and not recorded: the calls that take slots get
    exactly what they would have got had the refused ones never asked. Guard: the refusal in
    `grant_batch` (record refused slots too and later calls come later, past this)."""
    limit = [WindowLimit("e", 2, 1.0)]
    with_refusals, only_granted = MemoryLedger(), MemoryLedger()
    now = T0
    for gap, patience in schedule:
        now += gap
        [grant] = with_refusals.reserve_batch([limit], now, [now + patience])
        if refused(grant):
            assert earliest(grant) > now + patience
            continue
        [alone] = only_granted.reserve_batch([limit], now)
        assert grant == pytest.approx(alone)
        assert grant <= now + patience


def test_a_slot_after_the_deadline_comes_back_with_its_time_and_untaken() -> None:
    clock = StillClock()
    limiter = RateLimiter(MemoryLedger(), 1, 0, 0.0, clock)
    assert limiter.reserve("c", "POST /x", latest=T0 + 0.5).granted
    too_late = limiter.reserve("c", "POST /x", latest=T0 + 0.5)
    assert not too_late.granted and too_late.at == pytest.approx(T0 + 1.0)
    # Nothing was taken: the next call with time to wait gets that very slot.
    assert limiter.reserve("c", "POST /x", latest=T0 + 2).at == pytest.approx(T0 + 1.0)
