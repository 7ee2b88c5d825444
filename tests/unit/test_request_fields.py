"""Which fields a request may carry (issue 15): every field IBKR's documents use is accepted and
sent, older spellings are renamed to the 2.29 ones, anything else is refused by name; and the
v2 multi-position external asset transfers."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builders import CONTRA_BROKER, MINIMAL, single, v2
from tests.unit.request_checks import refusal
from worker import jsontext
from worker.ibkr import endpoints
from worker.ibkr.instructions import INSTRUCTION_MODELS, V2_INSTRUCTION_MODELS, Model
from worker.ibkr.requests import build_body, parse_request
from worker.ibkr.schemas import instruction_schema


def member(raw: dict[str, Any]) -> dict[str, Any]:
    return parse_request(raw).members[0]


# --- fields of IBKR's own examples ------------------------------------------------------------


def test_deposit_fields_of_ibkr_s_examples_are_accepted_and_sent() -> None:
    """IBKR's DEPOSIT examples (2.13 and 2.29) send fromAccountNumber, isIRA and initiatedByIb,
    which no schema lists. (Remove them from the Deposit model to see this refused.)"""
    sent = member(single("DEPOSIT", fromAccountNumber="U46377", isIRA="false", initiatedByIb=True))
    assert sent["fromAccountNumber"] == "U46377"
    assert sent["isIRA"] == "false"
    assert sent["initiatedByIb"] is True


@pytest.mark.parametrize("value", ["yes", 1, "FALSE", None])
def test_flags_take_only_true_and_false(value: Any) -> None:
    if value is None:
        assert "isIRA" not in member(single("DEPOSIT", isIRA=None))
        return
    assert refusal(single("DEPOSIT", isIRA=value)).field == "instruction.isIRA"


def test_query_recurring_instructions_takes_the_2_13_currency() -> None:
    assert member(single("QUERY_RECURRING_INSTRUCTIONS", currency="USD"))["currency"] == "USD"


def test_contact_phone_typed_as_a_number_in_2_13_is_sent_as_text() -> None:
    info = dict(CONTRA_BROKER, contactPhone=2039126155)
    sent = member(single("COMPLEX_ASSET_TRANSFER", contraBrokerInfo=info))
    assert sent["contraBrokerInfo"]["contactPhone"] == "2039126155"


def test_a_field_no_document_names_is_refused_by_name_with_a_hint() -> None:
    error = refusal(single("INTERNAL_CASH_TRANSFER", dateTimeToOcur="2026-11-24T10:00:00Z"))
    assert error.field == "instruction.dateTimeToOcur"
    assert "not a field IBKR accepts for INTERNAL_CASH_TRANSFER" in error.message
    assert "did you mean dateTimeToOccur?" in error.message


def test_ibkr_s_misspelt_instruction_type_key_is_refused_with_a_hint() -> None:
    raw = single("INTERNAL_CASH_TRANSFER")
    raw["intructionType"] = raw.pop("instructionType")
    error = refusal(raw)
    assert error.field == "intructionType"
    assert "did you mean instructionType?" in error.message


def test_ibkr_s_misspelt_withdrawable_funds_type_is_refused_naming_the_right_one() -> None:
    error = refusal(
        single("QUERY_WITHDRAWABLE_FUNDS") | {"instructionType": "QUERY_WITHDAWABLE_FUNDS"}
    )
    assert error.field == "instructionType"
    assert "'QUERY_WITHDRAWABLE_FUNDS'" in error.message


# --- older spellings: accepted, sent under the 2.29 name ---------------------------------------

ALIASES: list[tuple[str, str, str, Any]] = [
    # (instructionType, older name, 2.29 name, value)
    ("EXTERNAL_POSITION_TRANSFER", "subtype", "subType", "ACATS"),
    ("DWAC", "refrenceId", "referenceId", "refId"),
    ("QUERY_WITHDRAWABLE_FUNDS", "bankClientAccountNumber", "bankAccountNumber", "9876543210"),
    (
        "DEPOSIT",
        "recurDetail",
        "recurringInstructionDetail",
        {"instructionName": "monthly", "frequency": "MONTHLY", "startDate": "2026-01-01"},
    ),
]


@pytest.mark.parametrize(("instruction_type", "old", "new", "value"), ALIASES)
def test_older_spelling_is_accepted_and_sent_under_the_2_29_name(
    instruction_type: str, old: str, new: str, value: Any
) -> None:
    """(Empty the model's ALIASES to see the older spelling refused.)"""
    raw = single(instruction_type)
    instruction = raw["instruction"]
    instruction.pop(new, None)
    instruction[old] = value
    if new == "bankAccountNumber":
        instruction["bankRoutingNumber"] = "122199983"
    sent = member(raw)
    assert old not in sent
    assert sent[new] == value
    # The key keeps its place in the request's order.
    assert list(sent).index(new) == list(instruction).index(old)


@pytest.mark.parametrize(("instruction_type", "old", "new", "value"), ALIASES)
def test_both_spellings_at_once_are_refused(
    instruction_type: str, old: str, new: str, value: Any
) -> None:
    raw = single(instruction_type)
    raw["instruction"][old] = value
    raw["instruction"][new] = copy.deepcopy(value)
    error = refusal(raw)
    assert error.field == f"instruction.{old}"
    assert f"send only {new}" in error.message


def test_long_form_recur_detail_fields_are_renamed_too() -> None:
    raw = single(
        "WITHDRAWAL",
        recurDetail={
            "instruction_name": "rent",
            "start_date": "2026-01-01",
            "frequency": "MONTHLY",
        },
    )
    sent = member(raw)["recurringInstructionDetail"]
    assert sent == {"instructionName": "rent", "startDate": "2026-01-01", "frequency": "MONTHLY"}


def test_con_id_of_the_long_form_documentation_is_sent_as_conid() -> None:
    sent = member(single("FOP", tradingInstrument={"conId": 12123, "currency": "USD"}))
    assert sent["tradingInstrument"] == {"conid": 12123, "currency": "USD"}


# --- the 2.29 bound on the number of fields ----------------------------------------------------


def test_more_fields_than_ibkr_s_schema_allows_are_refused() -> None:
    """IBKR's 2.13 recurring-deposit example has 14 fields; DepositFundsInstruction allows 13."""
    raw = single(
        "DEPOSIT",
        clientInstructionId=7013047,
        bankInstructionName="Instruction",
        identifier="id",
        sendingInstitution="s",
        senderInstitutionName="s",
        specialInstruction="s",
        fromAccountNumber="U46377",
        isIRA="false",
        initiatedByIb="true",
        recurringInstructionDetail={
            "instructionName": "x",
            "frequency": "MONTHLY",
            "startDate": "2026-01-01",
        },
    )
    assert len(raw["instruction"]) == 14
    error = refusal(raw)
    assert error.field == "instruction"
    assert "at most 13" in error.message
    del raw["instruction"]["initiatedByIb"]
    assert len(member(raw)) == 13


def test_a_missing_client_instruction_id_counts_as_the_field_the_worker_adds() -> None:
    # CancelInstruction allows 3 fields; the worker adds the clientInstructionId to these 3.
    raw = single("CANCEL_INSTRUCTION", note="x")
    error = refusal(raw)
    assert error.field == "instruction"
    assert "has 4 fields (counting the clientInstructionId the worker adds)" in error.message


def test_field_bounds_match_ibkr_s_2_29_document() -> None:
    for instruction_type, model in INSTRUCTION_MODELS.items():
        schema = instruction_schema(instruction_type)
        documented = None if schema is None else schema.get("maxProperties")
        assert model.MAX_FIELDS == documented, instruction_type


# --- v2: several positions per instruction -----------------------------------------------------


@pytest.mark.parametrize("instruction_type", sorted(V2_INSTRUCTION_MODELS))
def test_positions_send_the_instruction_to_the_v2_endpoint(instruction_type: str) -> None:
    parsed = parse_request(v2(instruction_type))
    assert parsed.endpoint is endpoints.EXTERNAL_ASSET_TRANSFERS_V2
    body = build_body(parsed, [5])
    assert body["instruction"]["positions"][1]["quantity"] == 2.5
    bulk = {
        "instructionType": instruction_type,
        "instructions": [v2(instruction_type)["instruction"]] * 2,
    }
    bulk["instructions"] = [
        dict(item, clientInstructionId=n) for n, item in enumerate(bulk["instructions"], 1)
    ]
    assert parse_request(bulk).endpoint is endpoints.EXTERNAL_ASSET_TRANSFERS_V2_BULK


def test_without_positions_the_same_type_goes_to_v1() -> None:
    assert parse_request(single("FOP")).endpoint is endpoints.EXTERNAL_ASSET_TRANSFERS


def test_one_quantity_on_the_instruction_is_the_other_accepted_form() -> None:
    positions = [{"conid": 1}, {"conid": 2}]
    sent = member(v2(positions=positions, quantity=7))
    assert sent["quantity"] == 7
    assert all("quantity" not in position for position in sent["positions"])


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"positions": [{"conid": 1}]}, "instruction.positions[0].quantity", "is required"),
        (
            {"positions": [{"conid": 1, "quantity": 1}], "quantity": 1},
            "instruction.positions[0].quantity",
            "cannot be given together",
        ),
        ({"positions": []}, "instruction.positions", "non-empty list"),
        (
            {"positions": [{"quantity": 1}]},
            "instruction.positions[0].conid/tradingInstrumentDescription",
            "exactly one",
        ),
        (
            {"positions": [{"conid": 1, "quantity": "1e-11"}]},
            "instruction.positions[0].quantity",
            "decimal places",
        ),
        (
            {"tradingInstrument": {"conid": 1, "currency": "USD"}},
            "instruction.tradingInstrument",
            "not a field",
        ),
        ({"currency": None}, "instruction.currency", "must be a string"),
    ],
)
def test_v2_rules_name_the_field(changes: dict[str, Any], field: str, reason: str) -> None:
    error = refusal(v2(**changes))
    assert error.field == field
    assert reason in error.message


