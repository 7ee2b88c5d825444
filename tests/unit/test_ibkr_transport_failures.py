"""The one table from a failure to get an answer to an outcome (`worker.ibkr.attempt`): what
may have reached IBKR is never called NOT_SENT, and what surely did not is."""

from __future__ import annotations

import httpx
import pytest

from worker.ibkr.attempt import TRANSPORT_FAILURES, NoSlot, failed_result, failure_of
from worker.ibkr.endpoints import INSTRUCTION_STATUS, INTERNAL_CASH_TRANSFERS
from worker.ibkr.responses import Outcome

REQUEST = httpx.Request("POST", "https://ibkr.test/gw/api/v1/internal-cash-transfers")


def test_every_row_says_one_thing() -> None:
    # A request that may have left is UNKNOWN for a POST and never resent at once; one that
    # cannot have left is NOT_SENT and may be. A GET is repeated either way.
    for cls, failure in TRANSPORT_FAILURES.items():
        assert failure.resend_safe is not failure.may_have_left, cls
        expected = Outcome.UNKNOWN if failure.may_have_left else Outcome.NOT_SENT
        assert failure.post_outcome is expected, cls
        assert failure.get_outcome is Outcome.TRANSIENT, cls


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused", request=REQUEST),
        httpx.ConnectTimeout("no connection in time", request=REQUEST),
        httpx.PoolTimeout("no connection free", request=REQUEST),
        httpx.UnsupportedProtocol("ftp://", request=REQUEST),
        NoSlot("no slot before the deadline", retry_after_s=1.5),
    ],
)
def test_failures_before_the_first_byte_are_not_sent(error: Exception) -> None:
    result = failed_result(error, INTERNAL_CASH_TRANSFERS, True, 0.0)
    assert result.outcome is Outcome.NOT_SENT
    assert "nothing was sent" in (result.error_detail or "")
    assert failure_of(error).resend_safe


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("lost", request=REQUEST),
        httpx.WriteTimeout("half written", request=REQUEST),
        httpx.ReadError("reset", request=REQUEST),
        httpx.WriteError("broken pipe", request=REQUEST),
        httpx.RemoteProtocolError("closed mid-answer", request=REQUEST),
        httpx.ProxyError("proxy went away", request=REQUEST),
    ],
)
def test_failures_after_a_byte_may_have_left_are_unknown_for_a_post(error: Exception) -> None:
    posted = failed_result(error, INTERNAL_CASH_TRANSFERS, True, 0.0)
    assert posted.outcome is Outcome.UNKNOWN
    assert "may have been processed" in (posted.error_detail or "")
    assert type(error).__name__ in (posted.error_detail or "")
    assert failed_result(error, INSTRUCTION_STATUS, False, 0.0).outcome is Outcome.TRANSIENT


def test_no_slot_carries_when_the_earliest_slot_would_have_been() -> None:
    result = failed_result(NoSlot("too late", retry_after_s=2.5), INTERNAL_CASH_TRANSFERS, True, 0)
    assert result.retry_after_s == 2.5 and result.http_status is None


def test_an_error_outside_the_table_is_not_turned_into_an_outcome() -> None:
    with pytest.raises(KeyError, match="ValueError"):
        failure_of(ValueError("a bug"))
