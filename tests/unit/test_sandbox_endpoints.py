"""Sandbox answers per endpoint: validation, 201 vs 202, ids, duplicates, status reads and
instruction sets (reference §10 items 4-7); business rules are in test_sandbox_business_rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.sandbox.support import SandboxClient, ict, in_process, public_pem

Env = tuple[Any, SandboxClient]


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
