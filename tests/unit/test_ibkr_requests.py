"""Request validation per instructionType, and every body we build checked against IBKR's schema."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from jsonschema import validators

from worker import jsontext
from worker.ibkr.endpoints import ENDPOINTS, endpoint_for
from worker.ibkr.requests import (
    INSTRUCTION_MODELS,
    ParsedRequest,
    RequestValidationError,
    build_body,
    member_account_id,
    member_amount,
    member_currency,
    member_target_account_id,
    parse_request,
)
from worker.ibkr.schemas import REQUEST_COMPONENTS, openapi_document

SPEC = openapi_document("2.29")
INSTRUMENT_CONID = {"conid": 12123, "currency": "USD"}
INSTRUMENT_DESCRIPTION = {
    "currency": "USD",
    "tradingInstrumentDescription": {
        "assetType": "STK",
        "securityId": "459200101",
        "securityIdType": "ISIN",
    },
}
CONTRA_BROKER = {
    "accountType": "ORG",
    "brokerAccountId": "as3456567678578N",
    "brokerName": "JP MORGAN",
    "contactEmail": "a@gmail.com",
    "contactPhone": "2039126155",
    "country": "United States",
    "depositoryId": "1234",
}

# One minimal valid instruction per supported type (clientInstructionId left for the worker).
MINIMAL: dict[str, dict[str, Any]] = {
    "INTERNAL_CASH_TRANSFER": {
        "sourceAccountId": "U46377",
        "targetAccountId": "U15667",
        "amount": Decimal("123.45"),
        "currency": "USD",
    },
    "INTERNAL_POSITION_TRANSFER": {
        "sourceAccountId": "U399192",
        "targetAccountId": "U87440",
        "transferQuantity": 6,
        "tradingInstrument": INSTRUMENT_CONID,
    },
    "DEPOSIT": {
        "accountId": "U46377",
        "amount": 100,
        "currency": "USD",
        "bankInstructionMethod": "WIRE",
    },
    "WITHDRAWAL": {
        "accountId": "U46377",
        "amount": Decimal("123.45"),
        "currency": "GBP",
        "bankInstructionMethod": "WIRE",
        "bankInstructionName": "Test Withdrawal",
    },
    "QUERY_WITHDRAWABLE_FUNDS": {"accountId": "U87440", "currency": "USD"},
    "QUERY_IRA_CONTRIBUTIONS": {"accountId": "U68903", "year": "2025"},
    "QUERY_WITHDRAWABLE_CASH_EQUITY": {"accountId": "U87440", "currency": "USD"},
    "FOP": {
        "accountId": "U46377",
        "direction": "IN",
        "contraBrokerAccountId": "12345678A",
        "contraBrokerDtcCode": "534",
        "quantity": 1000,
        "tradingInstrument": INSTRUMENT_CONID,
    },
    "DWAC": {
        "accountId": "U1001095",
        "direction": "IN",
        "contraBrokerAccountId": "12345678A",
        "contraBrokerTaxId": "123456789",
        "quantity": 1000,
        "tradingInstrument": INSTRUMENT_DESCRIPTION,
    },
    "COMPLEX_ASSET_TRANSFER": {
        "accountId": "U399192",
        "direction": "OUT",
        "quantity": 10,
        "tradingInstrument": INSTRUMENT_CONID,
        "contraBrokerInfo": CONTRA_BROKER,
    },
    "EXTERNAL_POSITION_TRANSFER": {
        "accountId": "U1225448",
        "type": "FULL",
        "subType": "ACATS",
        "brokerId": "0226",
        "brokerName": "Wall Street Financial Group",
        "accountAtBroker": "SOL12345",
        "signature": "sample signature",
    },
    "ACH_INSTRUCTION": {
        "accountId": "U223454",
        "bankInstructionCode": "USACH",
        "achType": "DEBIT_CREDIT",
        "bankInstructionName": "TestInstr",
        "currency": "USD",
        "clientAccountInfo": {
            "bankRoutingNumber": "202012983",
            "bankAccountNumber": "101267576983",
            "bankName": "JPM Chase",
            "bankAccountTypeCode": 1,
        },
    },
    "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION": {
        "accountId": "U117717",
        "bankInstructionCode": "USACH",
        "bankInstructionName": "ACH-Tst1",
        "pendingInstructionId": 43086786,
        "creditAmount1": Decimal("0.32"),
        "creditAmount2": Decimal("0.46"),
    },
    "DELETE_BANK_INSTRUCTION": {
        "accountId": "U46377",
        "bankInstructionName": "Test Delete",
        "bankInstructionMethod": "WIRE",
        "currency": "USD",
    },
    "PREDEFINED_DESTINATION_INSTRUCTION": {
        "accountId": "U399192",
        "bankInstructionName": "Test-ACH-Instr",
        "bankInstructionMethod": "ACH",
        "currency": "USD",
        "financialInstitution": {
            "name": "SBI Bank",
            "identifier": "SBIN001000",
            "identifierType": "IFSC",
            "clientAccountId": "132456789",
        },
    },
    "EDDA_INSTRUCTION": {
        "accountId": "U8072517",
        "bankInstructionName": "Test Instruction",
        "currency": "CNH",
        "bankBranchCode": "003",
        "bankAccountNumber": "132456",
        "bankClearingCode": "003",
        "debtorIdentificationDocumentType": "hkId",
    },
    "OPEN_BANKING_INSTRUCTION": {
        "accountId": "U46377",
        "currency": "GBP",
        "serviceProvider": "PLAID",
        "plaidOptions": {"linkDisplayName": "WonderWallet", "isMobileApp": False},
    },
    "WITHDRAWAL_INSTRUCTION": {
        "accountId": "U46377",
        "currency": "GBP",
        "sourceDepositInstruction": {"type": "OPEN_BANKING", "name": "My bank"},
    },
    "QUERY_BANK_INSTRUCTION": {"accountId": "U46377", "bankInstructionMethod": "ACH"},
    "QUERY_RECURRING_INSTRUCTIONS": {"accountId": "U399192"},
    "QUERY_RECENT_RECURRING_EVENTS": {"ibReferenceId": 206603050, "numberOfTransactions": 100},
    "CANCEL_INSTRUCTION": {"instructionId": 43085477, "reason": "Testing"},
    "QUERY_RECENT_INSTRUCTIONS": {
        "accountId": "U139838",
        "transactionHistory": {"daysToGoBack": 3, "transactionType": "ACH_INSTRUCTION"},
    },
}


def single(instruction_type: str, **changes: Any) -> dict[str, Any]:
    instruction = copy.deepcopy(MINIMAL[instruction_type])
    for key, value in changes.items():
        if value is _DROP:
            instruction.pop(key, None)
        else:
            instruction[key] = value
    return {"instructionType": instruction_type, "instruction": instruction}


_DROP = object()


def refused(raw: object) -> RequestValidationError:
    with pytest.raises(RequestValidationError) as caught:
        parse_request(raw)
    return caught.value


# --- schema validation against IBKR's 2.29 OpenAPI document --------------------------------


def _multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Any:
    # jsonschema divides floats (100.3456789 / 1e-9 is not whole in binary); use decimals.
    if not validator.is_type(instance, "number"):
        return
    quotient = Decimal(str(instance)) / Decimal(str(divisor))
    if quotient != quotient.to_integral_value():
        yield jsonschema.ValidationError(f"{instance} is not a multiple of {divisor}")


ExactValidator = validators.extend(jsonschema.Draft7Validator, {"multipleOf": _multiple_of})


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"].rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def spec_request_schema(instruction_type: str, *, bulk: bool) -> dict[str, Any]:
    """The endpoint's request schema from the 2.29 document (the `application/json` body the
    JWS carries), narrowed to the instruction schema of `instruction_type`."""
    endpoint = endpoint_for(instruction_type, bulk=bulk)
    operation = SPEC["paths"][endpoint.path][endpoint.method.lower()]
    assert operation["x-ib-gateway-security-policy"] == "SIGNED_JWT"
    assert endpoint.scope in operation["x-ib-gateway-allowed-scopes"]
    content = operation["requestBody"]["content"]
    body_schema = copy.deepcopy(
        (content.get("application/json") or content.get("text/plain"))["schema"]
    )
    assert instruction_type in body_schema["properties"]["instructionType"]["enum"]
    component = REQUEST_COMPONENTS[instruction_type]
    item_ref = {"$ref": f"#/components/schemas/{component}"}
    if bulk:
        assert body_schema["properties"]["instructions"]["type"] == "array"
        body_schema["properties"]["instructions"]["items"] = item_ref
        body_schema["properties"]["instructions"]["minItems"] = 1
    else:
        # The documented envelope offers every type of the endpoint under oneOf; check ours is
        # among them, then validate against that one schema.
        assert component in _refs(body_schema["properties"]["instruction"])
        body_schema["properties"]["instruction"] = item_ref
    body_schema["additionalProperties"] = False
    body_schema["components"] = SPEC["components"]
    return body_schema


def assert_matches_spec(body: dict[str, Any], instruction_type: str, *, bulk: bool) -> None:
    wire = jsontext.loads(jsontext.dumps(body))
    schema = spec_request_schema(instruction_type, bulk=bulk)
    errors = sorted(ExactValidator(schema).iter_errors(wire), key=str)
    assert not errors, [f"{list(error.absolute_path)}: {error.message}" for error in errors]


@pytest.mark.parametrize("instruction_type", sorted(INSTRUCTION_MODELS))
def test_every_supported_type_builds_a_body_that_matches_ibkr_schema(
    instruction_type: str,
) -> None:
    parsed = parse_request(single(instruction_type))
    body = build_body(parsed, [1_000_000_001])
    assert body["instruction"]["clientInstructionId"] == 1_000_000_001
    if instruction_type not in REQUEST_COMPONENTS:
        # Newer than the 2.29 document ([REF] only): make sure 2.29 really lacks it.
        endpoint = parsed.endpoint
        enum = SPEC["paths"][endpoint.path]["post"]["requestBody"]["content"]
        assert all(
            instruction_type not in c["schema"]["properties"]["instructionType"]["enum"]
            for c in enum.values()
        )
        return
    assert_matches_spec(body, instruction_type, bulk=False)


@pytest.mark.parametrize(
    "instruction_type", sorted(t for t, pair in ENDPOINTS.items() if pair.bulk is not None)
)
def test_every_bulk_type_builds_a_bulk_body_that_matches_ibkr_schema(
    instruction_type: str,
) -> None:
    raw = {
        "instructionType": instruction_type,
        "instructions": [copy.deepcopy(MINIMAL[instruction_type]) for _ in range(3)],
    }
    parsed = parse_request(raw)
    body = build_body(parsed, [11, 12, 13])
    assert [item["clientInstructionId"] for item in body["instructions"]] == [11, 12, 13]
    assert_matches_spec(body, instruction_type, bulk=True)


def test_bulk_forms_match_the_bulk_operations_of_the_spec() -> None:
    spec_bulk = {
        instruction_type
        for path, operations in SPEC["paths"].items()
        if path.endswith(":bulk")
        for content in operations["post"]["requestBody"]["content"].values()
        for instruction_type in content["schema"]["properties"]["instructionType"]["enum"]
    }
    ours = {t for t, pair in ENDPOINTS.items() if pair.bulk is not None}
    assert ours == spec_bulk


def test_contract_example_body_is_kept_exactly() -> None:
    raw = jsontext.loads(
        '{"instructionType": "INTERNAL_CASH_TRANSFER", "instruction": {"clientInstructionId": '
        '1012983, "sourceAccountId": "U46377", "targetAccountId": "U15667", "amount": 123.45, '
        '"currency": "USD"}}'
    )
    parsed = parse_request(raw)
    body = build_body(parsed, [1012983])
    assert jsontext.dumps(body) == (
        '{"instructionType":"INTERNAL_CASH_TRANSFER","instruction":{"clientInstructionId":1012983,'
        '"sourceAccountId":"U46377","targetAccountId":"U15667","amount":123.45,"currency":"USD"}}'
    )


# --- envelope rules ---------------------------------------------------------------------------


def test_request_that_is_not_an_object_is_refused() -> None:
    assert refused([1, 2]).field == "request"


def test_unknown_instruction_type_is_refused_naming_instruction_type() -> None:
    error = refused({"instructionType": "TELEPORT_CASH", "instruction": {}})
    assert error.field == "instructionType"
    assert "TELEPORT_CASH" in str(error)


def test_lower_case_instruction_type_is_refused_with_a_hint() -> None:
    error = refused({"instructionType": "fop", "instruction": {}})
    assert error.field == "instructionType"
    assert "'FOP'" in str(error)


def test_missing_instruction_type_is_refused() -> None:
    assert refused({"instruction": {}}).field == "instructionType"


def test_extra_top_level_key_is_refused() -> None:
    raw = single("INTERNAL_CASH_TRANSFER")
    raw["correlation_id"] = "x"
    assert refused(raw).field == "correlation_id"


def test_single_and_bulk_together_are_refused() -> None:
    raw = single("INTERNAL_CASH_TRANSFER")
    raw["instructions"] = [raw["instruction"]]
    assert refused(raw).field == "instructions"


def test_neither_instruction_nor_instructions_is_refused() -> None:
    assert refused({"instructionType": "DEPOSIT"}).field == "instruction"


def test_empty_bulk_is_refused() -> None:
    error = refused({"instructionType": "DEPOSIT", "instructions": []})
    assert error.field == "instructions"


def test_bulk_that_is_not_a_list_is_refused() -> None:
    assert refused({"instructionType": "DEPOSIT", "instructions": {}}).field == "instructions"


@pytest.mark.parametrize(
    "instruction_type",
    [
        "QUERY_WITHDRAWABLE_FUNDS",
        "QUERY_IRA_CONTRIBUTIONS",
        "QUERY_WITHDRAWABLE_CASH_EQUITY",
        "QUERY_BANK_INSTRUCTION",
        "QUERY_RECURRING_INSTRUCTIONS",
        "QUERY_RECENT_RECURRING_EVENTS",
        "QUERY_RECENT_INSTRUCTIONS",
    ],
)
def test_query_types_have_no_bulk_form(instruction_type: str) -> None:
    raw = {"instructionType": instruction_type, "instructions": [MINIMAL[instruction_type]]}
    error = refused(raw)
    assert error.field == "instructionType"
    assert "no bulk endpoint" in str(error)


def test_bulk_member_error_names_its_index() -> None:
    good = copy.deepcopy(MINIMAL["INTERNAL_CASH_TRANSFER"])
    bad = copy.deepcopy(good)
    del bad["sourceAccountId"]
    error = refused(
        {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": [good, good, bad]}
    )
    assert error.field == "instructions[2].sourceAccountId"
    assert str(error) == "instructions[2].sourceAccountId is required but missing."


def test_bulk_member_that_is_not_an_object_is_refused() -> None:
    error = refused({"instructionType": "DEPOSIT", "instructions": [MINIMAL["DEPOSIT"], 5]})
    assert error.field == "instructions[1]"


def test_repeated_client_instruction_id_within_a_bulk_is_refused() -> None:
    member = dict(MINIMAL["DEPOSIT"], clientInstructionId=7)
    error = refused({"instructionType": "DEPOSIT", "instructions": [member, member]})
    assert error.field == "instructions[1].clientInstructionId"


@pytest.mark.parametrize(
    ("where", "raw"),
    [
        ("instruction.clientNote", single("INTERNAL_CASH_TRANSFER", clientNote="caf\u00e9")),
        (
            "instruction.sourceAccountId",
            single("INTERNAL_CASH_TRANSFER", sourceAccountId="U\u00e9"),
        ),
        ("instruction.n\u00e9", single("INTERNAL_CASH_TRANSFER", **{"n\u00e9": "x"})),
        (
            "instruction.contraBrokerInfo.contactName",
            single(
                "COMPLEX_ASSET_TRANSFER",
                contraBrokerInfo=dict(CONTRA_BROKER, contactName="J\u00f6"),
            ),
        ),
    ],
)
def test_non_ascii_text_anywhere_is_refused(where: str, raw: dict[str, Any]) -> None:
    error = refused(raw)
    assert error.field == where
    assert "non-ASCII" in str(error)


# --- clientInstructionId ----------------------------------------------------------------------


def test_client_instruction_id_is_optional_at_parse_time() -> None:
    parsed = parse_request(single("DEPOSIT"))
    assert "clientInstructionId" not in parsed.members[0]


def test_numeric_string_client_instruction_id_becomes_an_int() -> None:
    parsed = parse_request(single("DEPOSIT", clientInstructionId="1012983"))
    assert parsed.members[0]["clientInstructionId"] == 1012983


@pytest.mark.parametrize(
    "value", [0, "0", 2**53, -(2**53), 10**20, "12a", "1.5", 1.5, True, "", [1], float("inf")]
)
def test_bad_client_instruction_id_is_refused(value: Any) -> None:
    error = refused(single("DEPOSIT", clientInstructionId=value))
    assert error.field == "instruction.clientInstructionId"


@pytest.mark.parametrize(
    ("value", "kept"),
    [(-1988905739, -1988905739), ("-5", -5), (1012983.0, 1012983), (Decimal("7.0"), 7)],
)
def test_signed_and_whole_number_client_instruction_ids_are_accepted(value: Any, kept: int) -> None:
    """IBKR's schemas type the id as a signed number; JSON producers write whole floats."""
    parsed = parse_request(single("DEPOSIT", clientInstructionId=value))
    assert parsed.members[0]["clientInstructionId"] == kept
    assert type(parsed.members[0]["clientInstructionId"]) is int


