"""Every outcome of an IBKR answer, from IBKR's own 2.13/2.29 example bodies and the quirks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from worker import jsontext
from worker.ibkr.responses import (
    MAX_RETRY_AFTER_S,
    Outcome,
    no_response,
    parse_response,
    retry_after_seconds,
)
from worker.ibkr.schemas import openapi_document

SPEC_213 = openapi_document("2.13")
SPEC_229 = openapi_document("2.29")
NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def examples(spec: dict[str, Any], code: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, body) of every documented example answer with HTTP status `code`."""
    found = []
    for path, operations in spec["paths"].items():
        if not path.startswith("/gw/api/v1/"):
            continue
        for method, operation in operations.items():
            response = operation.get("responses", {}).get(code)
            if not isinstance(response, dict):
                continue
            for content in response.get("content", {}).values():
                values = [e["value"] for e in content.get("examples", {}).values()]
                if "example" in content:
                    values.append(content["example"])
                found.extend((method.upper(), path, value) for value in values)
    return found


def parse(status: int, body: Any, *, method: str = "POST", path: str = "/p", **kw: Any) -> Any:
    raw = body if isinstance(body, bytes) else jsontext.dumps(body).encode()
    return parse_response(method, path, status, raw, 12.5, kw.get("headers"), now=NOW)


