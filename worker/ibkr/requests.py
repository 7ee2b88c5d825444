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
    FieldProblem,
    Instruction,
    Model,
)
from worker.ibkr.instructions.values import read_client_instruction_id

# clientInstructionId must stay exact as a JSON double (reference §4.2; worker.ibkr.ids).
MAX_CLIENT_INSTRUCTION_ID = ids.MAX_ID
#: No IBKR request nests deeper than a few levels; far deeper input is refused, not walked.
MAX_DEPTH = 16
_TOP_LEVEL = ("instructionType", "instruction", "instructions")
_NON_ASCII = "contains non-ASCII characters, which a signed IBKR body cannot carry; use ASCII only"
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


# --- the shape of the input, before any model sees it -----------------------------------------

_MAX_KEY_SHOWN = 64


def _key_text(key: str) -> str:
    """A key as a field path shows it: `""` for an empty key, a long one cut short."""
    if not key:
        return '""'
    return key if len(key) <= _MAX_KEY_SHOWN else key[:_MAX_KEY_SHOWN] + "..."


def _path(where: tuple[str | int, ...]) -> str:
    path = ""
    for part in where:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{_key_text(part)}" if path else _key_text(part)
    return path or "request"


_LEAF_TYPES = frozenset({int, float, bool, Decimal, type(None)})


def _structure_problem(raw: Any) -> tuple[str, str] | None:
    """(path, problem) for the first key or string that is not ASCII, key that is not a string,
    or container nested past MAX_DEPTH; None when there is none. Walked without recursion."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(raw, ())]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                return _path(where), _NON_ASCII
            continue
        if isinstance(value, dict | list | tuple) or isinstance(value, Mapping):
            if len(where) >= MAX_DEPTH:
                return _path(where), f"nests deeper than {MAX_DEPTH} levels; no IBKR request does"
        else:
            continue
        is_mapping = isinstance(value, Mapping)
        items: Any = value.items() if isinstance(value, Mapping) else enumerate(value)
        containers: list[tuple[Any, tuple[str | int, ...]]] = []
        for key, item in items:
            if is_mapping:
                if not isinstance(key, str):
                    return _path(where), "has a key that is not a string"
                if not key.isascii():
                    return _path((*where, key)), _NON_ASCII
            kind = type(item)
            if kind in _LEAF_TYPES:
                continue
            if kind is str or isinstance(item, str):
                if not item.isascii():
                    return _path((*where, key)), _NON_ASCII
            elif isinstance(item, dict | list | tuple) or isinstance(item, Mapping):
                containers.append((item, (*where, key)))
        stack.extend(reversed(containers))
    return None


# --- pydantic errors in words an operator acts on ---------------------------------------------


def _join(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{_key_text(str(part))}" if path else _key_text(str(part))
    return path


def _literal_options(expected: str) -> str:
    # pydantic writes "'A', 'B' or 'C'"; numbers come without quotes.
    parts = [part.strip().strip("'") for part in expected.replace(" or ", ",").split(",")]
    return ", ".join(part for part in parts if part)


def _suggestion(name: str, model: type[Model]) -> str:
    known = [*model.model_fields, *model.ALIASES]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(
    error: Mapping[str, Any], instruction_type: str, model: type[Model]
) -> tuple[list[int | str], str]:
    """(extra location, message) for one pydantic error."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldProblem):
        parts: list[int | str] = [
            int(part) if part.isdigit() else part for part in cause.field.split(".") if part
        ]
        return parts, cause.message
    if kind == "missing":
        return [], "is required but missing"
    if kind == "extra_forbidden":
        loc = error.get("loc", ())
        hint = _suggestion(str(loc[-1]), model) if len(loc) == 1 else ""
        return [], f"is not a field IBKR accepts for {instruction_type}; remove it{hint}"
    if kind == "string_too_long":
        return [], f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_too_short":
        minimum = ctx.get("min_length")
        return [], "must not be empty" if minimum == 1 else f"must be at least {minimum} long"
    if kind in {"string_type", "string_unicode"}:
        return [], "must be a string"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if "A-Z" in pattern:
            return [], "must be a three-letter upper-case ISO 4217 currency code"
        if "0-9]{4}" in pattern:
            return [], "must be a four-digit year"
        return [], f"must match {pattern}"
    if kind == "literal_error":
        return [], f"must be one of {_literal_options(str(ctx.get('expected', '')))}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return [], "must be a JSON object"
    if kind in {"list_type", "too_short"}:
        return [], "must be a non-empty list"
    if kind in {"bool_type", "bool_parsing"}:
        return [], "must be true or false"
    if kind == "value_error":
        return [], str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return [], "is invalid"


def _validation_error(
    error: ValidationError, prefix: str, instruction_type: str, model: type[Model]
) -> RequestValidationError:
    first = error.errors(include_url=False, include_input=False)[0]
    loc = list(first.get("loc", ()))
    extra_loc, message = _describe(first, instruction_type, model)
    # Tagged unions and `Literal` behind a validator report sub-locations; keep fields only.
    loc = [
        part
        for part in loc
        if not (
            isinstance(part, str)
            and (part.startswith(("literal[", "function-")) or part in {"bool", "str"})
        )
    ]
    return RequestValidationError(_join(prefix, [*loc, *extra_loc]), message)


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
        raise _validation_error(error, prefix, instruction_type, model) from None
    member: dict[str, Any] = _ordered(parsed, raw)
    return member


def _instruction_type(raw: Mapping[str, Any]) -> str:
    for key in raw:
        if key not in _TOP_LEVEL:
            close = difflib.get_close_matches(key, _TOP_LEVEL, n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise RequestValidationError(
                _key_text(key),
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
    problem = _structure_problem(raw)
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
