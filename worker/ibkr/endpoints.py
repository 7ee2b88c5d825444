"""Which IBKR endpoint serves which instructionType (reference §5, OpenAPI 2.29 paths).

One table, :data:`ENDPOINTS`, maps each request `instructionType` to its single and `:bulk`
endpoint; :data:`V2_ENDPOINTS` the types that also have the v2 multi-position form
(`/gw/api/v2/external-asset-transfers`, reference §6.5); the status GETs are module
constants. Everything here is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

_V1 = "/gw/api/v1"
_V2 = "/gw/api/v2"


@dataclass(frozen=True)
class Endpoint:
    """One IBKR operation.

    `path` is the path template (`/gw/api/v1/instructions/{instructionId}` for a GET);
    `success_codes` are the 2xx codes IBKR documents for it; `signed` means the body must be a
    JWS (the SIGNED_JWT policy: every Funds & Banking POST); `scope` is the OAuth scope needed.
    """

    method: str
    path: str
    scope: str
    success_codes: frozenset[int]
    bulk: bool
    signed: bool

    @property
    def key(self) -> str:
        """`METHOD /path/template`: the rate-limit and log key of this endpoint."""
        return f"{self.method} {self.path}"

    def url_path(self, **path_params: int | str) -> str:
        """The concrete path, with `{name}` placeholders filled from `path_params`."""
        return self.path.format(**path_params)


class UnknownInstructionType(ValueError):
    """The instructionType is not one this worker can send (or has no bulk form)."""


def _post(path: str, scope: str, codes: set[int], *, bulk: bool = False) -> Endpoint:
    return Endpoint("POST", _V1 + path, scope, frozenset(codes), bulk, signed=True)


def _get(path: str, codes: set[int]) -> Endpoint:
    return Endpoint("GET", _V1 + path, "instructions.read", frozenset(codes), False, signed=False)


# Bulk answers: 202 when every item was accepted, 207 when some were business-rejected ([REF]).
_BULK_CODES = {202, 207}

INTERNAL_CASH_TRANSFERS = _post("/internal-cash-transfers", "transfers.write", {201, 202})
INTERNAL_CASH_TRANSFERS_BULK = _post(
    "/internal-cash-transfers:bulk", "transfers.write", _BULK_CODES, bulk=True
)
INTERNAL_ASSET_TRANSFERS = _post("/internal-asset-transfers", "transfers.write", {202})
INTERNAL_ASSET_TRANSFERS_BULK = _post(
    "/internal-asset-transfers:bulk", "transfers.write", _BULK_CODES, bulk=True
)
EXTERNAL_CASH_TRANSFERS = _post("/external-cash-transfers", "transfers.write", {202})
EXTERNAL_CASH_TRANSFERS_BULK = _post(
    "/external-cash-transfers:bulk", "transfers.write", _BULK_CODES, bulk=True
)
# Withdrawable funds answer 201 at once; IRA contribution queries 202 and are polled.
EXTERNAL_CASH_TRANSFERS_QUERY = _post(
    "/external-cash-transfers/query", "transfers.read", {201, 202}
)
BALANCES_QUERY = _post("/balances/query", "balances.read", {201})
EXTERNAL_ASSET_TRANSFERS = _post("/external-asset-transfers", "transfers.write", {202})
EXTERNAL_ASSET_TRANSFERS_BULK = _post(
    "/external-asset-transfers:bulk", "transfers.write", _BULK_CODES, bulk=True
)
BANK_INSTRUCTIONS = _post("/bank-instructions", "bank-instructions.write", {202})
BANK_INSTRUCTIONS_BULK = _post(
    "/bank-instructions:bulk", "bank-instructions.write", _BULK_CODES, bulk=True
)
BANK_INSTRUCTIONS_QUERY = _post("/bank-instructions/query", "bank-instructions.read", {201})
INSTRUCTIONS_CANCEL = _post("/instructions/cancel", "instructions.write", {201})
INSTRUCTIONS_CANCEL_BULK = _post(
    "/instructions/cancel:bulk", "instructions.write", _BULK_CODES, bulk=True
)
INSTRUCTIONS_QUERY = _post("/instructions/query", "instructions.read", {202})
# v2: several positions per FOP / DWAC / complex transfer (reference §6.5, [REF], [IDX-2.39]).
EXTERNAL_ASSET_TRANSFERS_V2 = Endpoint(
    "POST", _V2 + "/external-asset-transfers", "transfers.write", frozenset({202}), False, True
)
EXTERNAL_ASSET_TRANSFERS_V2_BULK = Endpoint(
    "POST",
    _V2 + "/external-asset-transfers:bulk",
    "transfers.write",
    frozenset(_BULK_CODES),
    True,
    True,
)

# Status GETs: 208 means the clientInstructionId was used for more than one transaction.
CLIENT_INSTRUCTION_STATUS = _get("/client-instructions/{clientInstructionId}", {200, 208})
INSTRUCTION_STATUS = _get("/instructions/{instructionId}", {200, 208})
INSTRUCTION_SET_STATUS = _get("/instruction-sets/{instructionSetId}", {200, 207})


@dataclass(frozen=True)
class EndpointPair:
    """The single endpoint of an instructionType and its `:bulk` twin (None: no bulk form)."""

    single: Endpoint
    bulk: Endpoint | None


def _pairs(single: Endpoint, bulk: Endpoint | None, *types: str) -> dict[str, EndpointPair]:
    return {instruction_type: EndpointPair(single, bulk) for instruction_type in types}


# Request instructionTypes (reference §5/§6). Which types have a `:bulk` form follows the
# `instructionType` enums of the 2.29 bulk operations: queries have none, and neither do the
# open-banking bank instructions (not in the 2.29 bulk enum).
ENDPOINTS: dict[str, EndpointPair] = {
    **_pairs(INTERNAL_CASH_TRANSFERS, INTERNAL_CASH_TRANSFERS_BULK, "INTERNAL_CASH_TRANSFER"),
    **_pairs(INTERNAL_ASSET_TRANSFERS, INTERNAL_ASSET_TRANSFERS_BULK, "INTERNAL_POSITION_TRANSFER"),
    **_pairs(EXTERNAL_CASH_TRANSFERS, EXTERNAL_CASH_TRANSFERS_BULK, "DEPOSIT", "WITHDRAWAL"),
    **_pairs(
        EXTERNAL_CASH_TRANSFERS_QUERY, None, "QUERY_WITHDRAWABLE_FUNDS", "QUERY_IRA_CONTRIBUTIONS"
    ),
    **_pairs(BALANCES_QUERY, None, "QUERY_WITHDRAWABLE_CASH_EQUITY"),
    **_pairs(
        EXTERNAL_ASSET_TRANSFERS,
        EXTERNAL_ASSET_TRANSFERS_BULK,
        "FOP",
        "DWAC",
        "COMPLEX_ASSET_TRANSFER",
        "EXTERNAL_POSITION_TRANSFER",
    ),
    **_pairs(
        BANK_INSTRUCTIONS,
        BANK_INSTRUCTIONS_BULK,
        "ACH_INSTRUCTION",
        "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
        "DELETE_BANK_INSTRUCTION",
        "PREDEFINED_DESTINATION_INSTRUCTION",
        "EDDA_INSTRUCTION",
    ),
    **_pairs(BANK_INSTRUCTIONS, None, "OPEN_BANKING_INSTRUCTION", "WITHDRAWAL_INSTRUCTION"),
    **_pairs(
        BANK_INSTRUCTIONS_QUERY,
        None,
        "QUERY_BANK_INSTRUCTION",
        "QUERY_RECURRING_INSTRUCTIONS",
        "QUERY_RECENT_RECURRING_EVENTS",
    ),
    **_pairs(INSTRUCTIONS_CANCEL, INSTRUCTIONS_CANCEL_BULK, "CANCEL_INSTRUCTION"),
    **_pairs(INSTRUCTIONS_QUERY, None, "QUERY_RECENT_INSTRUCTIONS"),
}

# The v2 form of the external asset transfers that have one (a request with `positions`).
V2_ENDPOINTS: dict[str, EndpointPair] = _pairs(
    EXTERNAL_ASSET_TRANSFERS_V2,
    EXTERNAL_ASSET_TRANSFERS_V2_BULK,
    "FOP",
    "DWAC",
    "COMPLEX_ASSET_TRANSFER",
)

INSTRUCTION_TYPES: frozenset[str] = frozenset(ENDPOINTS)
BULK_INSTRUCTION_TYPES: frozenset[str] = frozenset(
    name for name, pair in ENDPOINTS.items() if pair.bulk is not None
)
STATUS_ENDPOINTS: tuple[Endpoint, ...] = (
    CLIENT_INSTRUCTION_STATUS,
    INSTRUCTION_STATUS,
    INSTRUCTION_SET_STATUS,
)


def endpoint_for(instruction_type: str, *, bulk: bool, v2: bool = False) -> Endpoint:
    """The endpoint that accepts `instruction_type` (the `:bulk` one when `bulk`; the v2
    multi-position one when `v2`).

    Raises UnknownInstructionType when the type is not supported, has no bulk form, or has no
    v2 form.
    """
    if v2 and instruction_type in ENDPOINTS and instruction_type not in V2_ENDPOINTS:
        raise UnknownInstructionType(
            f"instructionType {instruction_type!r} has no v2 form with positions; only "
            f"{', '.join(sorted(V2_ENDPOINTS))} do (send tradingInstrument and quantity instead)"
        )
    pair = (V2_ENDPOINTS if v2 else ENDPOINTS).get(instruction_type)
    if pair is None:
        hint = ""
        if instruction_type.upper() in ENDPOINTS:
            upper = instruction_type.upper()
            hint = f" (instructionType values are upper case: did you mean {upper!r}?)"
        raise UnknownInstructionType(
            f"instructionType {instruction_type!r} is not one IBKR's Funds & Banking API accepts"
            f"{hint}; use one of {', '.join(sorted(ENDPOINTS))}"
        )
    if not bulk:
        return pair.single
    if pair.bulk is None:
        raise UnknownInstructionType(
            f"instructionType {instruction_type!r} has no bulk endpoint; send each instruction as "
            "a single request ({'instructionType', 'instruction'})"
        )
    return pair.bulk


def endpoint_at(path: str) -> Endpoint:
    """The POST endpoint whose path is `path` (as stored with a submission).

    Raises UnknownInstructionType for a path no instructionType is sent to.
    """
    for table in (ENDPOINTS, V2_ENDPOINTS):
        for pair in table.values():
            for endpoint in (pair.single, pair.bulk):
                if endpoint is not None and endpoint.path == path:
                    return endpoint
    raise UnknownInstructionType(f"no IBKR instruction endpoint has the path {path!r}")
