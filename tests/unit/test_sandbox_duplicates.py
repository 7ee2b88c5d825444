"""The duplicate-POST policy: `reject` answers a re-POST of a used clientInstructionId 422
CORRUPT_DATA_DUBPLICATE_CP; `accept` registers and applies a second transaction, as an IBKR that
only shows reuse through 208 would (reference §8.4). Status GETs answer 208 with the FIRST
transaction either way. Switchable per sandbox, at run time and through the admin API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.sandbox.support import ict, in_process

SOURCE, TARGET = "U46377", "U15667"


def _usd(sandbox: Any, account: str) -> Decimal:
    return Decimal(sandbox.balances()[account]["USD"])


def test_accepted_re_post_moves_the_money_a_second_time(rsa_private_key: Any) -> None:
    """Guard: `Ledger._submit_one` rejects a reused id only under "reject". Make it reject
    under both policies (drop `and self.duplicate_post == "reject"`) and this fails: 422."""
    sandbox, client = in_process(rsa_private_key, duplicate_post="accept")
    source, target = _usd(sandbox, SOURCE), _usd(sandbox, TARGET)
    first = client.post("/internal-cash-transfers", ict(77, "25.00"))
    second = client.post("/internal-cash-transfers", ict(77, "25.00"))
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json()["instructionResult"]["instructionStatus"] == "PROCESSED"
    assert second.json()["instructionSetId"] != first.json()["instructionSetId"]
    assert _usd(sandbox, SOURCE) == source - Decimal("50.00")
    assert _usd(sandbox, TARGET) == target + Decimal("50.00")
    assert sandbox.ledger_counts() == {77: 2}


def test_status_gets_answer_208_with_the_first_transaction_under_accept(
    rsa_private_key: Any,
) -> None:
    _, client = in_process(rsa_private_key, duplicate_post="accept")
    first = client.post("/internal-cash-transfers", ict(77)).json()
    second = client.post("/internal-cash-transfers", ict(77)).json()
    first_id = first["instructionResult"]["instructionId"]
    second_id = second["instructionResult"]["instructionId"]
    assert first_id != second_id
    for path in (
        "/client-instructions/77",
        f"/instructions/{first_id}",
        f"/instructions/{second_id}",
    ):
        answer = client.get(path)
        assert answer.status_code == 208, path
        assert answer.json()["status"] == 208
        assert answer.json()["instructionSetId"] == first["instructionSetId"], path
        assert answer.json()["instructionResult"]["instructionId"] == first_id, path
    # Each transaction keeps its own instruction set.
    second_set = client.get(f"/instruction-sets/{second['instructionSetId']}").json()
    assert second_set["instructionResults"][0]["instructionResult"]["instructionId"] == second_id


def test_a_first_answer_is_200_until_the_id_is_reused(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key, duplicate_post="accept")
    client.post("/internal-cash-transfers", ict(5))
    assert client.get("/client-instructions/5").status_code == 200
    client.post("/internal-cash-transfers", ict(5))
    assert client.get("/client-instructions/5").status_code == 208


def test_policy_switches_at_run_time(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    assert sandbox.duplicate_post() == "reject"
    assert client.post("/internal-cash-transfers", ict(9)).status_code == 201
    assert client.post("/internal-cash-transfers", ict(9)).status_code == 422
    assert sandbox.set_duplicate_post("accept") == "accept"
    assert client.post("/internal-cash-transfers", ict(9)).status_code == 201
    assert sandbox.ledger_counts() == {9: 2}
    sandbox.set_duplicate_post("reject")
    assert client.post("/internal-cash-transfers", ict(9)).status_code == 422
    assert sandbox.ledger_counts() == {9: 2}
    with pytest.raises(ValueError, match="reject"):
        sandbox.set_duplicate_post("sometimes")


def test_admin_api_switches_the_policy(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    admin = client.http
    assert admin.get("/__admin/duplicate-post").json() == {"duplicatePost": "reject"}
    switched = admin.post("/__admin/duplicate-post", json={"duplicatePost": "accept"})
    assert switched.json() == {"duplicatePost": "accept"}
    client.post("/internal-cash-transfers", ict(3))
    assert client.post("/internal-cash-transfers", ict(3)).status_code == 201
    assert sandbox.ledger_counts() == {3: 2}
    refused = admin.post("/__admin/duplicate-post", json={"duplicatePost": "maybe"})
    assert refused.status_code == 400
    assert sandbox.duplicate_post() == "accept"


def test_accepted_re_post_still_meets_the_business_checks(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, duplicate_post="accept")
    balance = _usd(sandbox, TARGET)
    # U15667 holds 1,000,000 USD: the first transfer out of it empties it, the second bounces.
    body = ict(11, str(balance), sourceAccountId=TARGET, targetAccountId=SOURCE)
    assert client.post("/internal-cash-transfers", body).status_code == 201
    again = client.post("/internal-cash-transfers", body)
    assert again.status_code == 422
    assert again.json()["instructionResult"]["error"]["errorCode"] == "INSUFFICIENT_FUNDS"
    assert sandbox.ledger_counts() == {11: 1}