def test_client_instruction_id_0_is_refused_as_ibkr_s_none() -> None:
    error = refused(single("DEPOSIT", clientInstructionId=0))
    assert "outside the API" in error.message


def test_largest_exact_client_instruction_id_is_accepted() -> None:
    parsed = parse_request(single("DEPOSIT", clientInstructionId=2**53 - 1))
    assert parsed.members[0]["clientInstructionId"] == 2**53 - 1


def test_null_optional_field_is_dropped_not_sent() -> None:
    parsed = parse_request(single("INTERNAL_CASH_TRANSFER", clientNote=None))
    assert "clientNote" not in parsed.members[0]


# --- amounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, "-0.01", "abc", True, float("nan"), "Infinity", None])
def test_amount_must_be_a_positive_number(amount: Any) -> None:
    error = refused(single("INTERNAL_CASH_TRANSFER", amount=amount))
    assert error.field == "instruction.amount"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (Decimal("123.45"), Decimal("123.45")),
        (123.45, Decimal("123.45")),
        ("123.45", Decimal("123.45")),
        (100, Decimal("100")),
        (0.1, Decimal("0.1")),
    ],
)
def test_amount_becomes_an_exact_decimal(given: Any, kept: Decimal) -> None:
    parsed = parse_request(single("INTERNAL_CASH_TRANSFER", amount=given))
    amount = parsed.members[0]["amount"]
    assert isinstance(amount, Decimal)
    assert amount == kept
    assert str(amount) == str(kept)


