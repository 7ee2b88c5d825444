"""Validation of a decoded request payload against IBKR's 2.29 request schemas.

The schemas, and which instructionTypes each POST path accepts, come from IBKR's own OpenAPI
document as shipped in `worker.ibkr.schemas`: the sandbox checks payloads with the same schemas
the client's tests use, and follows IBKR's document rather than the client's endpoint table.
What the reference describes beyond the 2.29 document (the open-banking bank instructions, the
v2 external asset transfers) is checked against `ibkr_sandbox.reference_schemas`.

Produces IBKR's 400 `/invalid-argument` shape: one `{field, description}` per bad field, with the
leaf field name as IBKR reports it (`sourceAccountId`, `iraContributionType`). A bulk request is
refused whole when any item is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from jsonschema import Draft7Validator

from ibkr_sandbox.reference_schemas import (
    BANK_INSTRUCTIONS_BEYOND_2_29,
    V2_TYPES,
    v2_instruction_schema,
)
from worker.ibkr import ids
from worker.ibkr.schemas import instruction_schema, openapi_document

MISSING = "Missing required parameter"
INVALID = "Invalid or Missing required parameter"
NOT_AN_OBJECT = "Input is not a JSON Object or doesn't contain all expected fields"
_DATE_FIELDS = ("tradeDate", "settleDate", "startDate", "endDate")
_V1 = "/gw/api/v1"
#: Where the quantity of a v2 position goes (UNCERTAIN; the sandbox's `v2_position_quantity`).
V2QuantityPlacement = Literal["position", "instruction"]


class RequestInvalid(Exception):
    """The payload breaks the schema; `invalid_arguments` lists every bad field."""

    def __init__(self, invalid_arguments: list[dict[str, str]], detail: str = NOT_AN_OBJECT):
        super().__init__(f"{detail}: {invalid_arguments}")
        self.detail = detail
        self.invalid_arguments = invalid_arguments


@dataclass(frozen=True)
class ValidatedRequest:
    """A payload that passed validation."""

    instruction_type: str
    bulk: bool
    #: The instruction objects (one for a single request), numbers as Decimal or int.
    instructions: tuple[dict[str, Any], ...]


def _endpoint_types() -> dict[str, tuple[str, ...]]:
    """The instructionType enum of each `/gw/api/v1` POST request body in the 2.29 document,
    by path relative to `/gw/api/v1` (`:bulk` paths included)."""
    found: dict[str, tuple[str, ...]] = {}
    for path, operations in openapi_document("2.29")["paths"].items():
        body = operations.get("post", {}).get("requestBody", {})
        schema = body.get("content", {}).get("application/json", {}).get("schema", {})
        types = schema.get("properties", {}).get("instructionType", {}).get("enum")
        if path.startswith(_V1 + "/") and types:
            found[path[len(_V1) :]] = tuple(types)
    return found


def _prepare(schema: Any) -> Any:
    # jsonschema divides by a float multipleOf, which a Decimal instance cannot take; a Decimal
    # divisor keeps the check exact.
    if isinstance(schema, dict):
        return {
            key: Decimal(repr(value)) if key == "multipleOf" else _prepare(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_prepare(item) for item in schema]
    return schema


def _validator(instruction_type: str) -> Draft7Validator:
    schema = instruction_schema(instruction_type) or BANK_INSTRUCTIONS_BEYOND_2_29.get(
        instruction_type
    )
    if schema is None:
        raise LookupError(f"IBKR's 2.29 document has no request schema for {instruction_type}")
    return Draft7Validator(_prepare(schema))


def _all_endpoint_types() -> dict[str, tuple[str, ...]]:
    found = _endpoint_types()
    # The reference adds two bank instructions (single requests only) and the v2 paths, which
    # are named here relative to /gw/api/v1 as "/v2/...".
    found["/bank-instructions"] += tuple(BANK_INSTRUCTIONS_BEYOND_2_29)
    found["/v2/external-asset-transfers"] = V2_TYPES
    found["/v2/external-asset-transfers:bulk"] = V2_TYPES
    return found


#: The instructionTypes each POST path accepts; built, like the validators, once at import.
ENDPOINT_TYPES: dict[str, tuple[str, ...]] = _all_endpoint_types()
_VALIDATORS: dict[str, Draft7Validator] = {
    instruction_type: _validator(instruction_type)
    for instruction_type in sorted(
        {name for path, types in ENDPOINT_TYPES.items() for name in types if "/v2/" not in path}
    )
}
_V2_VALIDATORS: dict[str, Draft7Validator] = {
    instruction_type: Draft7Validator(_prepare(v2_instruction_schema(instruction_type)))
    for instruction_type in V2_TYPES
}


def endpoint_types(path: str) -> tuple[str, ...] | None:
    """The instructionTypes a POST path (relative to `/gw/api/v1`) accepts, or None."""
    return ENDPOINT_TYPES.get(path)


def _leaf(path: Any, default: str) -> str:
    names = [part for part in path if isinstance(part, str)]
    return names[-1] if names else default


def _schema_errors(instruction_type: str, item: Any, *, v2: bool) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    validators = _V2_VALIDATORS if v2 else _VALIDATORS
    errors = list(validators[instruction_type].iter_errors(item))
    required_at = {tuple(error.absolute_path) for error in errors if error.validator == "required"}
    for error in errors:
        where = tuple(error.absolute_path)
        if error.validator == "required":
            present = error.instance if isinstance(error.instance, dict) else {}
            for name in error.validator_value:
                if name not in present:
                    found.append((name, MISSING))
        elif error.validator == "oneOf" and ("tradingInstrument" in where or "positions" in where):
            found.append(
                (
                    "conid/tradingInstrumentDescription",
                    "Either conid or tradingInstrumentDescription must be present",
                )
            )
        elif error.validator == "minProperties" and where in required_at:
            continue  # the missing fields are already named
        else:
            found.append((_leaf(error.absolute_path, "instruction"), INVALID))
    return found


def _is_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def _is_date_or_datetime(value: Any) -> bool:
    # nonDisclosedDetail: IBKR's schema calls its dates dates, its examples send date-times.
    if _is_date(value):
        return True
    if not isinstance(value, str) or len(value) <= 10:
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _not_positive(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool) and value <= 0


def _quantity_errors(item: dict[str, Any], placement: V2QuantityPlacement) -> list[tuple[str, str]]:
    """v2: the quantity where the `placement` switch says it goes, and nowhere else."""
    positions = [p for p in item.get("positions", ()) if isinstance(p, dict)]
    found: list[tuple[str, str]] = []
    if placement == "instruction":
        if "quantity" not in item:
            found.append(("quantity", MISSING))
        if any("quantity" in position for position in positions):
            found.append(("quantity", "Quantity belongs to the instruction, not to a position"))
    else:
        if "quantity" in item:
            found.append(("quantity", "Quantity belongs to each position, not to the instruction"))
        if any("quantity" not in position for position in positions):
            found.append(("quantity", MISSING))
    found.extend(
        ("quantity", INVALID)
        for value in [item.get("quantity"), *(p.get("quantity") for p in positions)]
        if _not_positive(value)
    )
    return found


def _extra_errors(instruction_type: str, item: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules the schema states in prose only (dates, id range, field pairs)."""
    found: list[tuple[str, str]] = []
    cid = item.get("clientInstructionId")
    if isinstance(cid, int | Decimal) and not isinstance(cid, bool):
        # The id domain of worker.ibkr.ids: signed, within JSON's safe integers; 0 is
        # IBKR's "created outside the API".
        if ids.as_client_instruction_id(cid) is None:
            found.append(("clientInstructionId", f"Must be {ids.ID_DOMAIN}, other than 0"))
    for name in ("amount", "transferQuantity", "quantity"):
        if _not_positive(item.get(name)):
            found.append((name, INVALID))
    when = item.get("dateTimeToOccur")
    if isinstance(when, str):
        try:
            parsed = datetime.fromisoformat(when)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            found.append(("dateTimeToOccur", INVALID))
    for name in _DATE_FIELDS:
        if name in item and not _is_date(item[name]):
            found.append((name, INVALID))
    if ("tradeDate" in item) != ("settleDate" in item):
        missing = "settleDate" if "tradeDate" in item else "tradeDate"
        found.append((missing, "tradeDate and settleDate must be given together"))
    if "transferPrice" in item and not ("tradeDate" in item and "settleDate" in item):
        found.append(("transferPrice", "transferPrice requires tradeDate and settleDate"))
    if instruction_type == "QUERY_WITHDRAWABLE_FUNDS":
        bank_details = ("bankAccountNumber" in item, "bankRoutingNumber" in item)
        if "bankInstructionName" in item and any(bank_details):
            found.append(
                ("bankInstructionName", "Cannot be passed with bankAccountNumber/bankRoutingNumber")
            )
        elif any(bank_details) and not all(bank_details):
            found.append(("bankAccountNumber/bankRoutingNumber", "Both must be given together"))
    for nested, date_check in (
        ("recurringInstructionDetail", _is_date),
        ("nonDisclosedDetail", _is_date_or_datetime),
    ):
        value = item.get(nested)
        if isinstance(value, dict):
            for name in _DATE_FIELDS:
                if name in value and not date_check(value[name]):
                    found.append((name, INVALID))
    return found


