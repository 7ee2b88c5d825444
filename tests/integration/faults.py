"""What the fault tests check after a run: every instruction final, each moved exactly once at
the sandbox, each announced, and the processes still up and healthy."""

from __future__ import annotations

from collections.abc import Iterable

from tests.integration.pipeline import FINAL, EventCollector, Pipeline


def wait_all_final(
    pipeline: Pipeline, cids: Iterable[int], timeout_s: float, what: str | None = None
) -> None:
    """Wait until every instruction of `cids` is tracked and every tracked one is final."""
    wanted = set(cids)

    def done() -> bool:
        statuses = pipeline.statuses()
        return set(statuses) >= wanted and all(s in FINAL for s in statuses.values())

    pipeline.wait_for(done, timeout_s, what or f"{len(wanted)} final instructions")


def assert_exactly_once(pipeline: Pipeline, cids: set[int], events: EventCollector) -> None:
    """Every one of `cids` PROCESSED, applied once at the sandbox and announced; the worker and
    the scheduler alive and `health` content."""
    statuses = pipeline.statuses()
    assert set(statuses) == cids
    assert set(statuses.values()) == {"PROCESSED"}
    counts = pipeline.sandbox.ledger_counts()
    assert {cid: n for cid, n in counts.items() if n != 1} == {}, "applied twice"
    assert set(counts) == cids, "lost"
    pipeline.wait_for(
        lambda: {e["clientInstructionId"] for e in events.drain()} >= cids,
        60,
        "a PROCESSED event for every instruction",
    )
    assert pipeline.alive("worker") and pipeline.alive("scheduler")
    health = pipeline.cli("health")
    assert health.returncode == 0, health.stdout + health.stderr