def test_missing_amount_is_named() -> None:
    error = refused(single("WITHDRAWAL", amount=_DROP))
    assert error.field == "instruction.amount"
    assert str(error) == "instruction.amount is required but missing."


# --- per-type field rules ---------------------------------------------------------------------

RULES: list[tuple[str, dict[str, Any], str]] = [
    # (instructionType, changes, field named in the error)
    ("INTERNAL_CASH_TRANSFER", {"sourceAccountId": ""}, "instruction.sourceAccountId"),
    ("INTERNAL_CASH_TRANSFER", {"targetAccountId": "U" * 33}, "instruction.targetAccountId"),
    ("INTERNAL_CASH_TRANSFER", {"targetAccountId": _DROP}, "instruction.targetAccountId"),
    ("INTERNAL_CASH_TRANSFER", {"currency": "usd"}, "instruction.currency"),
    ("INTERNAL_CASH_TRANSFER", {"currency": "USDX"}, "instruction.currency"),
    ("INTERNAL_CASH_TRANSFER", {"currency": 840}, "instruction.currency"),
    ("INTERNAL_CASH_TRANSFER", {"clientNote": "x" * 65}, "instruction.clientNote"),
    ("INTERNAL_CASH_TRANSFER", {"clientNote": ""}, "instruction.clientNote"),
    ("INTERNAL_CASH_TRANSFER", {"dateTimeToOccur": "2026-11-24"}, "instruction.dateTimeToOccur"),
    (
        "INTERNAL_CASH_TRANSFER",
        {"dateTimeToOccur": "2026-11-24T10:00:00"},
        "instruction.dateTimeToOccur",
    ),
    ("INTERNAL_CASH_TRANSFER", {"amout": 5}, "instruction.amout"),
    ("INTERNAL_POSITION_TRANSFER", {"transferQuantity": 0}, "instruction.transferQuantity"),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradingInstrument": {"currency": "USD"}},
        "instruction.tradingInstrument.conid/tradingInstrumentDescription",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradingInstrument": dict(INSTRUMENT_DESCRIPTION, conid=5)},
        "instruction.tradingInstrument.conid/tradingInstrumentDescription",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradingInstrument": {"conid": 5}},
        "instruction.tradingInstrument.currency",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {
            "tradingInstrument": {
                "currency": "USD",
                "tradingInstrumentDescription": {
                    "securityIdType": "TICKER",
                    "securityId": "X",
                    "assetType": "STK",
                },
            }
        },
        "instruction.tradingInstrument.tradingInstrumentDescription.securityIdType",
    ),
    ("INTERNAL_POSITION_TRANSFER", {"tradeDate": "2025-02-17"}, "instruction.settleDate"),
    ("INTERNAL_POSITION_TRANSFER", {"transferPrice": 100}, "instruction.tradeDate"),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradeDate": "2025-02-17", "settleDate": "2025-02-31"},
        "instruction.settleDate",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradeDate": "2025-02-17", "settleDate": "2025-02-25", "transferPrice": "1.0000000001"},
        "instruction.transferPrice",
    ),
    ("DEPOSIT", {"bankInstructionMethod": "CHEQUE"}, "instruction.bankInstructionMethod"),
    ("DEPOSIT", {"identifier": "x" * 65}, "instruction.identifier"),
    ("DEPOSIT", {"bankInstructionName": "x" * 151}, "instruction.bankInstructionName"),
    (
        "DEPOSIT",
        {"iraDepositDetail": {"fromIraType": "ROTH", "iraTaxYearType": "CURRENT"}},
        "instruction.iraDepositDetail.iraContributionType",
    ),
    (
        "DEPOSIT",
        {
            "recurringInstructionDetail": {
                "instructionName": "x",
                "frequency": "WEEKLY",
                "startDate": "2025-01-01",
            }
        },
        "instruction.recurringInstructionDetail.frequency",
    ),
    (
        "DEPOSIT",
        {
            "recurringInstructionDetail": {
                "instructionName": "x",
                "frequency": "MONTHLY",
                "startDate": "01/02/2025",
            }
        },
        "instruction.recurringInstructionDetail.startDate",
    ),
    (
        "DEPOSIT",
        {"openBanking": {"serviceProvider": "TINK"}},
        "instruction.openBanking.serviceProvider",
    ),
    ("DEPOSIT", {"accountId": 46377}, "instruction.accountId"),
    ("WITHDRAWAL", {"bankInstructionName": _DROP}, "instruction.bankInstructionName"),
    ("WITHDRAWAL", {"bankInstructionMethod": "eDDA"}, "instruction.bankInstructionMethod"),
    (
        "WITHDRAWAL",
        {
            "iraWithdrawalDetail": {
                "fedIncomeTaxPercentage": 101,
                "stateIncomeTaxPercentage": 1,
                "stateCd": "NY",
                "iraWithholdType": "NORMAL",
            }
        },
        "instruction.iraWithdrawalDetail.fedIncomeTaxPercentage",
    ),
    (
        "WITHDRAWAL",
        {
            "iraWithdrawalDetail": {
                "fedIncomeTaxPercentage": 1,
                "stateIncomeTaxPercentage": 1,
                "stateCd": "NYC",
                "iraWithholdType": "NORMAL",
            }
        },
        "instruction.iraWithdrawalDetail.stateCd",
    ),
    ("QUERY_WITHDRAWABLE_FUNDS", {"bankAccountNumber": "123"}, "instruction.bankRoutingNumber"),
    (
        "QUERY_WITHDRAWABLE_FUNDS",
        {"bankAccountNumber": "1", "bankRoutingNumber": "2", "bankInstructionName": "n"},
        "instruction.bankInstructionName",
    ),
    ("QUERY_IRA_CONTRIBUTIONS", {"year": "25"}, "instruction.year"),
    ("QUERY_IRA_CONTRIBUTIONS", {"year": 2025}, "instruction.year"),
    ("QUERY_WITHDRAWABLE_CASH_EQUITY", {"currency": _DROP}, "instruction.currency"),
    ("FOP", {"direction": "SIDEWAYS"}, "instruction.direction"),
    ("FOP", {"contraBrokerDtcCode": "x" * 21}, "instruction.contraBrokerDtcCode"),
    ("FOP", {"quantity": -3}, "instruction.quantity"),
    ("DWAC", {"direction": "OUT"}, "instruction.direction"),
    ("DWAC", {"contraBrokerTaxId": "x" * 26}, "instruction.contraBrokerTaxId"),
    ("DWAC", {"accountTitle": "x" * 141}, "instruction.accountTitle"),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"contraBrokerInfo": dict(CONTRA_BROKER, contactPhone="1" * 17)},
        "instruction.contraBrokerInfo.contactPhone",
    ),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"contraBrokerInfo": {k: v for k, v in CONTRA_BROKER.items() if k != "depositoryId"}},
        "instruction.contraBrokerInfo.depositoryId",
    ),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"contraBrokerInfo": dict(CONTRA_BROKER, brokerName="IB")},
        "instruction.contraBrokerInfo.accountTitle",
    ),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"nonDisclosedDetail": {"tradeDate": "2025-01-01"}},
        "instruction.nonDisclosedDetail.settleDate",
    ),
    ("EXTERNAL_POSITION_TRANSFER", {"type": "PARTIAL"}, "instruction.type"),
    ("EXTERNAL_POSITION_TRANSFER", {"subType": "DTC"}, "instruction.subType"),
    ("EXTERNAL_POSITION_TRANSFER", {"accountAtBroker": "x" * 35}, "instruction.accountAtBroker"),
    ("EXTERNAL_POSITION_TRANSFER", {"sourceIRAType": "XX"}, "instruction.sourceIRAType"),
    ("EXTERNAL_POSITION_TRANSFER", {"signature": _DROP}, "instruction.signature"),
    ("ACH_INSTRUCTION", {"bankInstructionCode": "ACHUS"}, "instruction.bankInstructionCode"),
    ("ACH_INSTRUCTION", {"achType": "PUSH"}, "instruction.achType"),
    ("ACH_INSTRUCTION", {"bankInstructionName": "x" * 101}, "instruction.bankInstructionName"),
    (
        "ACH_INSTRUCTION",
        {
            "clientAccountInfo": {
                "bankRoutingNumber": "202012983",
                "bankAccountNumber": "101267576983",
                "bankName": "JPM Chase",
                "bankAccountTypeCode": 3,
            }
        },
        "instruction.clientAccountInfo.bankAccountTypeCode",
    ),
    (
        "ACH_INSTRUCTION",
        {
            "clientAccountInfo": {
                "bankRoutingNumber": "202012983",
                "bankName": "JPM Chase",
                "bankAccountTypeCode": 1,
            }
        },
        "instruction.clientAccountInfo.bankAccountNumber",
    ),
    (
        "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
        {"pendingInstructionId": 0},
        "instruction.pendingInstructionId",
    ),
    (
        "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
        {"creditAmount2": 0},
        "instruction.creditAmount2",
    ),
    (
        "DELETE_BANK_INSTRUCTION",
        {"bankInstructionMethod": "SEPA"},
        "instruction.bankInstructionMethod",
    ),
    ("PREDEFINED_DESTINATION_INSTRUCTION", {"accountId": "U" * 11}, "instruction.accountId"),
    (
        "PREDEFINED_DESTINATION_INSTRUCTION",
        {
            "financialInstitution": {
                "name": "SBI",
                "identifier": "SBIN001000",
                "identifierType": "IBAN",
                "clientAccountId": "1",
            }
        },
        "instruction.financialInstitution.identifierType",
    ),
    ("EDDA_INSTRUCTION", {"bankBranchCode": "0003"}, "instruction.bankBranchCode"),
    (
        "EDDA_INSTRUCTION",
        {"debtorIdentificationDocumentType": "licence"},
        "instruction.debtorIdentificationDocumentType",
    ),
    ("OPEN_BANKING_INSTRUCTION", {"serviceProvider": "TINK"}, "instruction.serviceProvider"),
    (
        "WITHDRAWAL_INSTRUCTION",
        {"sourceDepositInstruction": {"type": "ACH"}},
        "instruction.sourceDepositInstruction.type",
    ),
    (
        "QUERY_BANK_INSTRUCTION",
        {"bankInstructionMethod": "CHEQUE"},
        "instruction.bankInstructionMethod",
    ),
    ("QUERY_RECURRING_INSTRUCTIONS", {"accountId": _DROP}, "instruction.accountId"),
    ("QUERY_RECENT_RECURRING_EVENTS", {"ibReferenceId": -1}, "instruction.ibReferenceId"),
    (
        "QUERY_RECENT_RECURRING_EVENTS",
        {"numberOfTransactions": 0},
        "instruction.numberOfTransactions",
    ),
    ("CANCEL_INSTRUCTION", {"reason": ""}, "instruction.reason"),
    ("CANCEL_INSTRUCTION", {"reason": "x" * 257}, "instruction.reason"),
    ("CANCEL_INSTRUCTION", {"instructionId": 0}, "instruction.instructionId"),
    (
        "QUERY_RECENT_INSTRUCTIONS",
        {"transactionHistory": {"daysToGoBack": 0}},
        "instruction.transactionHistory.daysToGoBack",
    ),
    (
        "QUERY_RECENT_INSTRUCTIONS",
        {"transactionHistory": {"daysToGoBack": 3, "transactionType": "EVERYTHING"}},
        "instruction.transactionHistory.transactionType",
    ),
]