def _ids(items: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    return [f"{method} {path}" for method, path, _ in items]


E201 = examples(SPEC_213, "201") + examples(SPEC_229, "201")
E202 = examples(SPEC_213, "202") + examples(SPEC_229, "202")
E400 = examples(SPEC_213, "400")
E403 = examples(SPEC_213, "403")
E404 = examples(SPEC_213, "404")
E422 = examples(SPEC_213, "422")
E208 = examples(SPEC_213, "208")


def test_the_spec_has_examples_for_every_status_we_read() -> None:
    for found in (E201, E202, E400, E403, E404, E422, E208):
        assert found


@pytest.mark.parametrize(("method", "path", "body"), E201, ids=_ids(E201))
def test_201_examples_are_final_with_their_result(
    method: str, path: str, body: dict[str, Any]
) -> None:
    result = parse(201, body, method=method, path=path)
    assert result.outcome is Outcome.FINAL
    assert result.results
    item = result.results[0]
    assert item.status == "PROCESSED"
    assert item.instruction_id is not None
    assert item.client_instruction_id is not None


@pytest.mark.parametrize(("method", "path", "body"), E202, ids=_ids(E202))
def test_202_examples_are_accepted_with_every_result(
    method: str, path: str, body: dict[str, Any]
) -> None:
    result = parse(202, body, method=method, path=path)
    assert result.outcome is Outcome.ACCEPTED
    assert result.instruction_set_id is not None
    expected = len(body.get("instructionResults", [])) or 1
    assert len(result.results) == expected
    assert all(item.status in {"PENDING", "PROCESSED"} for item in result.results)


@pytest.mark.parametrize(("method", "path", "body"), E400, ids=_ids(E400))
def test_400_examples_are_invalid_with_their_fields(
    method: str, path: str, body: dict[str, Any]
) -> None:
    result = parse(400, body, method=method, path=path)
    assert result.outcome is Outcome.INVALID
    assert result.error_detail
    fields = [item["field"] for item in body.get("invalidArguments", [])]
    assert [field for field, _ in result.invalid_arguments] == fields


@pytest.mark.parametrize(("method", "path", "body"), E403 + E422, ids=_ids(E403 + E422))
def test_403_and_422_examples_are_rejections_with_error_code(
    method: str, path: str, body: dict[str, Any]
) -> None:
    result = parse(body["status"], body, method=method, path=path)
    assert result.outcome is Outcome.REJECTED
    # IBKR sends the set id as a string in these bodies ("2616").
    assert result.instruction_set_id == int(body["instructionSetId"])
    item = result.results[0]
    assert item.status == "REJECTED"
    assert item.error_code and item.error_code.isupper()
    assert item.error_message
    assert item.instruction_id == body["instructionResult"]["instructionId"]


@pytest.mark.parametrize(("method", "path", "body"), E404, ids=_ids(E404))
def test_404_examples_are_not_found(method: str, path: str, body: dict[str, Any]) -> None:
    result = parse(404, body, method=method, path=path)
    assert result.outcome is Outcome.NOT_FOUND
    assert "Could not get status" in (result.error_detail or "")


@pytest.mark.parametrize(("method", "path", "body"), E208, ids=_ids(E208))
def test_208_example_is_a_duplicate_describing_the_first_transaction(
    method: str, path: str, body: dict[str, Any]
) -> None:
    result = parse(208, body, method=method, path=path)
    assert result.outcome is Outcome.DUPLICATE
    assert result.instruction_set_id == 1686
    item = result.results[0]
    assert item.client_instruction_id == 1013025
    assert item.status == "REJECTED"  # read from `status` (quirk) inside the result
    assert item.error_code == "CORRUPT_DATA_INVALID_ACCT"  # flat `code` (quirk)
    assert item.error_message == "Account U345 does not exist"
    assert "code" not in item.extra


def test_200_status_get_is_accepted_and_reads_status_quirk() -> None:
    body = next(
        b
        for _, _, b in examples(SPEC_213, "200")
        if b.get("instructionResult", {}).get("status") == "PENDING"
    )
    result = parse(200, body, method="GET", path="/gw/api/v1/client-instructions/{id}")
    assert result.outcome is Outcome.ACCEPTED
    assert result.results[0].status == "PENDING"


def test_query_results_are_kept_in_extra() -> None:
    bodies = [b for _, p, b in examples(SPEC_213, "200") if "client-instructions" in p]
    history = next(b for b in bodies if "instructionHistory" in b["instructionResult"])
    result = parse(200, history, method="GET")
    assert result.results[0].extra["instructionHistory"]["historyMaxDepthNumberOfDays"] == 30
    ira = next(b for b in bodies if "contributions" in b["instructionResult"])
    result = parse(200, ira, method="GET")
    assert result.results[0].extra["contributions"][0]["maximumContributionLimit"] == 4000
    assert result.results[0].extra["year"] == "2003"


def test_amounts_in_extra_stay_decimal() -> None:
    body = {
        "status": 201,
        "instructionSetId": 17791,
        "instructionResult": {
            "clientInstructionId": 7013230,
            "instructionType": "QUERY_WITHDRAWABLE_CASH_EQUITY",
            "instructionStatus": "PROCESSED",
            "instructionId": 43133309,
            "withdrawableCashAmount": Decimal("250000.10"),
        },
    }
    result = parse(201, body)
    assert result.results[0].extra["withdrawableCashAmount"] == Decimal("250000.10")
    assert str(result.results[0].extra["withdrawableCashAmount"]) == "250000.10"


def test_pending_query_code_is_not_an_error() -> None:
    body = next(b for _, p, b in E202 if p.endswith("/instructions/query"))
    item = parse(202, body).results[0]
    assert item.error_code is None
    assert item.status == "PENDING"
    assert item.extra["code"] == "PENDING"
    assert item.description and "poll" in item.description


def test_empty_code_and_description_are_dropped() -> None:
    body = next(b for _, _, b in E202 if b["instructionResult"].get("code") == "")
    item = parse(202, body).results[0]
    assert item.error_code is None
    assert item.description is None
    assert "code" not in item.extra


def test_instruction_set_with_mixed_items_keeps_every_item() -> None:
    [(_, _, body)] = [e for e in examples(SPEC_229, "200") if "instruction-sets" in e[1]]
    result = parse(200, body, method="GET")
    assert result.outcome is Outcome.ACCEPTED
    assert result.instruction_set_id == 9094
    statuses = [item.item_http_status for item in result.results]
    assert statuses == [202, 422, 400]
    assert result.results[1].error_code == "string"
    assert result.results[2].client_instruction_id is None
    assert result.results[2].extra["invalidArguments"][0]["field"] == "instructionId"
    assert ("instructionId", "Missing required parameter") in result.invalid_arguments


def test_bulk_207_is_accepted_with_item_statuses() -> None:
    body = {
        "status": 207,
        "instructionSetId": "9094",
        "instructionResults": [
            {
                "status": 202,
                "instructionSetId": 9094,
                "instructionResult": {
                    "clientInstructionId": "1",
                    "instructionType": "INTERNAL_CASH_TRANSFER",
                    "instructionStatus": "PENDING",
                    "instructionId": "45123654",
                },
            },
            {
                "status": 422,
                "type": "/simple",
                "title": "Business Error",
                "instructionSetId": 9094,
                "instructionResult": {
                    "clientInstructionId": 2,
                    "instructionType": "INTERNAL_CASH_TRANSFER",
                    "status": "REJECTED",
                    "instructionId": 45123655,
                    "code": "NOT_OPEN_ACCOUNT",
                    "description": "Account closed",
                },
            },
        ],
    }
    result = parse(207, body)
    assert result.outcome is Outcome.ACCEPTED
    assert result.instruction_set_id == 9094
    first, second = result.results
    assert (first.client_instruction_id, first.instruction_id) == (1, 45123654)
    assert second.item_http_status == 422
    assert (second.status, second.error_code) == ("REJECTED", "NOT_OPEN_ACCOUNT")
    assert result.result_for(2) is second
    assert result.result_for(3) is None


def test_unknown_status_and_type_values_are_kept_as_strings() -> None:
    body = {
        "status": 200,
        "instructionSetId": 1,
        "instructionResult": {
            "clientInstructionId": 5,
            "instructionType": "deposit_funds",
            "instructionStatus": "POSTED",
            "instructionId": 9,
            "processedTimestamp": "2026-01-01T00:00:00Z",
        },
    }
    item = parse(200, body, method="GET").results[0]
    assert (item.instruction_type, item.status) == ("deposit_funds", "POSTED")
    assert item.extra == {"processedTimestamp": "2026-01-01T00:00:00Z"}


def test_gateway_403_without_ids_is_an_auth_failure() -> None:
    body = {"type": "/simple", "title": "Forbidden", "status": 403, "detail": "lacks scope"}
    result = parse(403, body)
    assert result.outcome is Outcome.AUTH_FAILED
    assert result.error_detail == "Forbidden: lacks scope"


def test_401_is_an_auth_failure() -> None:
    body = {"type": "/simple", "title": "Unauthorized", "status": 401, "detail": "bad token"}
    assert parse(401, body).outcome is Outcome.AUTH_FAILED


def test_422_without_ids_is_invalid() -> None:
    body = {"type": "/simple", "title": "Business Error", "status": 422, "detail": "no"}
    assert parse(422, body).outcome is Outcome.INVALID


def test_signed_jwt_policy_refusal_is_invalid() -> None:
    result = parse(400, b"Invalid payload for security policy: SIGNED_JWT")
    assert result.outcome is Outcome.INVALID
    assert "SIGNED_JWT" in (result.error_detail or "")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 409, 418])
