"""The IBKR client against the bundled sandbox over a real socket: every endpoint family and
every outcome the worker acts on (sessions, signing, limits and connections are in
`test_client_sessions_against_sandbox.py`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.builders import transfer
from tests.integration.client_support import (
    SandboxFactory,
    make_client,
    next_id,
    send,
)
from worker.ibkr.client import IbkrClient
from worker.ibkr.responses import Outcome

FAMILIES: dict[str, tuple[dict[str, Any], set[Outcome]]] = {
    "internal cash": (transfer(), {Outcome.FINAL}),
    "internal position": (
        {
            "instructionType": "INTERNAL_POSITION_TRANSFER",
            "instruction": {
                "sourceAccountId": "U399192",
                "targetAccountId": "U87440",
                "transferQuantity": 6,
                "tradingInstrument": {"conid": 21323, "currency": "USD"},
            },
        },
        {Outcome.ACCEPTED},
    ),
    "deposit": (
        {
            "instructionType": "DEPOSIT",
            "instruction": {
                "accountId": "U46377",
                "amount": Decimal("100"),
                "currency": "USD",
                "bankInstructionMethod": "WIRE",
            },
        },
        {Outcome.ACCEPTED},
    ),
    "withdrawal": (
        {
            "instructionType": "WITHDRAWAL",
            "instruction": {
                "accountId": "U46377",
                "amount": Decimal("12.34"),
                "currency": "USD",
                "bankInstructionMethod": "WIRE",
                "bankInstructionName": "Test Withdrawal",
            },
        },
        {Outcome.ACCEPTED},
    ),
    "withdrawable funds query": (
        {
            "instructionType": "QUERY_WITHDRAWABLE_FUNDS",
            "instruction": {"accountId": "U46377", "currency": "USD"},
        },
        {Outcome.FINAL},
    ),
    "balances query": (
        {
            "instructionType": "QUERY_WITHDRAWABLE_CASH_EQUITY",
            "instruction": {"accountId": "U46377", "currency": "USD"},
        },
        {Outcome.FINAL},
    ),
    "external asset": (
        {
            "instructionType": "FOP",
            "instruction": {
                "accountId": "U46377",
                "direction": "IN",
                "contraBrokerAccountId": "12345678A",
                "contraBrokerDtcCode": "534",
                "quantity": 1000,
                "tradingInstrument": {"conid": 12123, "currency": "USD"},
            },
        },
        {Outcome.ACCEPTED},
    ),
    "bank instruction": (
        {
            "instructionType": "ACH_INSTRUCTION",
            "instruction": {
                "accountId": "U46377",
                "bankInstructionCode": "USACH",
                "achType": "DEBIT_CREDIT",
                "bankInstructionName": "NewAch",
                "currency": "USD",
                "clientAccountInfo": {
                    "bankRoutingNumber": "202012983",
                    "bankAccountNumber": "101267576983",
                    "bankName": "JPM Chase",
                    "bankAccountTypeCode": 1,
                },
            },
        },
        {Outcome.ACCEPTED},
    ),
    "bank instruction query": (
        {
            "instructionType": "QUERY_BANK_INSTRUCTION",
            "instruction": {"accountId": "U46377", "bankInstructionMethod": "ACH"},
        },
        {Outcome.FINAL},
    ),
    "instructions query": (
        {
            "instructionType": "QUERY_RECENT_INSTRUCTIONS",
            "instruction": {"accountId": "U46377", "transactionHistory": {"daysToGoBack": 3}},
        },
        {Outcome.ACCEPTED},
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_endpoint_family_answers_and_can_be_polled(client: IbkrClient, family: str) -> None:
    raw, expected = FAMILIES[family]
    result, [cid] = send(client, raw)
    assert result.outcome in expected, (result.outcome, result.error_detail)
    assert result.http_status in {201, 202}
    assert result.instruction_set_id is not None
    [item] = result.results
    assert item.client_instruction_id == cid
    assert item.status in {"PENDING", "PROCESSED"}
    polled = client.get_client_instruction(cid)
    assert polled.outcome is Outcome.ACCEPTED
    assert polled.results[0].instruction_id == item.instruction_id
    by_id = client.get_instruction(item.instruction_id)
    assert by_id.results[0].client_instruction_id == cid
    by_set = client.get_instruction_set(result.instruction_set_id)
    assert by_set.result_for(cid) is not None


def test_cancel_of_a_pending_deposit_is_final(client: IbkrClient) -> None:
    deposit, _ = send(client, FAMILIES["deposit"][0])
    target = deposit.results[0].instruction_id
    cancel, [cid] = send(
        client,
        {
            "instructionType": "CANCEL_INSTRUCTION",
            "instruction": {"instructionId": target, "reason": "Testing"},
        },
    )
    assert cancel.outcome is Outcome.FINAL
    assert cancel.result_for(cid).status == "PROCESSED"  # type: ignore[union-attr]


def test_bulk_is_accepted_as_one_set(client: IbkrClient) -> None:
    member = transfer()["instruction"]
    result, ids = send(
        client, {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": [member] * 3}
    )
    assert result.outcome is Outcome.ACCEPTED
    assert [item.client_instruction_id for item in result.results] == ids
    listed = client.get_instruction_set(result.instruction_set_id)
    assert {item.client_instruction_id for item in listed.results} == set(ids)


def test_reused_id_is_reported_as_duplicate_naming_the_first_set(
    start_sandbox: SandboxFactory, rsa_private_key: Any
) -> None:
    sandbox = start_sandbox(duplicate_post="accept")
    with make_client(sandbox, rsa_private_key) as client:
        first, [cid] = send(client, transfer(amount="1.00"))
        second, _ = send(client, transfer(amount="2.00"), [cid])
        assert second.instruction_set_id != first.instruction_set_id
        polled = client.get_client_instruction(cid)
    assert polled.outcome is Outcome.DUPLICATE
    assert polled.http_status == 208
    assert polled.instruction_set_id == first.instruction_set_id


def test_reposted_id_is_rejected_as_a_duplicate(client: IbkrClient) -> None:
    _, [cid] = send(client, transfer())
    again, _ = send(client, transfer(), [cid])
    assert again.outcome is Outcome.REJECTED
    assert again.http_status == 422
    assert again.results[0].error_code == "CORRUPT_DATA_DUBPLICATE_CP"


def test_permission_denied_is_a_rejection_with_ids(
    start_sandbox: SandboxFactory, rsa_private_key: Any
) -> None:
    sandbox = start_sandbox(denied=("DEPOSIT",))
    with make_client(sandbox, rsa_private_key) as client:
        result, [cid] = send(client, FAMILIES["deposit"][0])
    assert result.outcome is Outcome.REJECTED
    assert result.http_status == 403
    item = result.result_for(cid)
    assert item is not None and item.error_code == "ERROR_PERMISSION_DENIED"
    assert item.instruction_id is not None


def test_unknown_account_is_a_business_rejection(client: IbkrClient) -> None:
    result, [cid] = send(client, transfer(sourceAccountId="U463756"))
    assert result.outcome is Outcome.REJECTED
    assert result.http_status == 422
    assert result.result_for(cid).error_code == "CORRUPT_DATA_INVALID_ACCT"  # type: ignore[union-attr]


def test_malformed_body_is_invalid_with_the_fields_named(client: IbkrClient) -> None:
    from worker.ibkr.endpoints import INTERNAL_CASH_TRANSFERS

    body = {
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instruction": {"clientInstructionId": next_id(), "amount": 5, "currency": "USD"},
    }
    result = client.post_instruction(INTERNAL_CASH_TRANSFERS, body)
    assert result.outcome is Outcome.INVALID
    fields = {field for field, _ in result.invalid_arguments}
    assert "sourceAccountId" in fields


def test_unknown_id_is_not_found(client: IbkrClient) -> None:
    result = client.get_client_instruction(987_654_321)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.http_status == 404
