"""Request bodies: validation per instructionType and the body to sign (reference §4.1, §4.2, §6).

`parse_request` checks a request (single `{"instructionType", "instruction"}` or bulk
`{"instructionType", "instructions": [...]}`) against the request models of
`worker.ibkr.instructions` (IBKR's 2.29 field rules, with every field its 2.13 and 2.29
documents use) and returns the instructions as plain dicts in the request's own key order,
older field spellings renamed to the 2.29 ones, numbers as bounded Decimals and ids as int.
`build_body` then fills in the clientInstructionIds. Anything IBKR would refuse is refused
here, before a single byte is sent, and nothing but RequestValidationError ever escapes.

An FOP, DWAC or COMPLEX_ASSET_TRANSFER whose instructions carry `positions` goes to the v2
endpoint (`/gw/api/v2/external-asset-transfers`); without them, to the v1 one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ValidationError

from worker.ibkr import ids
from worker.ibkr.endpoints import (
    ENDPOINTS,
    Endpoint,
    UnknownInstructionType,
    endpoint_for,
)
from worker.ibkr.instructions import (
    INSTRUCTION_MODELS,
    V2_INSTRUCTION_MODELS,
    Instruction,
    Model,
)
from worker.ibkr.instructions.problems import (
    MAX_DEPTH,
    key_text,
    structure_problem,
    validation_problem,
)
from worker.ibkr.instructions.values import read_client_instruction_id

# clientInstructionId must stay exact as a JSON double (reference §4.2; worker.ibkr.ids).
MAX_CLIENT_INSTRUCTION_ID = ids.MAX_ID
_TOP_LEVEL = ("instructionType", "instruction", "instructions")
# instructionType values IBKR's own documents misspell (2.13), with the value to send.
_MISSPELT_TYPES = {"QUERY_WITHDAWABLE_FUNDS": "QUERY_WITHDRAWABLE_FUNDS"}
assert set(INSTRUCTION_MODELS) == set(ENDPOINTS), "every endpoint type needs a model"

__all__ = [
    "INSTRUCTION_MODELS",
    "MAX_CLIENT_INSTRUCTION_ID",
    "ParsedRequest",
    "RequestValidationError",
    "build_body",
    "member_account_id",
    "member_amount",
    "member_currency",
    "member_target_account_id",
    "parse_request",
]


class RequestValidationError(ValueError):
    """A request IBKR would refuse. `.field` is the JSON path (`instruction.amount`,
    `instructions[2].sourceAccountId`, `instructionType`); `.message` says what is wrong.
    `.unexpected` marks a failure of the validation itself (a bug), reported the same way
    so that the request still ends FAILED instead of being retried."""

    def __init__(self, field: str, message: str, *, unexpected: bool = False) -> None:
        self.field = field
        self.message = message
        self.unexpected = unexpected
        super().__init__(f"{field} {message.rstrip('.')}.")


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request: its type, form, endpoint and the instruction objects (`members`, one
    for a single request), each a plain dict in the request's key order (2.29 field names)."""

    instruction_type: str
    bulk: bool
    endpoint: Endpoint
    members: tuple[dict[str, Any], ...]


# --- parsing ----------------------------------------------------------------------------------


def _ordered(value: Any, raw: Any) -> Any:
    """The validated `value` as plain data, keyed in the order of `raw` (the request's own
    order) under the 2.29 names; fields sent as null are dropped."""
    if isinstance(value, BaseModel) and isinstance(raw, Mapping):
        model = type(value)
        canonical = model.canonical_name if issubclass(model, Model) else str
        result: dict[str, Any] = {}
        for key in raw:
            name = canonical(key)
            field_value = getattr(value, name)
            if isinstance(field_value, BaseModel | list):
                result[name] = _ordered(field_value, raw[key])
            elif field_value is not None:
                result[name] = field_value
        return result
    if isinstance(value, list) and isinstance(raw, list):
        return [_ordered(item, raw_item) for item, raw_item in zip(value, raw, strict=True)]
    return value


def _parse_member(instruction_type: str, raw: Any, prefix: str, *, v2: bool) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise RequestValidationError(prefix, "must be a JSON object")
    model: type[Instruction] = (V2_INSTRUCTION_MODELS if v2 else INSTRUCTION_MODELS)[
        instruction_type
    ]
    try:
        parsed = model.model_validate(dict(raw))
    except ValidationError as error:
        raise RequestValidationError(
            *validation_problem(error, prefix, instruction_type, model)
        ) from None
    member: dict[str, Any] = _ordered(parsed, raw)
    return member


