"""A request carrying a value the database cannot store is set aside at once, never retried:
an amount beyond the amount column ends FAILED naming the field; any other value the database
refuses makes the message a dead letter (Unprocessable) instead of an infrastructure error."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import DataError

from models import ClientInstruction
from tests.unit.tracking_support import ScriptedIbkr, make_context, sessions, transfer
from worker.clock import ManualClock
from worker.tracking import intake
from worker.tracking.intake import Unprocessable, receive


@pytest.mark.parametrize("amount", ["1e400", "1000000000000000000", "-1e30"])
def test_an_amount_beyond_the_column_ends_failed_naming_the_field(
    sqlite_url: str, amount: str
) -> None:
    ibkr = ScriptedIbkr()
    ctx = make_context(sqlite_url, ibkr, ManualClock())
    result = receive(ctx, request=transfer(amount=amount), correlation_id=None, message_id="m-1")
    assert result.disposition == "failed"
    with sessions(ctx)() as session:
        [row] = session.query(ClientInstruction).all()
    assert row.status == "FAILED" and "instruction.amount" in (row.error_message or "")
    assert ibkr.calls == []


def test_the_largest_storable_amount_is_accepted(sqlite_url: str) -> None:
    ctx = make_context(sqlite_url, ScriptedIbkr(), ManualClock())
    result = receive(
        ctx, request=transfer(amount="999999999.99"), correlation_id=None, message_id="m-1"
    )
    assert result.disposition == "new"


def test_a_value_the_database_refuses_is_unprocessable_not_retried(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_context(sqlite_url, ScriptedIbkr(), ManualClock())

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise DataError("INSERT ...", {}, ValueError("value out of range\nDETAIL: long"))

    monkeypatch.setattr(intake, "_receive", refuse)
    with pytest.raises(Unprocessable, match=r"database refused a value.*out of range"):
        receive(ctx, request=transfer(), correlation_id=None, message_id="m-1")
