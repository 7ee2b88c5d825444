"""Product and sandbox agree on what IBKR's reference describes beyond the 2.29 document (the
open-banking bank instructions, the v2 external asset transfers with their UNCERTAIN quantity
placement as a switch) and on nonDisclosedDetail's dates; and on every request the product
builds for any instruction type."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.builders import MINIMAL, v2
from tests.sandbox.support import in_process
from worker.config import Settings
from worker.ibkr.client import IbkrClient
from worker.ibkr.instructions import INSTRUCTION_MODELS
from worker.ibkr.requests import RequestValidationError, build_body, parse_request
from worker.ibkr.responses import Outcome

GW = "/gw/api/v1"


def _post_built(client: Any, raw: dict[str, Any], client_id: int) -> Any:
    parsed = parse_request(copy.deepcopy(raw))
    body = build_body(parsed, [client_id + n for n in range(len(parsed.members))])
    path = parsed.endpoint.path
    gateway = GW if path.startswith(GW) else "/gw/api/v2"
    return client.post(path.removeprefix(gateway), body, gateway=gateway)


@pytest.mark.parametrize("instruction_type", sorted(INSTRUCTION_MODELS))
def test_sandbox_takes_the_body_the_product_builds_for_every_type(
    rsa_private_key: Any, instruction_type: str
) -> None:
    """(Remove OPEN_BANKING_INSTRUCTION from the sandbox's bank-instructions types to see
    the sandbox refuse what the product sends.)"""
    _, client = in_process(rsa_private_key)
    raw = {"instructionType": instruction_type, "instruction": MINIMAL[instruction_type]}
    response = _post_built(client, raw, 9000)
    assert response.status_code not in (400, 404, 405), response.text


@pytest.mark.parametrize("instruction_type", ["FOP", "DWAC", "COMPLEX_ASSET_TRANSFER"])
def test_v2_external_asset_transfers_are_accepted_and_processed(
    rsa_private_key: Any, instruction_type: str
) -> None:
    sandbox, client = in_process(rsa_private_key)
    raw = v2(instruction_type)
    if instruction_type == "COMPLEX_ASSET_TRANSFER":
        raw["instruction"]["contraBrokerInfo"]["brokerName"] = "JP MORGAN"
    response = _post_built(client, raw, 100)
    assert response.status_code == 202, response.text
    assert response.json()["instructionResult"]["instructionStatus"] == "PENDING"
    sandbox.advance(sandbox.config.timings.external_asset_s + 1)
    client.renew()  # a day later: past the token's lifetime
    assert client.status(100)["instructionStatus"] == "PROCESSED"


def test_v2_bulk_shares_one_set(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key)
    items = [dict(v2()["instruction"], clientInstructionId=n) for n in (1, 2)]
    response = _post_built(client, {"instructionType": "FOP", "instructions": items}, 1)
    assert response.status_code == 202, response.text
    results = response.json()["instructionResults"]
    assert {item["instructionSetId"] for item in results} == {response.json()["instructionSetId"]}


QUANTITY_ON_POSITIONS = v2()
QUANTITY_ON_INSTRUCTION = v2(positions=[{"conid": 1}, {"conid": 2}], quantity=7)


@pytest.mark.parametrize(
    ("placement", "accepted", "refused"),
    [
        ("position", QUANTITY_ON_POSITIONS, QUANTITY_ON_INSTRUCTION),
        ("instruction", QUANTITY_ON_INSTRUCTION, QUANTITY_ON_POSITIONS),
    ],
)
def test_v2_quantity_placement_is_a_sandbox_switch(
    rsa_private_key: Any, placement: str, accepted: Any, refused: Any
) -> None:
    """Where a v2 position's quantity goes is UNCERTAIN: the product sends what the request
    says, and the sandbox accepts one placement or the other, as its switch says."""
    _, client = in_process(rsa_private_key, v2_position_quantity=placement)
    assert _post_built(client, accepted, 10).status_code == 202
    answer = _post_built(client, refused, 20)
    assert answer.status_code == 400
    assert {a["field"] for a in answer.json()["invalidArguments"]} == {"quantity"}


def test_open_banking_instruction_answers_a_link_then_is_processed(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    raw = {
        "instructionType": "OPEN_BANKING_INSTRUCTION",
        "instruction": MINIMAL["OPEN_BANKING_INSTRUCTION"],
    }
    response = _post_built(client, raw, 300)
    assert response.status_code == 202, response.text
    result = response.json()["instructionResult"]
    assert result["instructionStatus"] == "PENDING"
    assert result["details"]["providerResponse"]["hostedlinkUrl"]
    sandbox.advance(sandbox.config.timings.bank_instruction_s + 1)
    assert client.status(300)["instructionStatus"] == "PROCESSED"


def test_withdrawal_instruction_is_accepted_and_processed(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    raw = {
        "instructionType": "WITHDRAWAL_INSTRUCTION",
        "instruction": MINIMAL["WITHDRAWAL_INSTRUCTION"],
    }
    assert _post_built(client, raw, 400).status_code == 202
    sandbox.advance(sandbox.config.timings.bank_instruction_s + 1)
    assert client.status(400)["instructionStatus"] == "PROCESSED"


def test_the_sandbox_refuses_open_banking_instructions_in_bulk_as_the_product_does(
    rsa_private_key: Any,
) -> None:
    raw = {
        "instructionType": "OPEN_BANKING_INSTRUCTION",
        "instructions": [dict(MINIMAL["OPEN_BANKING_INSTRUCTION"], clientInstructionId=1)],
    }
    with pytest.raises(RequestValidationError):
        parse_request(raw)
    _, client = in_process(rsa_private_key)
    assert client.post("/bank-instructions:bulk", raw).status_code == 400


@pytest.mark.parametrize(
    ("trade_date", "valid"),
    [
        ("2018-03-20T09:12:13Z", True),  # what every IBKR example sends
        ("2018-03-20", True),  # what the schema's format says
        ("2018-03-20T09:12:13+01:00", True),
        ("2018-03-20T09:12:13", False),  # no offset
        ("20/03/2018", False),
        ("2018-02-30", False),
    ],
)
def test_product_and_sandbox_agree_on_non_disclosed_dates(
    rsa_private_key: Any, trade_date: str, valid: bool
) -> None:
    """(Make the sandbox demand plain dates in nonDisclosedDetail again to see IBKR's own
    complex-asset-transfer examples, accepted by the product, answered 400.)"""
    raw = {
        "instructionType": "COMPLEX_ASSET_TRANSFER",
        "instruction": dict(
            MINIMAL["COMPLEX_ASSET_TRANSFER"],
            nonDisclosedDetail={"tradeDate": trade_date, "settleDate": trade_date},
        ),
    }
    try:
        parse_request(copy.deepcopy(raw))
    except RequestValidationError:
        product_accepts = False
    else:
        product_accepts = True
    assert product_accepts is valid
    _, client = in_process(rsa_private_key)
    body = copy.deepcopy(raw)
    body["instruction"]["clientInstructionId"] = 77
    assert (client.post("/external-asset-transfers", body).status_code != 400) is valid


def test_the_product_client_sends_v2_requests_to_the_v2_endpoint(rsa_private_key: Any) -> None:
    """The client's endpoint table and the sandbox's routes meet: a v2 FOP built by the product
    and POSTed by IbkrClient is registered by the sandbox under /gw/api/v2."""
    sandbox, _ = in_process(rsa_private_key)
    settings = Settings(
        ibkr_base_url="http://sandbox.test", ibkr_client_id="acme", ibkr_key_id="main"
    )
    client = IbkrClient(settings, private_key=rsa_private_key, transport=sandbox.transport())
    parsed = parse_request(v2())
    result = client.post_instruction(parsed.endpoint, build_body(parsed, [-1988905739]))
    assert result.outcome is Outcome.ACCEPTED, result
    assert result.exchange.path == "/gw/api/v2/external-asset-transfers"
    found = client.get_client_instruction(-1988905739)
    assert found.outcome is Outcome.ACCEPTED
    assert found.results[0].client_instruction_id == -1988905739
    assert found.results[0].instruction_type == "FOP"
    assert "POST /gw/api/v2/external-asset-transfers" in str(sandbox.stats())
