"""Everything IBKR's own OpenAPI documents send is accepted, and everything they answer is
understood (issue 15).

Every request example of the 2.13 and 2.29 documents goes through the product
(`parse_request` -> `build_body`), is checked against the 2.29 schema of its operation with an
OpenAPI-3.0-aware validator (the documents use `nullable`), and is sent signed to the bundled
sandbox, which must not refuse it as malformed. Every response example of both documents goes
through `parse_response` and must be read. The few examples that are wrong in IBKR's own
documents are listed in DOCUMENTATION_ERRORS with the reason, and must be refused naming the
field.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator

from tests.sandbox.support import in_process
from worker import jsontext
from worker.ibkr.endpoints import endpoint_for
from worker.ibkr.requests import RequestValidationError, build_body, parse_request
from worker.ibkr.responses import Outcome, parse_response
from worker.ibkr.schemas import REQUEST_COMPONENTS, OpenApiVersion, openapi_document

VERSIONS: tuple[OpenApiVersion, ...] = ("2.13", "2.29")
SPEC = openapi_document("2.29")
GW = "/gw/api/v1"

# (document, path, example name) -> (field the refusal names, why the example is wrong).
DOCUMENTATION_ERRORS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("2.13", "/gw/api/v1/internal-cash-transfers", "Internal Cash Transfer"): (
        "intructionType",
        "misspells the key instructionType (reference §4.1)",
    ),
    ("2.13", "/gw/api/v1/internal-cash-transfers", "Internal Cash Transfer (2)"): (
        "intructionType",
        "misspells the key instructionType (reference §4.1)",
    ),
    ("2.13", "/gw/api/v1/instructions/cancel", "example"): (
        "intructionType",
        "misspells the key instructionType (reference §4.1)",
    ),
    ("2.13", "/gw/api/v1/external-cash-transfers/query", "Query Withdrawable Funds"): (
        "instructionType",
        "misspells QUERY_WITHDRAWABLE_FUNDS as QUERY_WITHDAWABLE_FUNDS (fixed in 2.29)",
    ),
    (
        "2.13",
        "/gw/api/v1/external-cash-transfers/query",
        "Query Withdrawable Funds Without Origination Hold",
    ): (
        "instructionType",
        "misspells QUERY_WITHDRAWABLE_FUNDS as QUERY_WITHDAWABLE_FUNDS (fixed in 2.29)",
    ),
    ("2.13", "/gw/api/v1/external-cash-transfers", "Deposit Funds - Recurring"): (
        "instruction",
        "has 14 fields where DepositFundsInstruction allows at most 12 (2.13) or 13 (2.29)",
    ),
    ("2.29", "/gw/api/v1/instructions/cancel:bulk", "Cancel Instruction Bulk"): (
        "instructions[1].clientInstructionId",
        "repeats one clientInstructionId three times; ids must be unique within a request",
    ),
}


def request_examples() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(document, path, example name, body) of every request example of both documents."""
    for version in VERSIONS:
        for path, operations in openapi_document(version)["paths"].items():
            post = operations.get("post")
            if not path.startswith(GW + "/") or not post or "requestBody" not in post:
                continue
            for content in post["requestBody"].get("content", {}).values():
                for name, example in content.get("examples", {}).items():
                    yield version, path, name, example["value"]
                if "example" in content:
                    yield version, path, "example", content["example"]


REQUESTS = list(request_examples())
ACCEPTED_REQUESTS = [e for e in REQUESTS if e[:3] not in DOCUMENTATION_ERRORS]


def _id(example: tuple[str, str, str, Any]) -> str:
    return f"{example[0]} {example[1].removeprefix(GW)} {example[2]}"


def test_every_request_example_is_walked() -> None:
    """Both documents are read whole: 34 request examples in 2.13, 51 in 2.29, and each listed
    documentation error is one of them."""
    assert sum(1 for e in REQUESTS if e[0] == "2.13") == 34
    assert sum(1 for e in REQUESTS if e[0] == "2.29") == 51
    assert set(DOCUMENTATION_ERRORS) <= {e[:3] for e in REQUESTS}


