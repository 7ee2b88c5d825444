"""State machines on the virtual clock (reference §7, §10 items 8-10)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ibkr_sandbox import Timings
from tests.sandbox.support import SandboxClient, ict, in_process, public_pem

Env = tuple[Any, SandboxClient]


def _status(client: SandboxClient, cid: int) -> str:
    return str(client.status(cid)["instructionStatus"])


def _ach(cid: int, name: str, account: str = "U15667") -> dict[str, Any]:
    return {
        "instructionType": "ACH_INSTRUCTION",
        "instruction": {
            "clientInstructionId": cid,
            "accountId": account,
            "achType": "DEBIT_CREDIT",
            "bankInstructionCode": "USACH",
            "bankInstructionName": name,
            "currency": "USD",
            "clientAccountInfo": {
                "bankAccountNumber": "101267576983",
                "bankAccountTypeCode": 1,
                "bankName": "JPM Chase",
                "bankRoutingNumber": "202012983",
            },
        },
    }


def _tbiv(cid: int, pending_id: int, amounts: tuple[Any, Any], **fields: Any) -> dict[str, Any]:
    instruction = {
        "clientInstructionId": cid,
        "accountId": "U15667",
        "bankInstructionCode": "USACH",
        "bankInstructionName": "verify-me",
        "pendingInstructionId": pending_id,
        "creditAmount1": amounts[0],
        "creditAmount2": amounts[1],
        **fields,
    }
    return {
        "instructionType": "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
        "instruction": instruction,
    }


def test_batched_internal_transfer_is_processed_at_the_next_batch(env: Env) -> None:
    sandbox, client = env
    client.post(
        "/internal-cash-transfers:bulk",
        {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": [ict(1)["instruction"]]},
    )
    sandbox.clock.advance(29)
    assert _status(client, 1) == "PENDING"
    sandbox.clock.advance(31)
    assert _status(client, 1) == "PROCESSED"


def test_position_transfers_are_processed_200_per_five_minutes(rsa_private_key: Any) -> None:
    timings = Timings(position_batch_size=2)
    sandbox, client = in_process(rsa_private_key, timings=timings)
    items = [
        {
            "clientInstructionId": cid,
            "sourceAccountId": "U399192",
            "targetAccountId": "U87440",
            "tradingInstrument": {"conid": 21323, "currency": "USD"},
            "transferQuantity": 6,
        }
        for cid in (1, 2, 3)
    ]
    body = {"instructionType": "INTERNAL_POSITION_TRANSFER", "instructions": items}
    assert client.post("/internal-asset-transfers:bulk", body).status_code == 202
    sandbox.clock.advance(300)
    assert [_status(client, cid) for cid in (1, 2, 3)] == ["PROCESSED", "PROCESSED", "PENDING"]
    sandbox.clock.advance(300)
    assert _status(client, 3) == "PROCESSED"


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("Main checking", "PROCESSED"),
        ("verify-me", "PENDING_VERIFICATION"),
        ("reject-me", "REJECTED"),
    ],
)
def test_ach_instruction_outcome_follows_the_name_rule_after_7_to_15_minutes(
    env: Env, name: str, outcome: str
) -> None:
    sandbox, client = env
    assert client.post("/bank-instructions", _ach(1, name)).status_code == 202
    sandbox.clock.advance(7 * 60 - 1)
    assert _status(client, 1) == "PENDING"
    sandbox.clock.advance(8 * 60 + 1)
    assert _status(client, 1) == outcome


def test_ach_outcome_can_be_forced(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, ach_outcome="REJECTED")
    client.post("/bank-instructions", _ach(1, "Main checking"))
    sandbox.clock.advance(900)
    assert _status(client, 1) == "REJECTED"


def _pending_verification(sandbox: Any, client: SandboxClient) -> int:
    posted = client.post("/bank-instructions", _ach(1, "verify-me")).json()
    sandbox.clock.advance(900)
    return int(posted["instructionResult"]["instructionId"])


def test_correct_micro_amounts_process_the_ach_instruction(env: Env) -> None:
    sandbox, client = env
    ach_id = _pending_verification(sandbox, client)
    first, second = sandbox.micro_amounts(ach_id)
    assert Decimal(0) < first < Decimal(1) and Decimal(0) < second < Decimal(1)
    assert client.post("/bank-instructions", _tbiv(2, ach_id, (second, first))).status_code == 202
    sandbox.clock.advance(60)
    assert _status(client, 2) == "PROCESSED"
    assert _status(client, 1) == "PROCESSED"


def test_three_wrong_micro_amount_attempts_reject_the_ach_instruction(env: Env) -> None:
    sandbox, client = env
    ach_id = _pending_verification(sandbox, client)
    for cid in (2, 3, 4):
        response = client.post("/bank-instructions", _tbiv(cid, ach_id, (Decimal("0.999"), 1)))
        assert response.status_code == 202
        sandbox.clock.advance(60)
        assert _status(client, cid) == "REJECTED"
    assert _status(client, 1) == "REJECTED"
    late = client.post("/bank-instructions", _tbiv(5, ach_id, sandbox.micro_amounts(ach_id)))
    assert late.status_code == 422


def test_the_reference_verification_example_works_as_printed(env: Env) -> None:
    sandbox, client = env
    body = _tbiv(7013057, 43086786, (Decimal("0.32"), Decimal("0.46")), accountId="U117717")
    assert client.post("/bank-instructions", body).status_code == 202
    sandbox.clock.advance(60)
    assert _status(client, 7013057) == "PROCESSED"


def test_deposit_stays_pending_until_the_funds_arrive(env: Env) -> None:
    sandbox, client = env
    body = {
        "instructionType": "DEPOSIT",
        "instruction": {
            "clientInstructionId": 9,
            "accountId": "U15667",
            "amount": 250,
            "currency": "USD",
            "bankInstructionMethod": "WIRE",
        },
    }
    response = client.post("/external-cash-transfers", body)
    assert response.json()["instructionResult"]["depositDetails"]["amount"] == 250
    sandbox.clock.advance(30 * 86_400)
    client.renew()
    assert _status(client, 9) == "PENDING"
    sandbox.deposit_arrived(9)
    result = client.status(9)
    assert result["instructionStatus"] == "PROCESSED"
    assert result["ibReferenceId"] > 0
    assert sandbox.balances()["U15667"]["USD"] == Decimal(1_000_250)


def test_deposits_can_arrive_on_their_own(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, timings=Timings(deposit_auto_arrival_s=3600))
    body = {
        "instructionType": "DEPOSIT",
        "instruction": {
            "clientInstructionId": 9,
            "accountId": "U15667",
            "amount": 250,
            "currency": "USD",
            "bankInstructionMethod": "WIRE",
        },
    }
    client.post("/external-cash-transfers", body)
    sandbox.clock.advance(3600)
    assert _status(client, 9) == "PROCESSED"


def _history_query(cid: int, account: str = "U46377") -> dict[str, Any]:
    return {
        "instructionType": "QUERY_RECENT_INSTRUCTIONS",
        "instruction": {
            "clientInstructionId": cid,
            "accountId": account,
            "transactionHistory": {"daysToGoBack": 3, "transactionType": "ALL"},
        },
    }


def test_history_query_is_processed_after_a_minute_with_results(env: Env) -> None:
    sandbox, client = env
    client.post("/internal-cash-transfers", ict(1))
    posted = client.post("/instructions/query", _history_query(2))
    assert posted.status_code == 202
    pending = posted.json()["instructionResult"]
    assert pending["instructionStatus"] == "PENDING"
    assert pending["code"] == "PENDING"
    assert "1 minutes" in pending["description"]
    sandbox.clock.advance(60)
    result = client.status(2)
    assert result["instructionStatus"] == "PROCESSED"
    history = result["instructionHistory"]
    assert history["historyMaxDepthNumberOfDays"] == 30
    assert [row["clientInstructionId"] for row in history["result"]] == [1]
    assert history["result"][0]["status"] == "PROCESSED"


def test_history_query_is_throttled_with_429_and_retry_after(env: Env) -> None:
    sandbox, client = env
    assert client.post("/instructions/query", _history_query(1)).status_code == 202
    outstanding = client.post("/instructions/query", _history_query(2))
    assert outstanding.status_code == 429
    assert int(outstanding.headers["Retry-After"]) >= 1
    sandbox.clock.advance(60)
    too_soon = client.post("/instructions/query", _history_query(3))
    assert too_soon.status_code == 429
    assert int(too_soon.headers["Retry-After"]) == 540
    sandbox.clock.advance(540)
    assert client.post("/instructions/query", _history_query(4)).status_code == 202


def test_history_query_throttle_can_answer_422(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key, query_throttle_status=422)
    client.post("/instructions/query", _history_query(1))
    response = client.post("/instructions/query", _history_query(2))
    assert response.status_code == 422
    assert response.json()["instructionResult"]["error"]["errorCode"] == "QUERY_THROTTLED"


def test_ira_query_returns_contributions_after_a_minute(env: Env) -> None:
    sandbox, client = env
    body = {
        "instructionType": "QUERY_IRA_CONTRIBUTIONS",
        "instruction": {"clientInstructionId": 1, "accountId": "U68903", "year": "2003"},
    }
    client.post("/external-cash-transfers/query", body)
    sandbox.clock.advance(60)
    result = client.status(1)
    assert result["iraType"] == "ROTH NEW"
    assert result["contributions"][0]["allowedContributionLimit"] == 500


def _cancel(cid: int, instruction_id: int) -> dict[str, Any]:
    return {
        "instructionType": "CANCEL_INSTRUCTION",
        "instruction": {
            "clientInstructionId": cid,
            "instructionId": instruction_id,
            "reason": "Testing",
        },
    }


def test_cancel_of_a_pending_instruction_is_201_and_ends_the_target(env: Env) -> None:
    sandbox, client = env
    posted = client.post("/internal-cash-transfers", ict(1, dateTimeToOccur="2030-01-02T00:00:00Z"))
    target = posted.json()["instructionResult"]["instructionId"]
    response = client.post("/instructions/cancel", _cancel(2, target))
    assert response.status_code == 201
    assert response.json()["instructionResult"]["instructionStatus"] == "PROCESSED"
    assert _status(client, 1) == "REJECTED"
    sandbox.clock.advance(10 * 365 * 86_400)
    client.renew()
    assert _status(client, 1) == "REJECTED"


def test_cancel_final_status_is_configurable(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key, cancel_final_status="CANCELED")
    posted = client.post("/internal-cash-transfers", ict(1, dateTimeToOccur="2030-01-02T00:00:00Z"))
    client.post(
        "/instructions/cancel", _cancel(2, posted.json()["instructionResult"]["instructionId"])
    )
    assert _status(client, 1) == "CANCELED"


def test_cancel_of_a_processed_instruction_is_422(env: Env) -> None:
    _, client = env
    posted = client.post("/internal-cash-transfers", ict(1))
    response = client.post(
        "/instructions/cancel", _cancel(2, posted.json()["instructionResult"]["instructionId"])
    )
    assert response.status_code == 422
    assert (
        response.json()["instructionResult"]["error"]["errorCode"] == "INSTRUCTION_NOT_CANCELLABLE"
    )


def test_cancel_of_another_clients_instruction_is_422_not_related(
    env: Env, rsa_private_key: Any
) -> None:
    sandbox, client = env
    posted = client.post("/internal-cash-transfers", ict(1, dateTimeToOccur="2030-01-02T00:00:00Z"))
    sandbox.register_client("other", "other-key", public_pem(rsa_private_key))
    other = SandboxClient(client.http, rsa_private_key, client_id="other", key_id="other-key")
    target = posted.json()["instructionResult"]["instructionId"]
    response = other.post("/instructions/cancel", _cancel(2, target))
    assert response.status_code == 422
    assert (
        response.json()["instructionResult"]["error"]["errorCode"]
        == "ERROR_INSTR_ID_AND_CP_NOT_RELATED"
    )
    assert _status(client, 1) == "PENDING"


def test_final_transitions_record_virtual_and_real_times(env: Env) -> None:
    sandbox, client = env
    client.post("/internal-cash-transfers", ict(1))
    client.post(
        "/internal-cash-transfers:bulk",
        {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": [ict(2)["instruction"]]},
    )
    assert set(sandbox.final_transitions()) == {1}
    sandbox.clock.advance(60)
    transitions = sandbox.final_transitions()
    assert transitions[2]["status"] == "PROCESSED"
    assert transitions[2]["finalAtVirtual"] - sandbox.clock.timestamp() <= 0
    assert transitions[2]["finalAtReal"] >= transitions[2]["acceptedAtReal"]
    assert transitions[2]["finalAt"].endswith("Z")


def _slow_transfers(rsa_private_key: Any, seed: int) -> tuple[list[int], dict[int, float]]:
    """Ten transfers of 50 and ten of 150 with 150 above the slow threshold: (statuses of the
    POSTs, delay in virtual seconds of each slow one from its POST to PROCESSED)."""
    timings = Timings(internal_cash_async_delay_s=(1.0, 3.0))
    sandbox, client = in_process(
        rsa_private_key, seed=seed, timings=timings, internal_cash_async_above=Decimal(100)
    )
    posted_at = sandbox.clock.timestamp()
    codes = [
        client.post("/internal-cash-transfers", ict(cid, "150" if cid % 2 else "50")).status_code
        for cid in range(1, 21)
    ]
    assert sandbox.clock.timestamp() == posted_at  # frozen: every POST at the same instant
    sandbox.advance(0.999)
    assert {_status(client, cid) for cid in range(1, 21, 2)} == {"PENDING"}
    sandbox.advance(2.001)
    finals = sandbox.final_transitions()
    delays = {cid: finals[cid]["finalAtVirtual"] - posted_at for cid in range(1, 21, 2)}
    return codes, delays


def test_slow_internal_transfers_can_finish_after_a_seeded_delay_in_a_range(
    rsa_private_key: Any,
) -> None:
    codes, delays = _slow_transfers(rsa_private_key, seed=7)
    assert codes == [202, 201] * 10
    assert all(1.0 <= delay <= 3.0 for delay in delays.values()), delays
    assert max(delays.values()) - min(delays.values()) > 0.5, "spread over the range"
    assert _slow_transfers(rsa_private_key, seed=7)[1] == delays
    assert _slow_transfers(rsa_private_key, seed=8)[1] != delays


def test_the_async_delay_range_is_checked() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        Timings(internal_cash_async_delay_s=(3.0, 1.0))