def _to_arguments(found: list[tuple[str, str]]) -> list[dict[str, str]]:
    seen: set[tuple[str, str]] = set()
    arguments: list[dict[str, str]] = []
    for field_name, description in found:
        if (field_name, description) not in seen:
            seen.add((field_name, description))
            arguments.append({"field": field_name, "description": description})
    return arguments


def validate_request(
    path: str,
    payload: Any,
    *,
    bulk: bool,
    v2_quantity: V2QuantityPlacement = "position",
) -> ValidatedRequest:
    """Check a decoded payload (JWT claims already removed) for the POST `path` (relative to
    `/gw/api/v1`; the v2 paths as `/v2/...`). `v2_quantity` says where a v2 position's quantity
    goes. Raises RequestInvalid listing every bad field."""
    v2 = path.startswith("/v2/")
    if not isinstance(payload, dict):
        raise RequestInvalid([])
    allowed = ENDPOINT_TYPES.get(path, ())
    instruction_type = payload.get("instructionType")
    if not isinstance(instruction_type, str) or instruction_type not in allowed:
        raise RequestInvalid([{"field": "instructionType", "description": INVALID}])
    key = "instructions" if bulk else "instruction"
    raw_items = payload.get(key)
    if bulk:
        if not isinstance(raw_items, list) or not raw_items:
            raise RequestInvalid([{"field": key, "description": MISSING}])
        items = raw_items
    else:
        if raw_items is None:
            raise RequestInvalid([{"field": key, "description": MISSING}])
        items = [raw_items]
    found: list[tuple[str, str]] = []
    seen_ids: set[Any] = set()
    for item in items:
        if not isinstance(item, dict):
            found.append((key, INVALID))
            continue
        found.extend(_schema_errors(instruction_type, item, v2=v2))
        found.extend(_extra_errors(instruction_type, item))
        if v2:
            found.extend(_quantity_errors(item, v2_quantity))
        cid = item.get("clientInstructionId")
        # An object or array here is already reported by the schema; only ids are compared.
        if bulk and isinstance(cid, int | str):
            if cid in seen_ids:
                found.append(("clientInstructionId", "Must be unique within the request"))
            seen_ids.add(cid)
    if found:
        raise RequestInvalid(_to_arguments(found))
    return ValidatedRequest(instruction_type, bulk, tuple(items))