@pytest.mark.parametrize(
    ("instruction_type", "changes", "field"),
    RULES,
    ids=[f"{t}-{f.rsplit('.', 1)[-1]}" for t, _, f in RULES],
)
def test_field_rule_is_enforced_and_names_the_field(
    instruction_type: str, changes: dict[str, Any], field: str
) -> None:
    error = refused(single(instruction_type, **changes))
    assert error.field == field
    assert str(error).startswith(field + " ")
    assert str(error).endswith(".")


def test_error_message_does_not_echo_the_rejected_value() -> None:
    info = dict(MINIMAL["ACH_INSTRUCTION"]["clientAccountInfo"], bankAccountNumber="9" * 40)
    error = refused(single("ACH_INSTRUCTION", clientAccountInfo=info))
    assert "9999" not in str(error)


# --- normalised members and bodies ------------------------------------------------------------


def test_members_keep_the_request_key_order() -> None:
    raw = {
        "instruction": {
            "currency": "USD",
            "amount": "5.10",
            "targetAccountId": "U2",
            "sourceAccountId": "U1",
            "clientInstructionId": 9,
        },
        "instructionType": "INTERNAL_CASH_TRANSFER",
    }
    parsed = parse_request(raw)
    assert list(parsed.members[0]) == [
        "currency",
        "amount",
        "targetAccountId",
        "sourceAccountId",
        "clientInstructionId",
    ]
    assert jsontext.dumps(build_body(parsed, [9])["instruction"]) == (
        '{"currency":"USD","amount":5.10,"targetAccountId":"U2","sourceAccountId":"U1",'
        '"clientInstructionId":9}'
    )


