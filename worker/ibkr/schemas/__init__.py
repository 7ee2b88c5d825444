"""IBKR's own OpenAPI documents (Funds & Banking part), shipped as package data.

`ibkr-openapi-2.29-funds-banking.json` is trusted for paths and request schemas,
`ibkr-openapi-2.13-funds-banking.json` for error, 201-vs-202 and 208 bodies (reference README).
Both are unmodified copies; they serve our tests and the sandbox's request validation.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any, Literal

OpenApiVersion = Literal["2.13", "2.29"]

# instructionType -> component schema of its instruction object in the 2.29 document.
# OPEN_BANKING_INSTRUCTION and WITHDRAWAL_INSTRUCTION are newer than 2.29 and have none.
REQUEST_COMPONENTS: dict[str, str] = {
    "INTERNAL_CASH_TRANSFER": "InternalCashTransferInstruction",
    "INTERNAL_POSITION_TRANSFER": "InternalPositionTransferInstruction",
    "DEPOSIT": "DepositFundsInstruction",
    "WITHDRAWAL": "WithdrawFundsInstruction",
    "QUERY_WITHDRAWABLE_FUNDS": "QueryWithdrawableFunds",
    "QUERY_IRA_CONTRIBUTIONS": "QueryIRAContributions",
    "QUERY_WITHDRAWABLE_CASH_EQUITY": "QueryWithdrawableCashEquity",
    "FOP": "FopInstruction",
    "DWAC": "DwacInstruction",
    "COMPLEX_ASSET_TRANSFER": "ComplexAssetTransferInstruction",
    "EXTERNAL_POSITION_TRANSFER": "ExternalPositionTransfer",
    "ACH_INSTRUCTION": "AchInstruction",
    "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION": "TraditionalBankInstructionVerification",
    "DELETE_BANK_INSTRUCTION": "DeleteBankInstruction",
    "PREDEFINED_DESTINATION_INSTRUCTION": "PredefinedDestinationInstruction",
    "EDDA_INSTRUCTION": "EddaInstruction",
    "QUERY_BANK_INSTRUCTION": "QueryBankInstruction",
    "QUERY_RECURRING_INSTRUCTIONS": "QueryRecurringInstructions",
    "QUERY_RECENT_RECURRING_EVENTS": "QueryRecentRecurringEvents",
    "CANCEL_INSTRUCTION": "CancelInstruction",
    "QUERY_RECENT_INSTRUCTIONS": "QueryRecentInstructions",
}


@cache
def _load(version: OpenApiVersion) -> dict[str, Any]:
    name = f"ibkr-openapi-{version}-funds-banking.json"
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def openapi_document(version: OpenApiVersion = "2.29") -> dict[str, Any]:
    """A private copy of IBKR's OpenAPI document `version` (parsed once per process)."""
    return copy.deepcopy(_load(version))


def _resolve(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            target = components[ref.rsplit("/", 1)[1]]
            return _resolve(target, components)
        return {key: _resolve(value, components) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, components) for item in node]
    return node


def instruction_schema(instruction_type: str) -> dict[str, Any] | None:
    """The 2.29 JSON schema of one instruction object of `instruction_type`, `$ref`s resolved
    (None for types the 2.29 document does not describe)."""
    component = REQUEST_COMPONENTS.get(instruction_type)
    if component is None:
        return None
    components = _load("2.29")["components"]["schemas"]
    resolved: dict[str, Any] = _resolve(components[component], components)
    return resolved


def request_schema(instruction_type: str, *, bulk: bool) -> dict[str, Any] | None:
    """The 2.29 JSON schema of a whole request body of `instruction_type`.

    The documented envelopes list every type of an endpoint under `oneOf` (which several query
    types satisfy at once) and leave bulk `instructions` items untyped; this narrows the
    envelope to the one instruction schema of `instruction_type`. None when 2.29 has none.
    """
    item = instruction_schema(instruction_type)
    if item is None:
        return None
    envelope: dict[str, Any] = {
        "type": "object",
        "properties": {"instructionType": {"type": "string", "enum": [instruction_type]}},
        "required": ["instructionType", "instructions" if bulk else "instruction"],
        "additionalProperties": False,
    }
    if bulk:
        envelope["properties"]["instructions"] = {"type": "array", "minItems": 1, "items": item}
    else:
        envelope["properties"]["instruction"] = item
    return envelope
