"""Two schedulers and two worker processes on one PostgreSQL database: rows are claimed with
leases, so no instruction is looked at twice in the same round and none is left behind."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise

import pytest

from ibkr_sandbox.config import Timings
from ibkr_sandbox.messages import Request, Response
from tests.builders import transfer
from tests.integration.pipeline import WORST_IBKR, Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

COUNT = 150
FIRST_ID = 3_900_000
LIMITS = {
    "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT": "50",
    "IBKR_MAX_REQUESTS_PER_MINUTE": "10000",
}
# The harness polls after 0.5 s, then 1.5 times longer up to 2 s, each delay within ±10 %:
# two looks at one instruction closer than this were two looks in the same round.
MIN_POLL_GAP_S = 0.4
STATUS_GET = re.compile(r"^/gw/api/v1/client-instructions/(\d+)$")


def record_status_reads(pipeline: Pipeline) -> dict[int, list[float]]:
    """Wrap the sandbox so every answered status read by clientInstructionId is noted with
    its (monotonic) time."""
    app = pipeline.sandbox.app
    handle = app.handle
    reads: dict[int, list[float]] = defaultdict(list)
    lock = threading.Lock()

    def noting(request: Request) -> Response:
        response = handle(request)
        match = STATUS_GET.match(request.target.split("?")[0])
        if request.method == "GET" and match and response.status in (200, 208):
            with lock:
                reads[int(match.group(1))].append(time.monotonic())
        return response

    app.handle = noting  # type: ignore[method-assign]
    return reads


def test_two_schedulers_and_two_workers_never_poll_one_instruction_twice_per_round(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Every transfer answers 202 and waits for the sandbox's next batch (3-6 s real), so each
    # is polled several times while both schedulers compete for the due rows.
    pipeline = make_pipeline(
        extra_env=LIMITS,
        speed=10.0,
        **WORST_IBKR,
        internal_cash_always_async=True,
        timings=Timings(internal_cash_batch_s=30.0),
        max_requests_per_second_per_endpoint=50,
        max_requests_per_minute=10000,
    )
    reads = record_status_reads(pipeline)
    for name in ("worker-1", "worker-2"):
        pipeline.start_worker(name, threads=4)
    for name in ("scheduler-1", "scheduler-2"):
        pipeline.start_scheduler(name)
    cids = set(range(FIRST_ID, FIRST_ID + COUNT))
    pipeline.publish([transfer(cid, "7.00") for cid in sorted(cids)])

    statuses = pipeline.wait_final(COUNT, timeout_s=90)

    # None starved: every one final, as IBKR says, applied once.
    assert set(statuses) == cids and set(statuses.values()) == {"PROCESSED"}
    assert all(n == 1 for n in pipeline.sandbox.ledger_counts().values())
    # None polled twice in a round: no two reads of one instruction closer than the shortest
    # poll delay, and every read was recorded as a poll of its row (a read whose result was
    # thrown away, because another process held the row, would be missing from poll_count).
    polls = {
        int(cid): int(count)
        for cid, count in pipeline.query(
            "SELECT client_instruction_id, poll_count FROM client_instructions"
        )
    }
    too_close = {
        cid: [round(b - a, 3) for a, b in pairwise(times) if b - a < MIN_POLL_GAP_S]
        for cid, times in reads.items()
    }
    assert {cid: gaps for cid, gaps in too_close.items() if gaps} == {}
    # A POST held in flight is settled by a read that is no poll (it finds what the lost
    # answer would have said): the audit names those.
    settled = {
        int(cid): int(n)
        for cid, n in pipeline.query(
            "SELECT client_instruction_id, count(*) FROM audit_events "
            "WHERE reason LIKE '%our submit answer was lost%' GROUP BY client_instruction_id"
        )
    }
    looks = {cid: polls.get(cid, 0) + settled.get(cid, 0) for cid in cids}
    assert {cid: len(times) for cid, times in reads.items()} == {
        cid: n for cid, n in looks.items() if n
    }
    # Enough looks to prove something (how many depends on the host's speed).
    assert all(looks[cid] >= 1 for cid in cids)
    assert sum(1 for n in polls.values() if n >= 2) >= COUNT // 4, polls
    # Both schedulers and both workers took part.
    for name in ("scheduler-1", "scheduler-2"):
        log = (pipeline.log_dir / f"{name}.log").read_text(errors="replace")
        assert '"method": "GET"' in log, name
    for name in ("worker-1", "worker-2"):
        log = (pipeline.log_dir / f"{name}.log").read_text(errors="replace")
        assert '"method": "POST"' in log, name
