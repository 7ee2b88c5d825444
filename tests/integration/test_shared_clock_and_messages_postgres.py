"""Between processes on PostgreSQL: one message id is one request even when two processes get it
at once, and leases are judged on the database's clock, whatever a host's own clock says."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import worker.clock
from models import ClientInstruction, InboundMessage, Submission
from tests.unit.tracking_support import ScriptedIbkr, answer, envelope, sessions, transfer
from worker.config import Settings
from worker.runtime import build_runtime
from worker.tracking.intake import Intake, receive
from worker.tracking.poll import claim_due

pytestmark = pytest.mark.postgres


def settings(url: str) -> Settings:
    return Settings(
        database_url=url,
        ibkr_client_id="client",
        ibkr_key_id="kid",
        honor_downtime=False,
        client_instruction_id_start=5000,
    )


def test_one_message_delivered_to_two_processes_at_once_is_one_request(
    pg_url: str, rsa_private_key: Any
) -> None:
    """Guard: the unique message id (`inbound_messages`) and its look-up in
    `intake.receive_all` (without them the two deliveries get two clientInstructionIds and
    both are sent)."""
    runtimes = [
        build_runtime(settings(pg_url), actor=f"worker-{n}", private_key=rsa_private_key)
        for n in range(2)
    ]
    barrier = threading.Barrier(2)
    results: list[Intake] = []
    lock = threading.Lock()

    def deliver(index: int) -> None:
        ctx = runtimes[index].ctx
        barrier.wait()
        intake = receive(ctx, request=transfer(cid=None), correlation_id=None, message_id="m-1")
        with lock:
            results.append(intake)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with sessions(runtimes[0].ctx)() as session:
            submissions = session.execute(select(func.count()).select_from(Submission)).scalar()
            messages = session.execute(select(func.count()).select_from(InboundMessage)).scalar()
            cids = session.execute(select(ClientInstruction.client_instruction_id)).scalars().all()
    finally:
        for runtime in runtimes:
            runtime.close()
    assert sorted(r.disposition for r in results) == ["new", "same_intent"]
    assert submissions == 1 and messages == 1 and len(cids) == 1
    assert {r.client_instruction_ids for r in results} == {(cids[0],)}


class HostTenMinutesAhead(datetime):
    """This host's wall clock, ten minutes ahead of everybody else's."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
        return datetime.now(tz) + timedelta(minutes=10)


def test_a_host_whose_clock_runs_ahead_does_not_take_over_leases_early(
    pg_url: str, rsa_private_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guard: `runtime.build_runtime` running a PostgreSQL process on the database's clock
    (`DatabaseClock`; give it `SystemClock()` and the host ten minutes ahead claims a row
    whose lease has 90 s to run)."""
    holder = build_runtime(settings(pg_url), actor="worker", private_key=rsa_private_key)
    holder.ctx.ibkr = ScriptedIbkr(posts=[answer(202, envelope(202, 5, 1012983, "PENDING"))])
    try:
        intake = receive(
            holder.ctx,
            request=transfer(),
            correlation_id=None,
            message_id="m-1",
            begin_submission=True,
        )
        assert intake.attempt is not None
    finally:
        holder.close()
    monkeypatch.setattr(worker.clock, "datetime", HostTenMinutesAhead)
    scheduler = build_runtime(settings(pg_url), actor="scheduler", private_key=rsa_private_key)
    try:
        # The host's wall clock (what IBKR would judge iat/exp by) is ahead ...
        wall = scheduler.ctx.clock.wall_now()
        assert wall - datetime.now(wall.tzinfo) > timedelta(minutes=9)
        # ... but the row is the worker's for its whole lease on the shared clock.
        assert claim_due(scheduler.ctx, limit=10) == []
    finally:
        scheduler.close()
