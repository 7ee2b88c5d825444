"""Worker-assigned clientInstructionIds are sequential from the configured start, never reused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_session_factory, next_client_instruction_id

START = 1_000_000_000


@pytest.fixture(params=["pg_url", "sqlite_url"])
def sessions(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """A session factory on a migrated database of each kind."""
    engine = make_engine(request.getfixturevalue(request.param), pool_size=8)
    yield make_session_factory(engine)
    engine.dispose()


def _take(sessions: sessionmaker[Session], start: int = START) -> int:
    with sessions.begin() as session:
        return next_client_instruction_id(session, start)


def test_ids_start_at_the_configured_start_and_are_sequential(
    sessions: sessionmaker[Session],
) -> None:
    ids = [_take(sessions) for _ in range(5)]

    assert ids == [START, START + 1, START + 2, START + 3, START + 4]


def test_a_different_start_shifts_the_same_sequence(sessions: sessionmaker[Session]) -> None:
    assert _take(sessions, start=500) == 500
    assert _take(sessions, start=500) == 501


def test_an_id_taken_in_a_rolled_back_transaction_is_not_handed_out_twice_on_postgresql(
    pg_url: str,
) -> None:
    engine = make_engine(pg_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        session.begin()
        first = next_client_instruction_id(session, START)
        session.rollback()

    second = _take(sessions)
    engine.dispose()

    # A sequence never goes back: a gap, never a duplicate.
    assert second > first


def test_concurrent_callers_never_get_the_same_id(sessions: sessionmaker[Session]) -> None:
    per_thread = 50
    results: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def take_many(slot: int) -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                results[slot].append(_take(sessions))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=take_many, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    taken = sorted(value for values in results for value in values)
    assert taken == list(range(START, START + 4 * per_thread))
    for values in results:
        assert values == sorted(values)
