"""A message handled again after this process failed half-way (the database went away after
the POST): its SUBMITTING rows are handed to the scheduler at once, which asks IBKR before
sending anything again, instead of waiting for the lease to run out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from models import ClientInstruction
from tests.unit.tracking_support import (
    ScriptedIbkr,
    answer,
    envelope,
    make_context,
    sessions,
    transfer,
)
from worker.actors import handle_message
from worker.clock import ManualClock
from worker.tracking import submit
from worker.tracking.intake import receive
from worker.tracking.poll import run_round
from worker.tracking.submit import release_unfinished


class Message:
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id


def row(ctx: Any) -> ClientInstruction:
    with sessions(ctx)() as session:
        [found] = session.query(ClientInstruction).all()
        return found


def test_rows_this_process_left_submitting_are_resolved_by_the_scheduler_at_once(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    ibkr = ScriptedIbkr(lookups=[answer(200, envelope(200, 45, 1012983, "PROCESSED"), "GET")])
    worker = make_context(sqlite_url, ibkr, clock)
    scheduler = replace(worker, owner="scheduler-1", actor="scheduler")
    receive(
        worker, request=transfer(), correlation_id=None, message_id="m-1", begin_submission=True
    )
    assert row(worker).status == "SUBMITTING"  # the POST went out; recording its answer failed

    assert release_unfinished(scheduler, "m-1") == 0  # not the scheduler's to release
    assert release_unfinished(worker, "m-1") == 1
    run_round(scheduler)  # no clock advance: due now, not after the lease

    assert row(worker).status == "PROCESSED"
    assert ibkr.count("POST") == 0 and ibkr.count("GET") == 1


def test_a_retried_message_releases_what_its_failed_attempt_left(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    ibkr = ScriptedIbkr(posts=[answer(202, envelope(202, 46, 1012983, "PENDING"))])
    worker = make_context(sqlite_url, ibkr, clock)

    def database_gone(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("the database went away after the POST")

    monkeypatch.setattr("worker.actors.record", database_gone)
    with pytest.raises(ConnectionError):
        handle_message(worker, (), {"request": transfer()}, Message("m-1"))
    leased = row(worker)
    assert leased.status == "SUBMITTING" and leased.lease_owner == worker.owner

    handle_message(worker, (), {"request": transfer()}, Message("m-1"))  # dramatiq's retry
    assert ibkr.count("POST") == 1  # the retry sends nothing: the scheduler asks IBKR first

    released = row(worker)
    assert released.lease_owner is None and released.next_poll_at <= clock.now()
    assert submit.release_unfinished(worker, "m-1") == 0


class FailingOnce(ScriptedIbkr):
    """The first status read fails as a cut database connection would (an exception)."""

    failed = False

    def get_client_instruction(self, client_instruction_id: int) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("server closed the connection unexpectedly")
        return super().get_client_instruction(client_instruction_id)


def test_a_failed_scheduler_step_is_looked_at_again_after_the_error_delay_not_the_lease(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    ibkr = FailingOnce(
        posts=[answer(202, envelope(202, 46, 1012983, "PENDING"))],
        lookups=[answer(200, envelope(200, 46, 1012983, "PROCESSED"), "GET")],
    )
    worker = make_context(sqlite_url, ibkr, clock)
    scheduler = replace(worker, owner="scheduler-1", actor="scheduler")
    handle_message(worker, (), {"request": transfer()}, Message("m-1"))
    assert row(worker).status == "PENDING"

    clock.advance(120)
    run_round(scheduler)  # the step fails
    failed = row(worker)
    assert failed.lease_owner is None
    assert (failed.next_poll_at - clock.now()).total_seconds() <= 5

    clock.advance(5)
    run_round(scheduler)
    assert row(worker).status == "PROCESSED"
