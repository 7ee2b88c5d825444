"""Worker-assigned clientInstructionIds are sequential from the configured start, never reused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from worker.store import Store
from worker.store.ids import next_client_instruction_id

START = 1_000_000_000


class RolledBack(Exception):
    pass


@pytest.fixture(params=["pg_url", "sqlite_url"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A store on a migrated database of each kind."""
    store = Store.connect(request.getfixturevalue(request.param), pool_size=8)
    yield store
    store.close()


def _take(store: Store, start: int = START) -> int:
    with store.transaction() as tx:
        return next_client_instruction_id(tx, start)


def test_ids_start_at_the_configured_start_and_are_sequential(store: Store) -> None:
    ids = [_take(store) for _ in range(5)]

    assert ids == [START, START + 1, START + 2, START + 3, START + 4]


def test_a_different_start_shifts_the_same_sequence(store: Store) -> None:
    assert _take(store, start=500) == 500
    assert _take(store, start=500) == 501


def test_an_id_taken_in_a_rolled_back_transaction_is_not_handed_out_twice_on_postgresql(
    pg_url: str,
) -> None:
    store = Store.connect(pg_url)
    first = None
    with pytest.raises(RolledBack), store.transaction() as tx:
        first = next_client_instruction_id(tx, START)
        raise RolledBack

    second = _take(store)
    store.close()

    # A sequence never goes back: a gap, never a duplicate.
    assert first is not None and second > first


def test_concurrent_callers_never_get_the_same_id(store: Store) -> None:
    per_thread = 50
    results: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def take_many(slot: int) -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                results[slot].append(_take(store))
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
