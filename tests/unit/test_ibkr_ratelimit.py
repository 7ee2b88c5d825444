"""Client-side limits hold in every sliding window, in memory and on the shared SQL ledger."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import Base
from models.db import make_engine
from worker.ibkr.ratelimit import (
    MemoryLedger,
    RateLimiter,
    SlotLedger,
    SqlLedger,
    WindowLimit,
    client_bucket,
    earliest_slot,
    endpoint_bucket,
)

T0 = 1_800_000_000.0
PER_SECOND, PER_MINUTE, MARGIN = 10, 600, 0.05


class StillClock:
    """A manual clock whose sleep only records (many threads 'waiting' at the same instant)."""

    def __init__(self, start: float = T0) -> None:
        self.t = start
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)

    def advance(self, seconds: float) -> None:
        self.t += seconds


class AdvancingClock(StillClock):
    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.t += max(seconds, 0.0)


def max_in_any_window(times: list[float], window_s: float) -> int:
    """The most slots any half-open window (t - window_s, t] holds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_s + 1e-6:  # same float slack as the ledger
            start += 1
        best = max(best, end - start + 1)
    return best


def limits(
    endpoint: str, per_second: int = PER_SECOND, per_minute: int = PER_MINUTE
) -> list[WindowLimit]:
    return [
        WindowLimit(endpoint_bucket("c", endpoint), per_second, 1.0 + MARGIN),
        WindowLimit(client_bucket("c"), per_minute, 60.0 + MARGIN),
    ]


# --- the pure search ----------------------------------------------------------------------------


def test_empty_ledger_grants_now() -> None:
    assert earliest_slot(T0, [([], WindowLimit("b", 10, 1.05))]) == T0


def test_full_second_pushes_the_slot_past_the_window() -> None:
    times = [T0 + i * 0.01 for i in range(10)]
    assert earliest_slot(T0 + 0.5, [(times, WindowLimit("b", 10, 1.05))]) == pytest.approx(
        T0 + 1.05
    )


def test_a_slot_may_go_before_future_slots_when_room_remains() -> None:
    future = [T0 + 5.0]
    assert earliest_slot(T0, [(future, WindowLimit("b", 1, 1.0))]) == T0


def test_a_slot_never_squeezes_between_future_slots_too_close() -> None:
    window = WindowLimit("b", 1, 1.0)
    granted = earliest_slot(T0, [([T0 + 0.5, T0 + 1.2], window)])
    assert granted == pytest.approx(T0 + 2.2)


def test_zero_limit_means_unlimited() -> None:
    assert earliest_slot(T0, [([T0] * 50, WindowLimit("b", 0, 1.0))]) == T0


# --- property: no sliding window ever holds more than allowed -------------------------------


calls = st.lists(
    st.tuples(st.floats(min_value=0, max_value=3.0), st.sampled_from(["GET /a", "POST /b"])),
    min_size=1,
    max_size=120,
)


def check_ledger(ledger: SlotLedger, schedule: list[tuple[float, str]], per_minute: int) -> None:
    now = T0
    granted: dict[str, list[float]] = {"GET /a": [], "POST /b": []}
    for gap, endpoint in schedule:
        now += gap
        t = ledger.reserve("c", limits(endpoint, per_minute=per_minute), now)
        assert t >= now
        granted[endpoint].append(t)
    for times in granted.values():
        assert max_in_any_window(times, 1.0 + MARGIN) <= PER_SECOND
    everything = granted["GET /a"] + granted["POST /b"]
    assert max_in_any_window(everything, 60.0 + MARGIN) <= per_minute


@given(schedule=calls, per_minute=st.sampled_from([15, 25, 600]))
@settings(max_examples=150, deadline=None)
def test_memory_ledger_never_exceeds_either_window(
    schedule: list[tuple[float, str]], per_minute: int
) -> None:
    check_ledger(MemoryLedger(), schedule, per_minute)


@given(
    arrivals=st.lists(st.floats(min_value=0, max_value=0.3), min_size=1, max_size=60),
)
@settings(max_examples=100, deadline=None)
def test_slots_are_as_early_as_the_limit_allows(arrivals: list[float]) -> None:
    # With one endpoint and a single limit, slot k lands exactly when slot k-N leaves its window.
    ledger = MemoryLedger()
    window = [WindowLimit("e", 3, 1.0)]
    now, granted = T0, []
    for gap in arrivals:
        now += gap
        granted.append(ledger.reserve("c", window, now))
    for index, t in enumerate(granted):
        if index >= 3 and t > T0 + sum(arrivals[: index + 1]) + 1e-9:
            assert t == pytest.approx(granted[index - 3] + 1.0)


# --- the limiter --------------------------------------------------------------------------------


def test_limiter_waits_with_the_injected_clock() -> None:
    clock = AdvancingClock()
    limiter = RateLimiter(MemoryLedger(), PER_SECOND, PER_MINUTE, MARGIN, clock)
    slots = [limiter.acquire("c", "POST /x") for _ in range(25)]
    assert slots[:10] == [T0] * 10
    assert slots[10:20] == [pytest.approx(T0 + 1.05)] * 10
    assert slots[20] == pytest.approx(T0 + 2.10)
    assert clock.t == pytest.approx(T0 + 2.10)
    assert max_in_any_window(slots, 1.0 + MARGIN) == 10


