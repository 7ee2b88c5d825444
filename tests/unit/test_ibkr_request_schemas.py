"""Every body we build checked against IBKR's 2.29 OpenAPI document: each supported type, single
and bulk, and the contract's example kept byte for byte."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from jsonschema import validators

from tests.builders import MINIMAL, single
from worker import jsontext
from worker.ibkr.endpoints import ENDPOINTS, endpoint_for
from worker.ibkr.requests import INSTRUCTION_MODELS, build_body, parse_request
from worker.ibkr.schemas import REQUEST_COMPONENTS, openapi_document

SPEC = openapi_document("2.29")


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