def test_server_errors_and_unexpected_codes_are_transient(status: int) -> None:
    body = {"type": "/simple", "title": "Internal Server Error", "status": status}
    result = parse(status, body)
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_detail


@pytest.mark.parametrize(
    "raw", [b"<html>Bad gateway</html>", b"", b"\xff\xfe", b"[1,2", b"null", b"[]", b'"x"']
)
def test_odd_bodies_never_raise(raw: bytes) -> None:
    for status in (200, 201, 202, 208, 400, 403, 404, 422, 429, 500):
        result = parse_response("POST", "/p", status, raw, 1.0, {})
        assert isinstance(result.outcome, Outcome)


def test_success_without_a_json_object_is_transient() -> None:
    result = parse(201, b"<html>ok</html>")
    assert result.outcome is Outcome.TRANSIENT
    assert "not JSON" in (result.error_detail or "")
    assert result.exchange.response_body == "<html>ok</html>"


def test_429_reads_retry_after_seconds() -> None:
    result = parse(429, {"status": 429}, headers={"Retry-After": "3"})
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after_s == 3.0


def test_429_reads_retry_after_http_date() -> None:
    result = parse(429, b"", headers={"retry-after": "Tue, 24 Nov 2026 15:00:07 GMT"})
    assert result.retry_after_s == 7.0


def test_429_without_retry_after() -> None:
    assert parse(429, b"").retry_after_s is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("-4", 0.0),
        ("1.5", 1.5),
        ("soon", None),
        (None, None),
        # Absurd waits: unreadable (the caller's own backoff applies) or cut to the maximum.
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("1e9", None),
        ("1000000000", MAX_RETRY_AFTER_S),
        ("9" * 32, MAX_RETRY_AFTER_S),
        ("9" * 400, None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_S),
        ("Tue, 24 Nov 2026 14:00:00 GMT", 0.0),
    ],
)
def test_retry_after_forms(header: str | None, seconds: float | None) -> None:
    """A Retry-After is a finite wait from 0 to MAX_RETRY_AFTER_S or nothing. (Drop the cap
    in retry_after_seconds to see `1000000000` park a request for decades; parse it with
    float() again to see `inf` raise OverflowError later and `1e9` read as a wait.)"""
    assert retry_after_seconds(header, NOW) == seconds


def test_the_retry_after_cap_is_an_hour() -> None:
    assert MAX_RETRY_AFTER_S == 3600.0


def test_503_reads_retry_after_as_429_does() -> None:
    """Retry-After on a 503 (IBKR busy or in downtime) is honoured like on a 429. (Limit the
    Retry-After reading in parse_response to THROTTLED to see this fail.)"""
    result = parse(503, {"status": 503}, headers={"Retry-After": "120"})
    assert result.outcome is Outcome.TRANSIENT
    assert result.retry_after_s == 120.0
    assert parse(500, b"", headers={"Retry-After": "120"}).retry_after_s is None


def test_exchange_keeps_what_the_audit_needs() -> None:
    body = {"status": 202, "instructionSetId": 1, "instructionResult": {"instructionId": 2}}
    result = parse(202, body, method="POST", path="/gw/api/v1/internal-cash-transfers")
    exchange = result.exchange
    assert (exchange.method, exchange.path, exchange.http_status) == (
        "POST",
        "/gw/api/v1/internal-cash-transfers",
        202,
    )
    assert exchange.latency_ms == 12.5
    assert exchange.response_body == body


def test_error_detail_is_scrubbed_of_tokens() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    result = parse(500, {"title": "Internal Server Error", "detail": f"bad {token}"})
    assert token not in (result.error_detail or "")


def test_no_response_results() -> None:
    result = no_response("POST", "/p", Outcome.UNKNOWN, "timed out", latency_ms=30000.0)
    assert result.outcome is Outcome.UNKNOWN
    assert result.http_status is None
    assert result.exchange.latency_ms == 30000.0
