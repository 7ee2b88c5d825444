"""Sandbox answers per endpoint: validation, 201 vs 202, ids, duplicates and business rejects
(reference §10 items 4-7, 11, 15)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.sandbox.support import SandboxClient, ict, in_process, public_pem

Env = tuple[Any, SandboxClient]


@pytest.fixture
def env(rsa_private_key: Any) -> Env:
    return in_process(rsa_private_key)


def _bulk(items: list[dict[str, Any]], kind: str = "INTERNAL_CASH_TRANSFER") -> dict[str, Any]:
    return {"instructionType": kind, "instructions": items}


def test_missing_field_answers_400_invalid_argument(env: Env) -> None:
    sandbox, client = env
    body = ict(1)
    del body["instruction"]["sourceAccountId"]
    body["instruction"]["amount"] = "ten"
    response = client.post("/internal-cash-transfers", body)
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == "/invalid-argument"
    assert {"field": "sourceAccountId", "description": "Missing required parameter"} in problem[
        "invalidArguments"
    ]
    assert {entry["field"] for entry in problem["invalidArguments"]} == {
        "sourceAccountId",
        "amount",
    }
    assert sandbox.ledger_counts() == {}


def test_wrong_instruction_type_for_the_endpoint_is_400(env: Env) -> None:
    _, client = env
    body = {"instructionType": "DEPOSIT", "instruction": ict(1)["instruction"]}
    response = client.post("/internal-cash-transfers", body)
    assert response.status_code == 400
    assert response.json()["invalidArguments"][0]["field"] == "instructionType"


def test_position_transfer_without_instrument_names_both_fields(env: Env) -> None:
    _, client = env
    body = {
        "instructionType": "INTERNAL_POSITION_TRANSFER",
        "instruction": {
            "clientInstructionId": 1,
            "sourceAccountId": "U46377",
            "targetAccountId": "U15667",
            "transferQuantity": 6,
            "tradingInstrument": {"currency": "USD"},
        },
    }
    response = client.post("/internal-asset-transfers", body)
    assert response.status_code == 400
    fields = [entry["field"] for entry in response.json()["invalidArguments"]]
    assert "conid/tradingInstrumentDescription" in fields


def test_one_malformed_bulk_item_rejects_the_whole_request(env: Env) -> None:
    sandbox, client = env
    good = ict(1)["instruction"]
    bad = dict(ict(2)["instruction"], currency="")
    response = client.post("/internal-cash-transfers:bulk", _bulk([good, bad]))
    assert response.status_code == 400
    assert response.json()["invalidArguments"] == [
        {"field": "currency", "description": "Invalid or Missing required parameter"}
    ]
    assert sandbox.ledger_counts() == {}


def test_client_instruction_id_must_be_a_non_zero_id_of_the_domain(env: Env) -> None:
    _, client = env
    for cid in (0, 2**53, -(2**53), 1.5, "12"):
        response = client.post("/internal-cash-transfers", ict(cid))  # type: ignore[arg-type]
        assert response.status_code == 400, cid


def test_negative_client_instruction_id_is_accepted_and_found_by_its_status_get(
    env: Env,
) -> None:
    """IBKR's schemas type ids as signed; the sandbox takes a negative clientInstructionId as
    the product does, and its status GET reads the negative path segment. (Revert the status
    GET's id parsing in app.py to `raw.isdigit()` to see the GET answer 400.)"""
    _, client = env
    response = client.post("/internal-cash-transfers", ict(-1988905739))
    assert response.status_code == 201, response.text
    found = client.get("/client-instructions/-1988905739")
    assert found.status_code == 200, found.text
    assert found.json()["instructionResult"]["clientInstructionId"] == -1988905739


def test_single_internal_cash_transfer_is_201_processed(env: Env) -> None:
    sandbox, client = env
    response = client.post("/internal-cash-transfers", ict(1012983, "123.45"))
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == 201
    result = body["instructionResult"]
    assert result["instructionStatus"] == "PROCESSED"
    assert result["clientInstructionId"] == 1012983
    assert result["ibReferenceId"] > 0
    assert sandbox.balances()["U15667"]["USD"] == Decimal("1000123.45")


def test_scheduled_internal_cash_transfer_is_202_pending(env: Env) -> None:
    _, client = env
    response = client.post(
        "/internal-cash-transfers", ict(1, dateTimeToOccur="2030-01-02T09:00:00Z")
    )
    assert response.status_code == 202
    assert response.json()["instructionResult"]["instructionStatus"] == "PENDING"


def test_slow_rule_makes_large_internal_transfers_202(rsa_private_key: Any) -> None:
    from decimal import Decimal

    _, client = in_process(rsa_private_key, internal_cash_async_above=Decimal(1000))
    assert client.post("/internal-cash-transfers", ict(1, "999")).status_code == 201
    assert client.post("/internal-cash-transfers", ict(2, "1000.01")).status_code == 202


def test_bulk_shares_one_set_id_and_answers_202(env: Env) -> None:
    _, client = env
    response = client.post(
        "/internal-cash-transfers:bulk", _bulk([ict(1)["instruction"], ict(2)["instruction"]])
    )
    assert response.status_code == 202
    body = response.json()
    set_ids = {item["instructionSetId"] for item in body["instructionResults"]}
    assert set_ids == {body["instructionSetId"]}
    ids = [item["instructionResult"]["instructionId"] for item in body["instructionResults"]]
    assert ids[1] == ids[0] + 1
    assert all(
        item["instructionResult"]["instructionStatus"] == "PENDING"
        for item in body["instructionResults"]
    )


def test_bulk_with_a_business_reject_answers_207(env: Env) -> None:
    _, client = env
    bad = dict(ict(2)["instruction"], sourceAccountId="U345")
    response = client.post("/internal-cash-transfers:bulk", _bulk([ict(1)["instruction"], bad]))
    assert response.status_code == 207
    items = response.json()["instructionResults"]
    assert [item["status"] for item in items] == [202, 422]
    assert items[1]["instructionResult"]["error"]["errorCode"] == "CORRUPT_DATA_INVALID_ACCT"


def test_ids_are_monotonic_and_each_post_gets_its_own_set(env: Env) -> None:
    _, client = env
    first = client.post("/internal-cash-transfers", ict(1)).json()
    rejected = client.post("/internal-cash-transfers", ict(2, sourceAccountId="U345")).json()
    third = client.post("/internal-cash-transfers", ict(3)).json()
    ids = [body["instructionResult"]["instructionId"] for body in (first, rejected, third)]
    sets = [body["instructionSetId"] for body in (first, rejected, third)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert sets == sorted(sets) and len(set(sets)) == 3


def test_reused_client_instruction_id_is_422_and_status_get_is_208_with_the_first(
    env: Env,
) -> None:
    sandbox, client = env
    first = client.post("/internal-cash-transfers", ict(77)).json()
    again = client.post("/internal-cash-transfers", ict(77, "5.00"))
    assert again.status_code == 422
    assert again.json()["instructionResult"]["error"]["errorCode"] == "CORRUPT_DATA_DUBPLICATE_CP"
    assert again.json()["instructionSetId"] != first["instructionSetId"]
    status = client.get("/client-instructions/77")
    assert status.status_code == 208
    assert status.json()["status"] == 208
    assert status.json()["instructionSetId"] == first["instructionSetId"]
    assert (
        status.json()["instructionResult"]["instructionId"]
        == first["instructionResult"]["instructionId"]
    )
    assert sandbox.ledger_counts() == {77: 1}


def test_duplicate_posts_can_be_accepted_as_second_transactions(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, duplicate_post="accept")
    first = client.post("/internal-cash-transfers", ict(77)).json()
    assert client.post("/internal-cash-transfers", ict(77)).status_code == 201
    status = client.get("/client-instructions/77")
    assert status.status_code == 208
    assert status.json()["instructionSetId"] == first["instructionSetId"]
    assert sandbox.ledger_counts() == {77: 2}


def test_status_get_answers_200_and_unknown_ids_404(env: Env) -> None:
    _, client = env
    posted = client.post("/internal-cash-transfers", ict(5)).json()
    by_cid = client.get("/client-instructions/5")
    assert by_cid.status_code == 200
    iid = posted["instructionResult"]["instructionId"]
    by_id = client.get(f"/instructions/{iid}")
    assert by_id.status_code == 200
    assert by_id.json()["instructionResult"] == by_cid.json()["instructionResult"]
    missing = client.get("/client-instructions/999")
    assert missing.status_code == 404
    assert missing.json()["title"] == "Not found"
    assert client.get("/instructions/1").status_code == 404
    assert client.get("/instruction-sets/1").status_code == 404
    assert client.get("/client-instructions/abc").status_code == 400


def test_other_clients_cannot_see_each_others_instructions(env: Env, rsa_private_key: Any) -> None:
    sandbox, client = env
    posted = client.post("/internal-cash-transfers", ict(5)).json()
    sandbox.register_client("other", "other-key", public_pem(rsa_private_key))
    other = SandboxClient(client.http, rsa_private_key, client_id="other", key_id="other-key")
    assert other.get("/client-instructions/5").status_code == 404
    assert other.get(f"/instruction-sets/{posted['instructionSetId']}").status_code == 404


def test_instruction_set_lists_accepted_and_rejected_members(env: Env) -> None:
    _, client = env
    bad = dict(ict(2)["instruction"], sourceAccountId="U345")
    posted = client.post("/internal-cash-transfers:bulk", _bulk([ict(1)["instruction"], bad]))
    set_id = posted.json()["instructionSetId"]
    response = client.get(f"/instruction-sets/{set_id}")
    assert response.status_code == 200
    items = response.json()["instructionResults"]
    assert [item["status"] for item in items] == [202, 422]
    assert items[1]["title"] == "Business Error"


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
