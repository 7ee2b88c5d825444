"""JSON schemas for the requests IBKR's reference describes but its 2.29 document does not:
the open-banking bank instructions and the v2 multi-position external asset transfers.

Written from the reference (§6.5, §6.6), in the 2.29 document's own style, so the sandbox checks
these requests the way it checks every other: against a schema, not against the client's models.

v2 (`/gw/api/v2/external-asset-transfers`): each FOP, DWAC or COMPLEX_ASSET_TRANSFER instruction
carries `currency` and `positions` (TradingInstrumentV2: `{conid}` or
`{tradingInstrumentDescription}`) in place of the v1 `tradingInstrument` and `quantity`. Where a
position's quantity lives is UNCERTAIN: the schemas allow a `quantity` on the instruction and
on each position, and `ibkr_sandbox.schemas` enforces the placement the sandbox's
`v2_position_quantity` switch names.
"""

from __future__ import annotations

import copy
from typing import Any

from worker.ibkr.schemas import instruction_schema

_NUMBER: dict[str, Any] = {"type": "number"}
_TEXT_32 = {"type": "string", "minLength": 1, "maxLength": 32}
_CURRENCY = {"type": "string", "minLength": 3, "maxLength": 3}
_PLAID_OPTIONS = {
    "type": "object",
    "properties": {
        "completionRedirectUri": {"type": "string"},
        "linkDisplayName": {"type": "string"},
        "isMobileApp": {"type": "boolean"},
    },
}

#: Bank instructions newer than the 2.29 document ([REF] create-bank-instructions).
OPEN_BANKING_INSTRUCTION: dict[str, Any] = {
    "type": "object",
    "required": ["clientInstructionId", "accountId", "currency", "serviceProvider"],
    "properties": {
        "clientInstructionId": _NUMBER,
        "accountId": _TEXT_32,
        "currency": _CURRENCY,
        "serviceProvider": {"type": "string", "enum": ["PLAID"]},
        "plaidOptions": _PLAID_OPTIONS,
    },
}
WITHDRAWAL_INSTRUCTION: dict[str, Any] = {
    "type": "object",
    "required": ["clientInstructionId", "accountId", "currency", "sourceDepositInstruction"],
    "properties": {
        "clientInstructionId": _NUMBER,
        "accountId": _TEXT_32,
        "currency": _CURRENCY,
        "sourceDepositInstruction": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["OPEN_BANKING"]},
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "ibReferenceId": {"type": "number", "minimum": 0},
            },
        },
    },
}
#: instructionType -> schema, for the types above (POST /bank-instructions, no bulk form).
BANK_INSTRUCTIONS_BEYOND_2_29: dict[str, dict[str, Any]] = {
    "OPEN_BANKING_INSTRUCTION": OPEN_BANKING_INSTRUCTION,
    "WITHDRAWAL_INSTRUCTION": WITHDRAWAL_INSTRUCTION,
}

#: The instructionTypes of the v2 external-asset-transfers endpoints.
V2_TYPES = ("DWAC", "FOP", "COMPLEX_ASSET_TRANSFER")


def _position_v2(description: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "conid": {"type": "number"},
            "tradingInstrumentDescription": description,
            "quantity": _NUMBER,
        },
        "oneOf": [{"required": ["conid"]}, {"required": ["tradingInstrumentDescription"]}],
    }


def v2_instruction_schema(instruction_type: str) -> dict[str, Any]:
    """The v2 schema of one `instruction_type` instruction: the 2.29 v1 schema with
    `tradingInstrument` and `quantity` replaced by `currency` and `positions`."""
    v1 = instruction_schema(instruction_type)
    if v1 is None or instruction_type not in V2_TYPES:
        raise LookupError(f"{instruction_type} has no v2 external-asset-transfers form")
    schema = copy.deepcopy(v1)
    instrument = schema["properties"].pop("tradingInstrument")
    description = _description_schema(instrument)
    schema["properties"]["quantity"] = _NUMBER
    schema["properties"]["currency"] = _CURRENCY
    schema["properties"]["positions"] = {
        "type": "array",
        "minItems": 1,
        "items": _position_v2(description),
    }
    required = [
        name for name in schema["required"] if name not in ("tradingInstrument", "quantity")
    ]
    schema["required"] = [*required, "currency", "positions"]
    # The v1 bound on the number of fields does not carry over to the new shape.
    schema.pop("maxProperties", None)
    schema.pop("minProperties", None)
    return schema


def _description_schema(instrument: dict[str, Any]) -> dict[str, Any]:
    """The tradingInstrumentDescription schema inside a resolved v1 tradingInstrument."""
    for part in instrument.get("allOf", [instrument]):
        for option in part.get("oneOf", []):
            found = option.get("properties", {}).get("tradingInstrumentDescription")
            if found is not None:
                return dict(found)
    raise LookupError("IBKR's 2.29 TradingInstrument has no tradingInstrumentDescription")
