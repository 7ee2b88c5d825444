"""The pure decisions, exhaustively: what every kind of IBKR answer means for our instruction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.tracking_support import answer, envelope
from worker.ibkr.responses import ApiResult, Outcome, no_response
from worker.tracking.decisions import (
    Action,
    Tracked,
    after_lookup,
    after_set_read,
    after_submit,
    reconcile,
)

OURS = Tracked(1012983, "INTERNAL_CASH_TRANSFER", "SUBMITTING", attempt_count=1)
FINAL = {"PROCESSED", "REJECTED", "FAILED", "CONFLICT"}
set_ids = st.integers(min_value=1, max_value=10**9)
ibkr_statuses = st.sampled_from(["PENDING", "PENDING_VERIFICATION", "PROCESSED", "REJECTED"])


def dup_422(cid: int = 1012983) -> ApiResult:
    return answer(
        422,
        {
            "status": 422,
            "instructionSetId": 77,
            "instructionResult": {
                "clientInstructionId": cid,
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instructionStatus": "REJECTED",
                "instructionId": 5,
                "error": {"errorCode": "CORRUPT_DATA_DUBPLICATE_CP", "errorMessage": "exists"},
            },
        },
    )


@given(ours=set_ids, theirs=set_ids, status=ibkr_statuses, http=st.sampled_from([200, 208]))
def test_a_status_answer_for_another_set_is_a_conflict_and_never_adopted(
    ours: int, theirs: int, status: str, http: int
) -> None:
    tracked = Tracked(1012983, "INTERNAL_CASH_TRANSFER", "PENDING", 1, instruction_set_id=ours)
    decision = after_lookup(
        tracked,
        answer(http, envelope(http, theirs, 1012983, status), "GET"),
        set_owned_elsewhere=False,
    )
    if ours == theirs:
        assert decision.to_status == status
    else:
        assert decision.to_status == "CONFLICT" and decision.action is Action.DONE
        assert decision.instruction_id is None and decision.result is None
        assert str(ours) in (decision.error_message or "") and str(theirs) in (
            decision.error_message or ""
        )


@given(
    status=ibkr_statuses,
    owned=st.booleans(),
    same_type=st.booleans(),
    http=st.sampled_from([200, 208]),
    attempts=st.integers(min_value=1, max_value=4),
)
def test_without_a_recorded_set_an_answer_is_adopted_only_when_it_can_be_ours(
    status: str, owned: bool, same_type: bool, http: int, attempts: int
) -> None:
    kind = "INTERNAL_CASH_TRANSFER" if same_type else "DEPOSIT"
    tracked = Tracked(1012983, "INTERNAL_CASH_TRANSFER", "SUBMITTING", attempt_count=attempts)
    result = answer(http, envelope(http, 55, 1012983, status, instructionType=kind), "GET")
    decision = reconcile(tracked, result, set_owned_elsewhere=owned)
    # A 208 after our only POST: another transaction holds the id, and its status is not ours.
    theirs = http == 208 and attempts == 1
    if same_type and not owned and not theirs:
        assert decision.to_status == status and decision.instruction_set_id == 55
    else:
        assert decision.to_status == "CONFLICT" and decision.instruction_id is None
        assert decision.result is None and decision.instruction_set_id is None


@given(status=ibkr_statuses, http=st.sampled_from([201, 202]))
def test_a_submit_answer_is_adopted_and_only_final_statuses_end_tracking(
    status: str, http: int
) -> None:
    decision = after_submit(OURS, answer(http, envelope(http, 9, 1012983, status)))
    assert decision.to_status == status
    assert (decision.action is Action.DONE) == (status in FINAL)
    assert not decision.is_error


def test_a_lost_answer_is_resolved_not_failed() -> None:
    decision = after_submit(OURS, no_response("POST", "/p", Outcome.UNKNOWN, "timeout"))
    assert decision.action is Action.RESOLVE and decision.to_status is None


def test_a_server_error_on_submit_is_uncertain_and_resolved_by_lookup() -> None:
    decision = after_submit(OURS, answer(500, {"type": "/simple", "status": 500}))
    assert decision.action is Action.RESOLVE and decision.to_status is None and decision.is_error


def test_a_429_on_submit_is_sent_again_after_the_wait() -> None:
    throttled = answer(429, {"status": 429})
    decision = after_submit(OURS, throttled)
    assert decision.action is Action.RESEND and decision.is_error


def test_a_400_fails_with_the_invalid_arguments() -> None:
    body = {
        "type": "/invalid-argument",
        "status": 400,
        "title": "Bad Request",
        "invalidArguments": [
            {"field": "sourceAccountId", "description": "Missing required parameter"}
        ],
    }
    decision = after_submit(OURS, answer(400, body))
    assert decision.to_status == "FAILED" and "sourceAccountId" in (decision.error_message or "")


def test_a_business_reject_is_rejected_with_ibkr_ids_and_error() -> None:
    result = answer(
        422,
        {
            "status": 422,
            "instructionSetId": "2616",
            "instructionResult": {
                "clientInstructionId": 1012983,
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instructionStatus": "REJECTED",
                "instructionId": 45,
                "error": {
                    "errorCode": "CORRUPT_DATA_INVALID_ACCT",
                    "errorMessage": "Account U1 does not exist",
                },
            },
        },
    )
    decision = after_submit(OURS, result)
    assert decision.to_status == "REJECTED" and decision.instruction_id == 45
    assert (
        decision.instruction_set_id == 2616 and decision.error_code == "CORRUPT_DATA_INVALID_ACCT"
    )


def test_a_duplicate_post_reject_is_a_conflict_on_the_first_attempt_only() -> None:
    assert after_submit(OURS, dup_422()).to_status == "CONFLICT"
    later = Tracked(1012983, "INTERNAL_CASH_TRANSFER", "SUBMITTING", attempt_count=2)
    decision = after_submit(later, dup_422())
    assert decision.action is Action.RESOLVE and decision.to_status is None


def test_a_404_lookup_resends_only_what_ibkr_never_accepted() -> None:
    not_found = answer(404, {"status": 404, "title": "Not found"}, "GET")
    assert after_lookup(OURS, not_found, set_owned_elsewhere=False).action is Action.RESEND
    accepted = Tracked(1012983, "INTERNAL_CASH_TRANSFER", "PENDING", 1, instruction_set_id=3)
    decision = after_lookup(accepted, not_found, set_owned_elsewhere=False)
    assert decision.action is Action.RETRY and decision.to_status is None


@given(outcome=st.sampled_from([Outcome.TRANSIENT, Outcome.UNKNOWN, Outcome.AUTH_FAILED]))
def test_a_failed_look_keeps_the_status_and_looks_again(outcome: Outcome) -> None:
    tracked = Tracked(1012983, "INTERNAL_CASH_TRANSFER", "PENDING", 1, instruction_set_id=3)
    decision = after_lookup(
        tracked, no_response("GET", "/p", outcome, "x"), set_owned_elsewhere=False
    )
    assert decision.action is Action.RETRY and decision.to_status is None and decision.is_error


def test_a_set_read_gives_each_member_its_own_result() -> None:
    body = {
        "status": 200,
        "instructionSetId": 8,
        "instructionResults": [
            envelope(200, 8, 1, "PROCESSED", 11),
            {
                "status": 422,
                "type": "/simple",
                "title": "Business Error",
                "instructionSetId": 8,
                "instructionResult": {
                    "clientInstructionId": 2,
                    "instructionType": "INTERNAL_CASH_TRANSFER",
                    "instructionStatus": "REJECTED",
                    "instructionId": 12,
                    "error": {"errorCode": "NOT_OPEN_ACCOUNT", "errorMessage": "closed"},
                },
            },
        ],
    }
    result = answer(200, body, "GET")
    first = after_set_read(Tracked(1, "INTERNAL_CASH_TRANSFER", "PENDING", 1, 8), result, 0)
    second = after_set_read(Tracked(2, "INTERNAL_CASH_TRANSFER", "PENDING", 1, 8), result, 1)
    assert (first.to_status, first.instruction_id) == ("PROCESSED", 11)
    assert (second.to_status, second.error_code) == ("REJECTED", "NOT_OPEN_ACCOUNT")


def test_an_unknown_ibkr_status_keeps_the_instruction_tracked() -> None:
    decision = after_submit(OURS, answer(202, envelope(202, 9, 1012983, "SOMETHING_NEW")))
    assert decision.to_status == "PENDING" and decision.action is Action.POLL
    assert "SOMETHING_NEW" in decision.reason