def test_full_transfers_have_no_v2_form() -> None:
    raw = single("EXTERNAL_POSITION_TRANSFER", positions=[{"conid": 1, "quantity": 1}])
    error = refusal(raw)
    assert error.field == "instructionType"
    assert "no v2 form" in error.message


def test_a_bulk_cannot_mix_v1_and_v2_instructions() -> None:
    raw = {
        "instructionType": "FOP",
        "instructions": [v2()["instruction"], copy.deepcopy(MINIMAL["FOP"])],
    }
    error = refusal(raw)
    assert error.field == "instructions[1]"


def test_stored_v2_submissions_find_their_endpoint_again() -> None:
    """The worker stores the endpoint path with a submission and sends to it again later."""
    for endpoint in (endpoints.EXTERNAL_ASSET_TRANSFERS_V2, endpoints.INTERNAL_CASH_TRANSFERS):
        assert endpoints.endpoint_at(endpoint.path) is endpoint
    with pytest.raises(endpoints.UnknownInstructionType):
        endpoints.endpoint_at("/gw/api/v9/nothing")


def test_v2_bodies_write_exact_quantities() -> None:
    body = build_body(parse_request(v2()), [1])
    assert '"quantity":2.5' in jsontext.dumps(body)


# --- every field of both documents' schemas is known ------------------------------------------

