"""Sandbox answers per endpoint beyond validation: the success status of every endpoint,
synchronous queries, deposits and withdrawals (IRA included), the bank instruction limit, the
permission map, non-ASCII payloads and the supporting reads (reference §10 items 11, 15)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sandbox.support import SandboxClient, ict, in_process, public_pem

Env = tuple[Any, SandboxClient]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (
            "/external-cash-transfers",
            {
                "instructionType": "DEPOSIT",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U46377",
                    "amount": 100,
                    "currency": "USD",
                    "bankInstructionMethod": "WIRE",
                },
            },
            202,
        ),
        (
            "/external-cash-transfers",
            {
                "instructionType": "WITHDRAWAL",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U46377",
                    "amount": 100,
                    "currency": "USD",
                    "bankInstructionMethod": "WIRE",
                    "bankInstructionName": "Test Withdrawal",
                },
            },
            202,
        ),
        (
            "/external-cash-transfers/query",
            {
                "instructionType": "QUERY_WITHDRAWABLE_FUNDS",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U87440",
                    "currency": "USD",
                },
            },
            201,
        ),
        (
            "/external-cash-transfers/query",
            {
                "instructionType": "QUERY_IRA_CONTRIBUTIONS",
                "instruction": {"clientInstructionId": 10, "accountId": "U68903", "year": "2003"},
            },
            202,
        ),
        (
            "/balances/query",
            {
                "instructionType": "QUERY_WITHDRAWABLE_CASH_EQUITY",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U87440",
                    "currency": "USD",
                },
            },
            201,
        ),
        (
            "/bank-instructions/query",
            {
                "instructionType": "QUERY_BANK_INSTRUCTION",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U46377",
                    "bankInstructionMethod": "WIRE",
                },
            },
            201,
        ),
        (
            "/bank-instructions/query",
            {
                "instructionType": "QUERY_RECURRING_INSTRUCTIONS",
                "instruction": {"clientInstructionId": 10, "accountId": "U399192"},
            },
            201,
        ),
        (
            "/bank-instructions/query",
            {
                "instructionType": "QUERY_RECENT_RECURRING_EVENTS",
                "instruction": {
                    "clientInstructionId": 10,
                    "ibReferenceId": 206603050,
                    "numberOfTransactions": 100,
                },
            },
            201,
        ),
        (
            "/internal-asset-transfers",
            {
                "instructionType": "INTERNAL_POSITION_TRANSFER",
                "instruction": {
                    "clientInstructionId": 10,
                    "sourceAccountId": "U399192",
                    "targetAccountId": "U87440",
                    "tradingInstrument": {"conid": 21323, "currency": "USD"},
                    "transferQuantity": 6,
                },
            },
            202,
        ),
        (
            "/external-asset-transfers",
            {
                "instructionType": "FOP",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U46377",
                    "contraBrokerAccountId": "12345678A",
                    "contraBrokerDtcCode": "534",
                    "direction": "IN",
                    "quantity": 1000,
                    "tradingInstrument": {"conid": 459200101, "currency": "USD"},
                },
            },
            202,
        ),
        (
            "/bank-instructions",
            {
                "instructionType": "ACH_INSTRUCTION",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U15667",
                    "achType": "DEBIT_CREDIT",
                    "bankInstructionCode": "USACH",
                    "bankInstructionName": "TestInstr",
                    "currency": "USD",
                    "clientAccountInfo": {
                        "bankAccountNumber": "101267576983",
                        "bankAccountTypeCode": 1,
                        "bankName": "JPM Chase",
                        "bankRoutingNumber": "202012983",
                    },
                },
            },
            202,
        ),
        (
            "/instructions/query",
            {
                "instructionType": "QUERY_RECENT_INSTRUCTIONS",
                "instruction": {
                    "clientInstructionId": 10,
                    "accountId": "U46377",
                    "transactionHistory": {"daysToGoBack": 3},
                },
            },
            202,
        ),
    ],
    ids=[
        "deposit",
        "withdrawal",
        "withdrawable-funds",
        "ira-contributions",
        "balances",
        "bank-instruction-query",
        "recurring-instructions",
        "recurring-events",
        "internal-position",
        "fop",
        "ach",
        "instructions-query",
    ],
)
def test_success_status_per_endpoint(
    env: Env, path: str, body: dict[str, Any], status: int
) -> None:
    _, client = env
    response = client.post(path, body)
    assert response.status_code == status, response.text
    assert response.json()["status"] == status
    expected = "PROCESSED" if status == 201 else None
    if expected:
        assert response.json()["instructionResult"]["instructionStatus"] == expected


def test_synchronous_queries_carry_their_results(env: Env) -> None:
    _, client = env
    body = {
        "instructionType": "QUERY_BANK_INSTRUCTION",
        "instruction": {
            "clientInstructionId": 1,
            "accountId": "U46377",
            "bankInstructionMethod": "ACH",
        },
    }
    result = client.post("/bank-instructions/query", body).json()["instructionResult"]
    names = [detail["instructionName"] for detail in result["bankInstructionDetails"]]
    assert names == ["testChase1"]
    assert result["bankInstructionDetails"][0]["bankAccountNumber"].startswith("*****")


def _deposit(cid: int, account: str = "U46377", **fields: Any) -> dict[str, Any]:
    instruction = {
        "clientInstructionId": cid,
        "accountId": account,
        "amount": 100,
        "currency": "USD",
        "bankInstructionMethod": "WIRE",
        **fields,
    }
    return {"instructionType": "DEPOSIT", "instruction": instruction}


def _withdrawal(cid: int, amount: Any = 100, **fields: Any) -> dict[str, Any]:
    instruction = {
        "clientInstructionId": cid,
        "accountId": "U46377",
        "amount": amount,
        "currency": "USD",
        "bankInstructionMethod": "WIRE",
        "bankInstructionName": "Test Withdrawal",
        **fields,
    }
    return {"instructionType": "WITHDRAWAL", "instruction": instruction}


IRA_DETAIL = {
    "fromIraType": "TRADITIONAL",
    "iraContributionType": "ROLLOVER",
    "iraTaxYearType": "CURRENT",
}


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (
            "/internal-cash-transfers",
            ict(1, sourceAccountId="U463756"),
            "CORRUPT_DATA_INVALID_ACCT",
        ),
        (
            "/internal-cash-transfers",
            ict(1, targetAccountId="U223454"),
            "ERROR_ACCOUNT_CP_NOT_RELATED",
        ),
        ("/internal-cash-transfers", ict(1, targetAccountId="U5550001"), "NOT_OPEN_ACCOUNT"),
        ("/internal-cash-transfers", ict(1, amount="9999999999"), "INSUFFICIENT_FUNDS"),
        ("/external-cash-transfers", _deposit(1, iraDepositDetail=IRA_DETAIL), "NOT_IRA_ACCOUNT"),
        ("/external-cash-transfers", _withdrawal(1, 100001), "WITHDRAWAL_LIMIT_EXCEEDED"),
        (
            "/external-cash-transfers",
            _withdrawal(1, bankInstructionName="nope"),
            "BANK_INSTRUCTION_NOT_FOUND",
        ),
    ],
    ids=["unknown", "unrelated", "closed", "funds", "not-ira", "over-100k", "unknown-bank"],
)
def test_business_rejects_are_422_with_ids(
    env: Env, path: str, body: dict[str, Any], code: str
) -> None:
    sandbox, client = env
    response = client.post(path, body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["title"] == "Business Error"
    assert problem["instructionResult"]["instructionStatus"] == "REJECTED"
    assert problem["instructionResult"]["error"]["errorCode"] == code
    assert problem["instructionResult"]["instructionId"] > 0
    assert isinstance(problem["instructionSetId"], int)
    assert sandbox.ledger_counts() == {}
    assert (
        client.get("/client-instructions/1").json()["instructionResult"]["instructionStatus"]
        == "REJECTED"
    )


def test_ira_deposit_to_an_ira_account_is_accepted(env: Env) -> None:
    _, client = env
    response = client.post(
        "/external-cash-transfers", _deposit(1, "U399192", iraDepositDetail=IRA_DETAIL)
    )
    assert response.status_code == 202


def test_seventh_bank_instruction_is_refused(env: Env) -> None:
    _, client = env
    statuses = []
    for cid in range(1, 4):
        body = {
            "instructionType": "PREDEFINED_DESTINATION_INSTRUCTION",
            "instruction": {
                "clientInstructionId": cid,
                "accountId": "U46377",
                "bankInstructionMethod": "WIRE",
                "bankInstructionName": f"dest-{cid}",
                "currency": "USD",
                "financialInstitution": {
                    "clientAccountId": "132456789",
                    "identifier": "SBIN001000",
                    "identifierType": "IFSC",
                    "name": "SBI Bank",
                },
            },
        }
        response = client.post("/bank-instructions", body)
        statuses.append(response.status_code)
        client.http  # keep the same client
        if response.status_code == 202:
            env[0].advance(60)
    # U46377 starts with five saved instructions: the sixth is accepted, the seventh is not.
    assert statuses == [202, 422, 422]


def test_permission_map_answers_403_with_ids(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    sandbox.register_client(
        "limited",
        "limited-key",
        public_pem(rsa_private_key),
        denied_instruction_types=["WITHDRAWAL"],
    )
    limited = SandboxClient(client.http, rsa_private_key, client_id="limited", key_id="limited-key")
    response = limited.post("/external-cash-transfers", _withdrawal(1))
    assert response.status_code == 403
    result = response.json()["instructionResult"]
    assert result["error"]["errorCode"] == "ERROR_PERMISSION_DENIED"
    assert result["instructionId"] > 0


def test_non_ascii_inside_the_payload_is_a_business_reject(env: Env) -> None:
    _, client = env
    response = client.post("/internal-cash-transfers", ict(1, clientNote="caf\u00e9"))
    assert response.status_code == 422
    assert (
        response.json()["instructionResult"]["error"]["errorCode"] == "UNSUPPORTED_CHARACTERS_ERROR"
    )


def test_supporting_reads(env: Env) -> None:
    _, client = env
    banks = client.get("/participating-banks?type=eDDA")
    assert banks.status_code == 200
    assert banks.json()["participatingBanks"][0]["clearingCode"] == "390"
    assert client.get("/participating-banks").status_code == 400
    brokers = client.get(
        "/enumerations/complex-asset-transfer?instructionType=COMPLEX_ASSET_TRANSFER"
    )
    assert "EQUINITI" in brokers.json()["brokers"]
    assert client.get("/enumerations/complex-asset-transfer").status_code == 400
    wire = client.get("/enumerations/wire-instructions?accountId=U46377&currency=USD")
    assert wire.json()["enumerationsType"] == "wire-instructions"


def test_a_bulk_member_whose_id_is_an_object_is_a_400_not_a_crash() -> None:
    from ibkr_sandbox.schemas import RequestInvalid, validate_request

    member = {
        "clientInstructionId": {"nested": 1},
        "sourceAccountId": "U46377",
        "targetAccountId": "U15667",
        "amount": 1,
        "currency": "USD",
    }
    payload = {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": [member, dict(member)]}
    with pytest.raises(RequestInvalid) as refused:
        validate_request("/internal-cash-transfers:bulk", payload, bulk=True)
    assert any(a["field"].endswith("clientInstructionId") for a in refused.value.invalid_arguments)