class OversleepingClock(StillClock):
    """A busy host: every sleep ends `late_s` after it should."""

    def __init__(self, late_s: float) -> None:
        super().__init__()
        self.late_s = late_s

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.t += max(seconds, 0.0) + self.late_s


def test_a_call_that_wakes_late_takes_a_fresh_slot_instead_of_bunching() -> None:
    clock = OversleepingClock(late_s=0.6)
    ledger = MemoryLedger()
    limiter = RateLimiter(ledger, PER_SECOND, PER_MINUTE, MARGIN, clock)
    for _ in range(40):
        slot = limiter.acquire("c", "POST /x")
        # The call goes out now; it must go out at (or just after) a slot the ledger holds,
        # never 0.6 s late into a window whose slots were given to other calls.
        assert -1e-6 <= clock.t - slot <= limiter.late_tolerance_s
    slots = ledger.slots(endpoint_bucket("c", "POST /x"))
    assert max_in_any_window(slots, 1.0 + MARGIN) <= PER_SECOND
    # The late slots stay recorded (over-counting only), so the ledger holds more than 40.
    assert len(slots) > 40


def test_limiter_holds_the_minute_limit() -> None:
    clock = AdvancingClock()
    limiter = RateLimiter(MemoryLedger(), 0, 20, MARGIN, clock)
    slots = [limiter.acquire("c", f"GET /{i % 7}") for i in range(45)]
    assert max_in_any_window(slots, 60.0 + MARGIN) == 20
    assert slots[20] == pytest.approx(T0 + 60.05)


def test_endpoints_are_limited_separately() -> None:
    clock = StillClock()
    limiter = RateLimiter(MemoryLedger(), 2, 0, 0.0, clock)
    assert [limiter.acquire("c", "GET /a") for _ in range(2)] == [T0, T0]
    assert limiter.acquire("c", "GET /b") == T0
    assert limiter.acquire("c", "GET /a") == T0 + 1.0
    assert clock.slept == [1.0]


def test_clients_are_limited_separately() -> None:
    clock = StillClock()
    limiter = RateLimiter(MemoryLedger(), 1, 0, 0.0, clock)
    assert limiter.acquire("one", "GET /a") == T0
    assert limiter.acquire("two", "GET /a") == T0


def test_zero_limits_skip_the_ledger() -> None:
    ledger = MemoryLedger()
    limiter = RateLimiter(ledger, 0, 0, MARGIN, StillClock())
    for _ in range(100):
        limiter.acquire("c", "GET /a")
    assert ledger.slots(endpoint_bucket("c", "GET /a")) == []


def test_concurrent_threads_never_exceed_the_window() -> None:
    clock = StillClock()
    ledger = MemoryLedger()
    limiter = RateLimiter(ledger, PER_SECOND, PER_MINUTE, MARGIN, clock)
    barrier = threading.Barrier(8)
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait()
        for _ in range(25):
            slot = limiter.acquire("c", "POST /x")
            with lock:
                granted.append(slot)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 200
    assert max_in_any_window(granted, 1.0 + MARGIN) == 10


# --- the shared SQL ledger on SQLite -------------------------------------------------------------


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> SqlLedger:
    engine = make_engine(f"sqlite:///{tmp_path / 'slots.db'}")
    Base.metadata.create_all(engine)
    return SqlLedger(engine, prune_every=7)


@given(schedule=calls)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_sql_ledger_on_sqlite_never_exceeds_either_window(
    tmp_path_factory: pytest.TempPathFactory, schedule: list[tuple[float, str]]
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'slots.db'}")
    Base.metadata.create_all(engine)
    check_ledger(SqlLedger(engine), schedule, per_minute=25)
    engine.dispose()


def test_sql_ledger_serialises_threads_on_sqlite(sqlite_ledger: SqlLedger) -> None:
    barrier = threading.Barrier(8)
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait()
        for _ in range(15):
            slot = sqlite_ledger.reserve("c", limits("POST /x"), T0)
            with lock:
                granted.append(slot)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 120
    assert max_in_any_window(granted, 1.0 + MARGIN) == 10


def test_sql_ledger_prunes_old_rows(sqlite_ledger: SqlLedger) -> None:
    from sqlalchemy import func, select

    from models.tables import RateLimitSlot

    for step in range(30):
        sqlite_ledger.reserve("c", limits("GET /a"), T0 + step * 100.0)
    with sqlite_ledger._engine.connect() as connection:
        oldest = connection.execute(select(func.min(RateLimitSlot.granted_at))).scalar_one()
    assert oldest > T0 + 29 * 100.0 - 1000


def test_sql_ledger_is_shared_between_limiters(sqlite_ledger: SqlLedger) -> None:
    # Two processes (two limiters) on one database: together they still hold the limit.
    clock = StillClock()
    first = RateLimiter(sqlite_ledger, 3, 0, 0.0, clock)
    second = RateLimiter(sqlite_ledger, 3, 0, 0.0, clock)
    slots = [limiter.acquire("c", "GET /a") for limiter in (first, second) * 3]
    assert sorted(slots) == [T0] * 3 + [T0 + 1.0] * 3