# 2.13's TradingInstrument offers, under oneOf, a bare number (`Conid`) or the description's three
# fields flat on the instrument: self-contradictory for an object, and 2.13's own examples nest
# the description in `tradingInstrumentDescription` as 2.29 does. Those flat names are not taken.
SCHEMA_ERRORS_213 = {
    ("tradingInstrument", "securityIdType"),
    ("tradingInstrument", "securityId"),
    ("tradingInstrument", "assetType"),
}


def _schema_fields(
    node: Any, components: dict[str, Any], path: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    if "$ref" in node:
        yield from _schema_fields(components[node["$ref"].rsplit("/", 1)[1]], components, path)
        return
    for key in ("allOf", "oneOf", "anyOf"):
        for part in node.get(key, []):
            yield from _schema_fields(part, components, path)
    for name, child in node.get("properties", {}).items():
        yield (*path, name)
        yield from _schema_fields(child, components, (*path, name))
    if "items" in node:
        yield from _schema_fields(node["items"], components, path)


def _known(model: Any, path: tuple[str, ...]) -> bool:
    import typing

    for depth, given in enumerate(path, 1):
        name = model.ALIASES.get(given, given)
        if name not in model.model_fields:
            return False
        annotation = model.model_fields[name].annotation
        nested = [
            arg
            for arg in (annotation, *typing.get_args(annotation))
            if isinstance(arg, type) and issubclass(arg, Model)
        ]
        model = nested[0] if nested else None
        if model is None:
            return depth == len(path)
    return True


@pytest.mark.parametrize("version", ["2.13", "2.29"])
def test_every_field_of_both_documents_schemas_is_accepted(version: str) -> None:
    """(Remove a field such as QueryRecurringInstructions.currency (2.13) to see this fail.)"""
    from worker.ibkr.schemas import REQUEST_COMPONENTS, openapi_document

    components = openapi_document(version)["components"]["schemas"]  # type: ignore[arg-type]
    unknown = []
    for instruction_type, component in REQUEST_COMPONENTS.items():
        if component not in components:
            continue  # newer than this document
        for path in _schema_fields(components[component], components, ()):
            if version == "2.13" and path in SCHEMA_ERRORS_213:
                continue
            if not _known(INSTRUCTION_MODELS[instruction_type], path):
                unknown.append((instruction_type, ".".join(path)))
    assert not unknown
