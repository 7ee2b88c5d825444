"""Group commit: the database steps of several worker threads in one transaction.

A worker thread that has received a message (or an answer to its POST) hands the step to the
process's `GroupCommit` and waits. One writer thread takes every step waiting at that moment,
runs them in one store transaction with the batch functions of `tracking.intake` and
`tracking.submit` (a few statements for the whole batch), commits, and wakes the threads.
Nothing waits for a batch to fill: a lone step is a batch of one, and under load the batch is
whatever arrived while the previous one was being committed.

The order that keeps money from moving twice holds: a thread POSTs only after the
transaction holding its SUBMITTING rows has committed, and acknowledges its message only after
the answer is committed. When a batch fails as a whole (a database error, a request the
database refuses), nothing of it is committed and every step runs again on its own, in its
own thread and transaction, exactly as without grouping; so one bad request never harms the
others beyond that retry.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from worker.logging import get_logger
from worker.store.database import Store, Tx

log = get_logger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Runs several steps of one kind in the caller's transaction; for each step, a call that
#: gives its result once the transaction has committed, or None to run it alone afterwards.
BatchStep = Callable[[Tx, Sequence[Any]], Sequence[Callable[[], Any] | None]]
#: Runs one step in a transaction of its own (with its own retries), in the calling thread.
AloneStep = Callable[[Any], Any]


@dataclass(frozen=True)
class StepKind(Generic[Item, Result]):
    """One kind of step: how to run many together, and how to run one alone."""

    name: str
    batch: BatchStep
    alone: AloneStep


class _Waiting:
    """A step handed to the writer. The thread that handed it blocks in `wait` until the
    writer calls `done` (once), which releases the lock held from the start."""

    __slots__ = ("_latch", "finish", "item", "kind")

    def __init__(self, kind: StepKind[Any, Any], item: Any) -> None:
        self.kind = kind
        self.item = item
        #: Set by the writer: the step's result once committed; None means "run it alone".
        self.finish: Callable[[], Any] | None = None
        self._latch = threading.Lock()
        self._latch.acquire()

    def wait(self) -> None:
        self._latch.acquire()

    def done(self) -> None:
        self._latch.release()


class GroupCommit:
    """Runs steps of worker threads in shared transactions (see the module docstring).

    `max_batch` bounds one transaction; `stats` counts batches and steps, and the writer's
    time in batches: `busy_s` by the clock, `cpu_s` its own CPU time (for the benchmark and
    the tests; the gap between the two is time spent waiting for the database or the GIL).
    """

    def __init__(self, store: Store, *, max_batch: int = 64) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.stats: dict[str, float] = {
            "batches": 0,
            "steps": 0,
            "failed_batches": 0,
            "alone": 0,
            "busy_s": 0.0,
            "cpu_s": 0.0,
        }

    def run(self, kind: StepKind[Item, Result], item: Item) -> Result:
        """Run `item` in the next shared transaction and return its result after the commit
        (exceptions of the step are raised here, in the caller's thread)."""
        if not self._ensure_started():
            return self._alone(kind, item)
        waiting = _Waiting(kind, item)
        self._queue.put(waiting)
        waiting.wait()
        if waiting.finish is None:
            return self._alone(kind, item)
        result: Result = waiting.finish()
        return result

    def stop(self) -> None:
        """Stop the writer thread once the steps handed to it are done (new steps then run
        alone)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)
        log.info(
            "group commit stopped",
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in self.stats.items()},
        )

    def _alone(self, kind: StepKind[Item, Result], item: Item) -> Result:
        self.stats["alone"] += 1
        result: Result = kind.alone(item)
        return result

    def _ensure_started(self) -> bool:
        with self._lock:
            if self._stopped:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
                self._thread.start()
            return True

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            stop = self._take_waiting(batch)
            self._run_batch(batch)
            if stop:
                break
        # Anything handed over after the stop runs alone in its own thread.
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                return
            if late is not None:
                late.done()

    def _take_waiting(self, batch: list[_Waiting]) -> bool:
        """Add the steps waiting now to `batch`; True when the stop sign was among them."""
        while len(batch) < self._max_batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return False
            if more is None:
                return True
            batch.append(more)
        return False

    def _run_batch(self, batch: list[_Waiting]) -> None:
        started, started_cpu = time.perf_counter(), time.thread_time()
        try:
            kinds: dict[str, list[_Waiting]] = {}
            for waiting in batch:
                kinds.setdefault(waiting.kind.name, []).append(waiting)
            with self._store.transaction() as tx:
                for same in kinds.values():
                    finishes = same[0].kind.batch(tx, [w.item for w in same])
                    for waiting, finish in zip(same, finishes, strict=True):
                        waiting.finish = finish
            self.stats["batches"] += 1
            self.stats["steps"] += len(batch)
        except Exception:
            # Nothing of the batch is committed: every step runs again on its own, where its
            # own error handling (and retries) apply.
            self.stats["failed_batches"] += 1
            log.warning("a grouped transaction failed; its steps run alone", exc_info=True)
            for waiting in batch:
                waiting.finish = None
        finally:
            self.stats["busy_s"] += time.perf_counter() - started
            self.stats["cpu_s"] += time.thread_time() - started_cpu
            for waiting in batch:
                waiting.done()
