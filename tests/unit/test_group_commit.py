"""The group-commit engine: steps waiting together share a transaction, a failed batch runs
every step alone, and a step's own exception reaches its own thread only."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import text

from worker.store import Store, Tx
from worker.store.group import GroupCommit, StepKind


class Recorder:
    """A step kind that inserts its items into a table and can hold its first batch."""

    def __init__(self, hold_first: threading.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.alone: list[Any] = []
        self.hold_first = hold_first
        self.entered = threading.Event()

    def batch(self, tx: Tx, items: Sequence[Any]) -> list[Callable[[], Any] | None]:
        self.batches.append(list(items))
        self.entered.set()
        if self.hold_first is not None and len(self.batches) == 1:
            self.hold_first.wait(10)
        finishes: list[Callable[[], Any] | None] = []
        for item in items:
            if item == "explode":
                raise RuntimeError("the database refused this batch")
            if item == "later":
                finishes.append(None)
                continue
            if item == "mine-fails":
                finishes.append(_raiser(ValueError("only this step failed")))
                continue
            tx.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": str(item)})
            finishes.append(lambda item=item: f"done {item}")
        return finishes

    def run_alone(self, item: Any) -> Any:
        self.alone.append(item)
        return f"alone {item}"


def _raiser(error: Exception) -> Callable[[], Any]:
    def finish() -> Any:
        raise error

    return finish


@pytest.fixture
def factory(tmp_path: Any) -> Any:
    store = Store.connect(f"sqlite:///{tmp_path / 'g.db'}")
    with store.engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v TEXT)"))
    yield store
    store.close()


def stored(store: Store) -> list[str]:
    with store.engine.connect() as connection:
        return sorted(v for (v,) in connection.execute(text("SELECT v FROM t")))


def run_in_threads(group: GroupCommit, kind: StepKind[Any, Any], items: list[Any]) -> dict:
    results: dict[Any, Any] = {}

    def one(item: Any) -> None:
        try:
            results[item] = group.run(kind, item)
        except Exception as error:  # the test looks at what each thread got
            results[item] = error

    threads = [threading.Thread(target=one, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def queued_behind_a_held_batch(factory: Any, first: Any, rest: list[Any]) -> tuple:
    """Run `first` alone in a batch the recorder holds, queue `rest` behind it, then release:
    (recorder, group, what each of `rest` got)."""
    release = threading.Event()
    recorder = Recorder(hold_first=release)
    kind = StepKind("insert", recorder.batch, recorder.run_alone)
    group = GroupCommit(factory)
    held = threading.Thread(target=group.run, args=(kind, first))
    held.start()
    assert recorder.entered.wait(5)
    results: dict[Any, Any] = {}
    waiting = threading.Thread(target=lambda: results.update(run_in_threads(group, kind, rest)))
    waiting.start()
    while group._queue.qsize() < len(rest):  # all of them wait behind the held batch
        threading.Event().wait(0.01)
    release.set()
    held.join(10)
    waiting.join(10)
    group.stop()
    return recorder, group, results


def test_steps_that_wait_together_share_one_transaction(factory: Any) -> None:
    recorder, group, _ = queued_behind_a_held_batch(factory, "a", ["b", "c", "d"])
    assert recorder.batches == [["a"], ["b", "c", "d"]]
    assert stored(factory) == ["a", "b", "c", "d"]
    assert group.stats["batches"] == 2 and group.stats["steps"] == 4
    # The writer's time in transactions: the held one waited, so the clock ran ahead of its CPU.
    assert group.stats["busy_s"] > 0
    assert 0 <= group.stats["cpu_s"] <= group.stats["busy_s"] + 0.01


def test_a_failed_batch_commits_nothing_and_every_step_runs_alone(factory: Any) -> None:
    recorder = Recorder()
    kind = StepKind("insert", recorder.batch, recorder.run_alone)
    group = GroupCommit(factory)
    results = run_in_threads(group, kind, ["explode"])
    group.stop()
    assert results == {"explode": "alone explode"}
    assert stored(factory) == []
    assert group.stats["failed_batches"] == 1


def test_a_step_the_batch_defers_runs_alone_after_the_commit(factory: Any) -> None:
    recorder = Recorder()
    kind = StepKind("insert", recorder.batch, recorder.run_alone)
    group = GroupCommit(factory)
    assert group.run(kind, "later") == "alone later"
    assert group.run(kind, "x") == "done x"
    group.stop()
    assert recorder.alone == ["later"]


def test_a_step_s_own_error_reaches_its_thread_and_the_others_commit(factory: Any) -> None:
    _, _, box = queued_behind_a_held_batch(factory, "first", ["ok", "mine-fails"])
    assert box["ok"] == "done ok"
    assert isinstance(box["mine-fails"], ValueError)
    assert stored(factory) == ["first", "ok"]


def test_after_stop_steps_run_alone_in_their_own_thread(factory: Any) -> None:
    recorder = Recorder()
    kind = StepKind("insert", recorder.batch, recorder.run_alone)
    group = GroupCommit(factory)
    assert group.run(kind, "x") == "done x"
    group.stop()
    assert group.run(kind, "y") == "alone y"
