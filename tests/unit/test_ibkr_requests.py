"""Request validation: the envelope, clientInstructionId, amounts, and the members and bodies
built from a valid request."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from tests.builders import CONTRA_BROKER, DROP, INSTRUMENT_DESCRIPTION, MINIMAL, single
from tests.unit.request_checks import refusal
from worker import jsontext
from worker.ibkr.requests import (
    ParsedRequest,
    build_body,
    member_account_id,
    member_amount,
    member_currency,
    member_target_account_id,
    parse_request,
)

# --- envelope rules ---------------------------------------------------------------------------


def test_request_that_is_not_an_object_is_refused() -> None:
    assert refusal([1, 2]).field == "request"


def test_unknown_instruction_type_is_refused_naming_instruction_type() -> None:
    error = refusal({"instructionType": "TELEPORT_CASH", "instruction": {}})
    assert error.field == "instructionType"
    assert "TELEPORT_CASH" in str(error)


def test_lower_case_instruction_type_is_refused_with_a_hint() -> None:
    error = refusal({"instructionType": "fop", "instruction": {}})
    assert error.field == "instructionType"
    assert "'FOP'" in str(error)


def test_missing_instruction_type_is_refused() -> None:
    assert refusal({"instruction": {}}).field == "instructionType"


def test_extra_top_level_key_is_refused() -> None:
    raw = single("INTERNAL_CASH_TRANSFER")
    raw["correlation_id"] = "x"
    assert refusal(raw).field == "correlation_id"


def test_single_and_bulk_together_are_refused() -> None:
    raw = single("INTERNAL_CASH_TRANSFER")
    raw["instructions"] = [raw["instruction"]]
    assert refusal(raw).field == "instructions"


def test_neither_instruction_nor_instructions_is_refused() -> None:
    assert refusal({"instructionType": "DEPOSIT"}).field == "instruction"


def test_empty_bulk_is_refused() -> None:
    error = refusal({"instructionType": "DEPOSIT", "instructions": []})
    assert error.field == "instructions"


def test_bulk_that_is_not_a_list_is_refused() -> None:
    assert refusal({"instructionType": "DEPOSIT", "instructions": {}}).field == "instructions"


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
    error = refusal(raw)
    assert error.field == "instructionType"
    assert "no bulk endpoint" in str(error)


def test_bulk_member_error_names_its_index() -> None:
    good = copy.deepcopy(MINIMAL["INTERNAL_CASH_TRANSFER"])
    bad = copy.deepcopy(good)
    del bad["sourceAccountId"]
    error = refusal(
        {"instructionType": "INTERNAL_CASH_TRANSFER", "instructions": [good, good, bad]}
    )
    assert error.field == "instructions[2].sourceAccountId"
    assert str(error) == "instructions[2].sourceAccountId is required but missing."


def test_bulk_member_that_is_not_an_object_is_refused() -> None:
    error = refusal({"instructionType": "DEPOSIT", "instructions": [MINIMAL["DEPOSIT"], 5]})
    assert error.field == "instructions[1]"


def test_repeated_client_instruction_id_within_a_bulk_is_refused() -> None:
    member = dict(MINIMAL["DEPOSIT"], clientInstructionId=7)
    error = refusal({"instructionType": "DEPOSIT", "instructions": [member, member]})
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
    error = refusal(raw)
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
    error = refusal(single("DEPOSIT", clientInstructionId=value))
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
    error = refusal(single("DEPOSIT", clientInstructionId=0))
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
    error = refusal(single("INTERNAL_CASH_TRANSFER", amount=amount))
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
    error = refusal(single("WITHDRAWAL", amount=DROP))
    assert error.field == "instruction.amount"
    assert str(error) == "instruction.amount is required but missing."


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