def _instruction_type(raw: Mapping[str, Any]) -> str:
    for key in raw:
        if key not in _TOP_LEVEL:
            close = difflib.get_close_matches(key, _TOP_LEVEL, n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise RequestValidationError(
                key_text(key),
                "is not allowed at the top level; a request has instructionType and "
                f"instruction (or instructions for bulk){hint}",
            )
    instruction_type = raw.get("instructionType")
    if instruction_type is None:
        raise RequestValidationError("instructionType", "is required but missing")
    if not isinstance(instruction_type, str):
        raise RequestValidationError("instructionType", "must be a string")
    if instruction_type in _MISSPELT_TYPES:
        right = _MISSPELT_TYPES[instruction_type]
        raise RequestValidationError(
            "instructionType",
            f"{instruction_type!r} is a misspelling in IBKR's 2.13 document; use {right!r}",
        )
    return instruction_type


def _uses_positions(item: Any) -> bool:
    return isinstance(item, Mapping) and "positions" in item


def _parse(raw: object) -> ParsedRequest:
    if not isinstance(raw, Mapping):
        raise RequestValidationError(
            "request", "must be a JSON object with instructionType and instruction(s)"
        )
    problem = structure_problem(raw)
    if problem is not None:
        raise RequestValidationError(*problem)
    instruction_type = _instruction_type(raw)
    has_single, has_bulk = "instruction" in raw, "instructions" in raw
    if has_single and has_bulk:
        raise RequestValidationError(
            "instructions", "cannot be combined with instruction; send one or the other"
        )
    if not has_single and not has_bulk:
        raise RequestValidationError(
            "instruction", "is required (or instructions, a list, for a bulk request)"
        )
    items = [raw["instruction"]] if has_single else raw["instructions"]
    if not isinstance(items, list):
        raise RequestValidationError("instructions", "must be a list of instruction objects")
    if not items:
        raise RequestValidationError("instructions", "must hold at least one instruction")
    v2 = _uses_positions(items[0])
    for index, item in enumerate(items):
        if _uses_positions(item) != v2:
            raise RequestValidationError(
                f"instructions[{index}]",
                "mixes the two forms of a bulk request: give positions (v2) in every "
                "instruction or in none",
            )
    try:
        endpoint = endpoint_for(instruction_type, bulk=has_bulk, v2=v2)
    except UnknownInstructionType as error:
        raise RequestValidationError(
            "instructionType", str(error).removeprefix("instructionType ")
        ) from None
    if has_single:
        member = _parse_member(instruction_type, items[0], "instruction", v2=v2)
        return ParsedRequest(instruction_type, False, endpoint, (member,))
    members = tuple(
        _parse_member(instruction_type, item, f"instructions[{index}]", v2=v2)
        for index, item in enumerate(items)
    )
    seen: dict[int, int] = {}
    for index, member in enumerate(members):
        client_id = member.get("clientInstructionId")
        if client_id is None:
            continue
        if client_id in seen:
            raise RequestValidationError(
                f"instructions[{index}].clientInstructionId",
                f"repeats the clientInstructionId {client_id} of instructions[{seen[client_id]}];"
                " each instruction needs its own",
            )
        seen[client_id] = index
    return ParsedRequest(instruction_type, True, endpoint, members)


def parse_request(raw: object) -> ParsedRequest:
    """Validate an IBKR request body (single or bulk form) and return it normalised.

    Raises RequestValidationError naming the first offending field, and nothing else,
    whatever `raw` is.
    """
    try:
        return _parse(raw)
    except RequestValidationError:
        raise
    except RecursionError:
        raise RequestValidationError(
            "request", f"nests too deeply (IBKR requests nest at most {MAX_DEPTH} levels)"
        ) from None
    except Exception as error:  # a request must end FAILED, never be retried
        raise RequestValidationError(
            "request",
            f"could not be validated ({type(error).__name__}); send the JSON object IBKR "
            "documents for the instructionType",
            unexpected=True,
        ) from error


# --- bodies and member accessors --------------------------------------------------------------


def build_body(parsed: ParsedRequest, client_instruction_ids: Sequence[int]) -> dict[str, Any]:
    """The body to sign: the request with every member's clientInstructionId filled in.

    `client_instruction_ids` holds one id per member, in member order; a member that already
    carries an id must be given that same id. Raises ValueError otherwise.
    """
    if len(client_instruction_ids) != len(parsed.members):
        raise ValueError(
            f"build_body needs {len(parsed.members)} clientInstructionIds for this "
            f"{parsed.instruction_type} request, got {len(client_instruction_ids)}"
        )
    filled: list[dict[str, Any]] = []
    for index, (member, client_id) in enumerate(
        zip(parsed.members, client_instruction_ids, strict=True)
    ):
        if not ids.is_id(client_id):
            raise ValueError(
                f"clientInstructionId for member {index} must be an int, {ids.ID_DOMAIN}"
            )
        read_client_instruction_id(client_id)
        existing = member.get("clientInstructionId")
        if existing is not None and existing != client_id:
            raise ValueError(
                f"member {index} already has clientInstructionId {existing}; "
                f"cannot send it as {client_id}"
            )
        if existing is not None:
            filled.append(dict(member))
        else:
            filled.append({"clientInstructionId": client_id, **member})
    if parsed.bulk:
        return {"instructionType": parsed.instruction_type, "instructions": filled}
    return {"instructionType": parsed.instruction_type, "instruction": filled[0]}


def member_account_id(member: Mapping[str, Any]) -> str | None:
    """The account debited or acted on: `sourceAccountId`, else `accountId` (None for
    types without one, such as CANCEL_INSTRUCTION)."""
    value = member.get("sourceAccountId", member.get("accountId"))
    return value if isinstance(value, str) else None


def member_target_account_id(member: Mapping[str, Any]) -> str | None:
    """The account credited by an internal transfer (`targetAccountId`), or None."""
    value = member.get("targetAccountId")
    return value if isinstance(value, str) else None


def member_amount(member: Mapping[str, Any]) -> Decimal | None:
    """The cash amount (`amount`) of a cash instruction, or None."""
    value = member.get("amount")
    return value if isinstance(value, Decimal) else None


def member_currency(member: Mapping[str, Any]) -> str | None:
    """The currency of the instruction (`currency`, else the traded instrument's), or None."""
    value = member.get("currency")
    if isinstance(value, str):
        return value
    instrument = member.get("tradingInstrument")
    if isinstance(instrument, Mapping) and isinstance(instrument.get("currency"), str):
        return str(instrument["currency"])
    return None