def test_nested_objects_keep_their_order_too() -> None:
    instrument = {
        "tradingInstrumentDescription": INSTRUMENT_DESCRIPTION["tradingInstrumentDescription"],
        "currency": "USD",
    }
    parsed = parse_request(single("FOP", tradingInstrument=instrument))
    assert list(parsed.members[0]["tradingInstrument"]) == [
        "tradingInstrumentDescription",
        "currency",
    ]


def test_build_body_inserts_missing_ids_first_and_keeps_given_ones() -> None:
    first = dict(MINIMAL["DEPOSIT"])
    second = dict(MINIMAL["DEPOSIT"], clientInstructionId=77)
    parsed = parse_request({"instructionType": "DEPOSIT", "instructions": [first, second]})
    body = build_body(parsed, [76, 77])
    assert next(iter(body["instructions"][0])) == "clientInstructionId"
    assert body["instructions"][0]["clientInstructionId"] == 76
    assert body["instructions"][1]["clientInstructionId"] == 77
    assert "clientInstructionId" not in parsed.members[0]  # the parsed request is untouched


def test_build_body_refuses_an_id_that_contradicts_the_request() -> None:
    parsed = parse_request(single("DEPOSIT", clientInstructionId=5))
    with pytest.raises(ValueError, match="already has clientInstructionId 5"):
        build_body(parsed, [6])