def _built(example: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    parsed = parse_request(copy.deepcopy(example))
    ids = [member["clientInstructionId"] for member in parsed.members]
    return parsed, build_body(parsed, ids)


@pytest.mark.parametrize("example", ACCEPTED_REQUESTS, ids=_id)
def test_request_example_is_accepted_and_built_for_its_operation(
    example: tuple[str, str, str, dict[str, Any]],
) -> None:
    _, path, _, body = example
    parsed, built = _built(body)
    assert parsed.endpoint.path == path
    # Everything the example says is sent: every field, under its 2.29 name.
    for given, sent in zip(
        body.get("instructions", [body.get("instruction")]),
        built.get("instructions", [built.get("instruction")]),
        strict=True,
    ):
        assert len(sent) == len(given)
        renamed = {"subtype": "subType", "refrenceId": "referenceId"}
        assert set(sent) == {renamed.get(name, name) for name in given}


@pytest.mark.parametrize("key", sorted(DOCUMENTATION_ERRORS), ids=" ".join)
def test_documentation_error_is_refused_naming_the_field(key: tuple[str, str, str]) -> None:
    body = next(e[3] for e in REQUESTS if e[:3] == key)
    field, _reason = DOCUMENTATION_ERRORS[key]
    with pytest.raises(RequestValidationError) as caught:
        parse_request(copy.deepcopy(body))
    assert caught.value.field == field


# --- the built body against the 2.29 schema of its operation ----------------------------------


def _exact_multiple_of(schema: Any) -> Any:
    # jsonschema divides by a float multipleOf (100.3456789 / 1e-9 is not whole in binary);
    # Decimal bodies and Decimal divisors keep the check exact.
    if isinstance(schema, dict):
        return {
            key: Decimal(repr(value)) if key == "multipleOf" else _exact_multiple_of(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_exact_multiple_of(item) for item in schema]
    return schema


def operation_schema(instruction_type: str, *, bulk: bool) -> dict[str, Any]:
    """The request schema of the operation that takes `instruction_type` in the 2.29 document,
    its `instruction(s)` narrowed to the one component of the type: the documented envelopes
    offer every type of an endpoint under oneOf, which several query bodies satisfy at once,
    and leave bulk items untyped."""
    endpoint = endpoint_for(instruction_type, bulk=bulk)
    operation = SPEC["paths"][endpoint.path][endpoint.method.lower()]
    assert operation["x-ib-gateway-security-policy"] == "SIGNED_JWT"
    assert endpoint.scope in operation["x-ib-gateway-allowed-scopes"]
    content = operation["requestBody"]["content"]
    schema = copy.deepcopy((content.get("application/json") or content.get("text/plain"))["schema"])
    assert instruction_type in schema["properties"]["instructionType"]["enum"]
    item = {"$ref": f"#/components/schemas/{REQUEST_COMPONENTS[instruction_type]}"}
    if bulk:
        assert schema["properties"]["instructions"]["type"] == "array"
        schema["properties"]["instructions"]["items"] = item
    else:
        assert item["$ref"] in jsontext.dumps(schema["properties"]["instruction"])
        schema["properties"]["instruction"] = item
    schema["additionalProperties"] = False
    schema["components"] = SPEC["components"]
    return _exact_multiple_of(schema)  # type: ignore[no-any-return]


@pytest.mark.parametrize("example", ACCEPTED_REQUESTS, ids=_id)
def test_built_body_validates_against_the_2_29_schema_of_its_operation(
    example: tuple[str, str, str, dict[str, Any]],
) -> None:
    parsed, built = _built(example[3])
    wire = jsontext.loads(jsontext.dumps(built))
    validator = OAS30Validator(
        operation_schema(parsed.instruction_type, bulk=parsed.bulk),
        format_checker=OAS30Validator.FORMAT_CHECKER,
    )
    errors = sorted(validator.iter_errors(wire), key=str)
    assert not errors, [f"{list(error.absolute_path)}: {error.message}" for error in errors]


def test_the_validator_reads_nullable_and_refuses_what_the_schema_refuses() -> None:
    """The check above can fail: the same validator refuses a body that breaks the schema."""
    parsed, built = _built(ACCEPTED_REQUESTS[0][3])
    broken = jsontext.loads(jsontext.dumps(built))
    member = broken.get("instruction") or broken["instructions"][0]
    member["clientInstructionId"] = "not a number"
    validator = OAS30Validator(operation_schema(parsed.instruction_type, bulk=parsed.bulk))
    assert list(validator.iter_errors(broken))
    assert OAS30Validator({"type": "number", "nullable": True}).is_valid(None)


# --- through the sandbox ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_env(rsa_private_key: Any) -> Any:
    # Examples reuse clientInstructionIds across operations: the sandbox takes a re-used id
    # as a second transaction, so that every example reaches its validation and business rules.
    return in_process(rsa_private_key, duplicate_post="accept")


@pytest.mark.parametrize("example", ACCEPTED_REQUESTS, ids=_id)
def test_sandbox_accepts_the_built_body_of_every_example(
    sandbox_env: Any, example: tuple[str, str, str, dict[str, Any]]
) -> None:
    sandbox, client = sandbox_env
    # Past the one-query-per-10-minutes limit of instructions/query and any open query.
    sandbox.advance(601)
    client.renew()
    parsed, built = _built(example[3])
    response = client.post(parsed.endpoint.path.removeprefix(GW), built)
    assert response.status_code != 400, response.text
    result = parse_response(
        "POST", parsed.endpoint.path, response.status_code, response.content, 1.0
    )
    # Accepted, or refused for business reasons (unknown accounts of the examples): either way
    # every instruction is answered with its own result.
    assert result.outcome in {Outcome.FINAL, Outcome.ACCEPTED, Outcome.REJECTED}, response.text
    for member in parsed.members:
        found = result.result_for(member["clientInstructionId"])
        assert found is not None and found.status is not None


# --- every response example through parse_response --------------------------------------------


def response_examples() -> Iterator[tuple[str, str, str, int, Any]]:
    """(document, method, path, HTTP status, body) of every Funds & Banking response example."""
    for version in VERSIONS:
        for path, operations in openapi_document(version)["paths"].items():
            if not path.startswith(GW + "/"):
                continue
            for method, operation in operations.items():
                if not isinstance(operation, dict):
                    continue
                for code, response in operation.get("responses", {}).items():
                    for content in (response.get("content") or {}).values():
                        values = [e["value"] for e in content.get("examples", {}).values()]
                        if "example" in content:
                            values.append(content["example"])
                        for value in values:
                            yield version, method.upper(), path, int(code), value


RESPONSES = list(response_examples())
EXPECTED_OUTCOME = {
    200: Outcome.ACCEPTED,
    201: Outcome.FINAL,
    202: Outcome.ACCEPTED,
    208: Outcome.DUPLICATE,
    400: Outcome.INVALID,
    403: Outcome.REJECTED,
    404: Outcome.NOT_FOUND,
    422: Outcome.REJECTED,
    500: Outcome.TRANSIENT,
}
STATUSES = {"PENDING", "PROCESSED", "REJECTED", "PENDING_VERIFICATION"}
# GETs whose answers describe no instruction (lists of banks and brokers).
ENUMERATION_PATHS = ("/participating-banks", "/enumerations/")


def test_every_response_example_is_walked() -> None:
    assert sum(1 for e in RESPONSES if e[0] == "2.13") == 72
    assert sum(1 for e in RESPONSES if e[0] == "2.29") == 52


@pytest.mark.parametrize(
    "example", RESPONSES, ids=[f"{v} {m} {p.removeprefix(GW)} {c}" for v, m, p, c, _ in RESPONSES]
)
def test_response_example_is_understood(example: tuple[str, str, str, int, Any]) -> None:
    _, method, path, code, body = example
    raw = body.encode() if isinstance(body, str) else jsontext.dumps(body).encode()
    result = parse_response(method, path, code, raw, 5.0)
    assert result.outcome is EXPECTED_OUTCOME[code]
    assert result.exchange.response_body == jsontext.loads(raw)
    if code >= 400:
        assert result.error_detail
    if any(part in path for part in ENUMERATION_PATHS):
        assert result.results == ()
        return
    if code == 400:
        assert result.invalid_arguments
    if code in (403, 422):
        # IBKR refused the instruction: its id is allocated and the error code read.
        assert result.instruction_set_id is not None
        assert all(r.error_code and r.instruction_id is not None for r in result.results)
    if code in (200, 201, 202, 208, 403, 422):
        assert result.results, body
    for item in result.results:
        if item.item_http_status is not None and item.item_http_status >= 400:
            continue  # a bulk member refused as malformed: no ids, only its fields
        assert item.status in STATUSES, item
        assert isinstance(item.instruction_id, int)
        assert item.instruction_type
        assert item.client_instruction_id is None or isinstance(item.client_instruction_id, int)
