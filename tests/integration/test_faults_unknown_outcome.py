"""Unknown outcomes against the worst IBKR: the sandbox registers a re-POST as a second
transaction, applies some POSTs whose answer is then lost, holds others in flight past the
worker's HTTP timeout (status GETs answer 404 meanwhile) before they register, and answers
others late. The worker must find out what happened instead of guessing: every instruction ends
in IBKR's status and moves exactly once.

The last test shows the check bites: with the in-flight wait taken out, a held POST is sent
again and the money moves twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ibkr_sandbox import Sandbox, SandboxConfig
from tests.builders import transfer, transfer_bulk
from tests.integration.pipeline import WORST_IBKR, Pipeline
from worker.clock import SystemClock
from worker.config import Settings
from worker.ibkr.client import IbkrClient
from worker.ibkr.ratelimit import MemoryLedger, RateLimiter
from worker.store.migrate import upgrade_to_head
from worker.tracking.decisions import Action, AttemptFate, Decision, lookup

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

FAST_LIMITS = {
    "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT": "40",
    "IBKR_MAX_REQUESTS_PER_MINUTE": "5000",
}
SINGLES, BULKS, BULK_SIZE = 180, 10, 3


def requests() -> tuple[list[dict[str, Any]], set[int]]:
    bodies: list[dict[str, Any]] = []
    cids: set[int] = set()
    for i in range(SINGLES):
        cid = 7_300_000 + i
        # Half answer 201 at once, half 202 and are polled to the end.
        amount = "10.00" if i % 2 else "500.00"
        bodies.append(transfer(cid, amount))
        cids.add(cid)
    for b in range(BULKS):
        ids = [7_310_000 + b * BULK_SIZE + k for k in range(BULK_SIZE)]
        bodies.append(transfer_bulk(ids, "20.00"))
        cids.update(ids)
    return bodies, cids


def test_lost_held_and_late_answers_end_in_ibkr_status_and_move_money_exactly_once(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(
        extra_env=FAST_LIMITS,
        speed=120.0,
        **WORST_IBKR,
        drop_response_rate=0.08,
        answer_delay_rate=0.04,
        answer_delay_s=8.0,
        internal_cash_async_above=Decimal(100),
        max_requests_per_second_per_endpoint=40,
        max_requests_per_minute=5000,
    )
    bodies, cids = requests()
    assert len(cids) >= 200
    pipeline.start_worker()
    pipeline.start_scheduler()
    pipeline.publish(bodies)

    statuses = pipeline.wait_final(len(cids), timeout_s=240)

    assert set(statuses) == cids
    assert pipeline.applied_twice_or_lost(cids) == {"applied_twice": {}, "lost": []}
    truth = pipeline.sandbox.final_transitions()
    assert {cid: truth[cid]["status"] for cid in cids} == statuses
    assert set(statuses.values()) == {"PROCESSED"}
    # The faults really happened: answers were lost (status 0), POSTs held in flight, answers
    # delayed, and the worker resolved them by asking.
    stats = pipeline.sandbox.stats()
    lost = sum(e["statuses"].get("0", 0) for e in stats["endpoints"].values())
    assert lost >= 5, stats["statuses"]
    assert stats["inflightHeld"] >= 5 and stats["answersDelayed"] >= 3, stats
    [[resolved]] = pipeline.query(
        "SELECT count(DISTINCT client_instruction_pk) FROM audit_events WHERE reason LIKE :lost",
        lost="%answer to our POST was lost%",
    )
    assert resolved >= 10
    [[waited]] = pipeline.query(
        "SELECT count(*) FROM audit_events WHERE reason LIKE :wait",
        wait="%may still register until%",
    )
    assert waited >= 1  # a 404 during a hold was not taken for "never got it"


# --- the check bites ----------------------------------------------------------------------------


def _final(ctx: Any) -> bool:
    from sqlalchemy import select

    from models import ClientInstruction, make_session_factory

    with make_session_factory(ctx.store.engine)() as session:
        return session.execute(select(ClientInstruction.final_at)).scalar() is not None


def in_process_run(tmp_path: Path, key: Any, public_pem: bytes) -> int:
    """One transfer against an in-process sandbox that holds every POST 3 s in flight (the
    caller times out at once) and accepts re-POSTs as new transactions; the worker's horizon is
    5.2 s. Returns how many times the sandbox applied it."""
    from worker.tracking.context import TrackingContext
    from worker.tracking.intake import receive
    from worker.tracking.poll import run_round
    from worker.tracking.submit import send

    sandbox = Sandbox(
        SandboxConfig(
            rate_limits=False,
            duplicate_post="accept",
            inflight_rate=1.0,
            inflight_hold_s=3.0,
            transport_read_timeout_s=0.0,
        )
    )
    sandbox.register_client(client_id="acme", key_id="main", public_key_pem=public_pem)
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'ibkr.db'}"
    upgrade_to_head(url)
    settings = Settings(
        database_url=url,
        ibkr_base_url="http://sandbox.test",
        ibkr_client_id="acme",
        ibkr_key_id="main",
        honor_downtime=False,
        http_timeout_s=1.0,
        lease_s=3.0,
        inflight_horizon_s=4.0,
        max_clock_skew_s=0.2,
    )
    clock = SystemClock()
    client = IbkrClient(
        settings,
        private_key=key,
        transport=sandbox.transport(read_timeout_s=0.0),
        clock=clock,
        rate_limiter=RateLimiter(MemoryLedger(), 0, 0, 0.0, clock),
    )
    from worker.store import Store

    ctx = TrackingContext(
        settings=settings,
        store=Store.connect(url),
        ibkr=client,
        clock=clock,
        actor="worker",
        owner="in-process",
        lease_s=3.0,
    )
    request = transfer(9_100_001, "10.00")
    try:
        received = receive(ctx, request=request, correlation_id=None, message_id="m-1")
        assert received.submission_id is not None
        started = time.monotonic()
        send(ctx, received.submission_id)
        # Until the transfer is final and every hold has run out (each POST registers 3 s
        # after it left; a resend leaves 2 s after the first at the earliest).
        while time.monotonic() - started < 20:
            run_round(ctx)
            if time.monotonic() - started > 7 and _final(ctx):
                break
            time.sleep(0.2)
        return sandbox.ledger_counts().get(9_100_001, 0)
    finally:
        client.close()
        sandbox.stop()


def test_the_check_bites_without_the_in_flight_wait_the_money_moves_twice(
    tmp_path: Path,
    rsa_private_key: Any,
    rsa_key_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the guard, a 404 during the hold waits for the horizon, finds the transfer
    registered, and it moved once. With the guard taken out (a 404 answered by a resend, as
    before this was fixed), the held POST and the resend both register: 2."""
    public_pem = rsa_key_files[1].read_bytes()
    assert in_process_run(tmp_path / "guarded", rsa_private_key, public_pem) == 1

    def resend_at_once(tracked: Any, looked_at: Any, now: Any) -> Decision:
        return Decision(Action.RESEND, "404: sending again", fate=AttemptFate.NOT_REGISTERED)

    monkeypatch.setattr(lookup, "_absent", resend_at_once)
    assert in_process_run(tmp_path / "unguarded", rsa_private_key, public_pem) == 2