def test_build_body_needs_one_id_per_member() -> None:
    parsed = parse_request(single("DEPOSIT"))
    with pytest.raises(ValueError, match="needs 1 clientInstructionIds"):
        build_body(parsed, [1, 2])


def test_build_body_refuses_ids_that_are_not_exact_doubles() -> None:
    parsed = parse_request(single("DEPOSIT"))
    with pytest.raises(ValueError):
        build_body(parsed, [2**53])


def test_member_accessors() -> None:
    transfer = parse_request(single("INTERNAL_CASH_TRANSFER")).members[0]
    assert member_account_id(transfer) == "U46377"
    assert member_target_account_id(transfer) == "U15667"
    assert member_amount(transfer) == Decimal("123.45")
    assert member_currency(transfer) == "USD"
    deposit = parse_request(single("DEPOSIT")).members[0]
    assert member_account_id(deposit) == "U46377"
    assert member_target_account_id(deposit) is None
    fop = parse_request(single("FOP")).members[0]
    assert member_amount(fop) is None
    assert member_currency(fop) == "USD"
    cancel = parse_request(single("CANCEL_INSTRUCTION")).members[0]
    assert member_account_id(cancel) is None


def test_parsed_request_names_the_endpoint() -> None:
    parsed: ParsedRequest = parse_request(single("WITHDRAWAL"))
    assert parsed.endpoint.key == "POST /gw/api/v1/external-cash-transfers"
    assert parsed.instruction_type == "WITHDRAWAL"
    assert parsed.bulk is False
