"""The sandbox's paths: the gateway's prefixes, the funds POST endpoints with the scope each
needs, the status GETs, and how statistics name an endpoint."""

from __future__ import annotations

import re

GW = "/gw/api/v1"
GW_V2 = "/gw/api/v2"
#: Routes are paths relative to GW; a v2 path is named by this prefix and its rest.
V2_ROUTE = "/v2"
JWKS_PATH = "/oauth2/api/v1/jwks"
ADMIN = "/__admin"

#: Funds POST endpoints (relative to /gw/api/v1): the scope they need and whether bulk.
FUNDS_POSTS: dict[str, tuple[str, bool]] = {
    "/internal-cash-transfers": ("transfers.write", False),
    "/internal-cash-transfers:bulk": ("transfers.write", True),
    "/internal-asset-transfers": ("transfers.write", False),
    "/internal-asset-transfers:bulk": ("transfers.write", True),
    "/external-cash-transfers": ("transfers.write", False),
    "/external-cash-transfers:bulk": ("transfers.write", True),
    "/external-cash-transfers/query": ("transfers.read", False),
    "/balances/query": ("balances.read", False),
    "/external-asset-transfers": ("transfers.write", False),
    "/external-asset-transfers:bulk": ("transfers.write", True),
    "/bank-instructions": ("bank-instructions.write", False),
    "/bank-instructions:bulk": ("bank-instructions.write", True),
    "/bank-instructions/query": ("bank-instructions.read", False),
    "/instructions/cancel": ("instructions.write", False),
    "/instructions/cancel:bulk": ("instructions.write", True),
    "/instructions/query": ("instructions.read", False),
    V2_ROUTE + "/external-asset-transfers": ("transfers.write", False),
    V2_ROUTE + "/external-asset-transfers:bulk": ("transfers.write", True),
}
#: The status GETs: a route pattern (capturing the id) and its template.
STATUS_GETS = (
    (re.compile(r"^/client-instructions/([^/]+)$"), "/client-instructions/{clientInstructionId}"),
    (re.compile(r"^/instructions/([^/]+)$"), "/instructions/{instructionId}"),
    (re.compile(r"^/instruction-sets/([^/]+)$"), "/instruction-sets/{instructionSetId}"),
)
_GATEWAY_PATH = re.compile(r"^(/gw/api/v\d+)(/.*)$")


def route_template(route: str) -> str:
    """A gateway route (below /gw/api/vN) with its ids replaced by their names."""
    for pattern, template in STATUS_GETS:
        if pattern.match(route):
            return template
    return route


def endpoint_name(method: str, path: str) -> str:
    """How the statistics name an endpoint: METHOD and path template
    (`GET /gw/api/v1/client-instructions/{clientInstructionId}`)."""
    match = _GATEWAY_PATH.match(path)
    if match is None:
        return f"{method} {path}"
    return f"{method} {match.group(1)}{route_template(match.group(2))}"


def is_gateway(path: str) -> bool:
    return path.startswith((GW + "/", GW_V2 + "/"))


def route_of(path: str) -> str:
    """The route of a gateway path: relative to GW, a v2 path as `/v2/...`."""
    if path.startswith(GW_V2 + "/"):
        return V2_ROUTE + path[len(GW_V2) :]
    return path[len(GW) :]


def gateway_path(route: str) -> str:
    """The gateway path of a route (the inverse of `route_of`)."""
    if route.startswith(V2_ROUTE + "/"):
        return GW_V2 + route[len(V2_ROUTE) :]
    return GW + route


def is_funds(route: str) -> bool:
    """Funds & Banking routes (subject to its downtime); echo and enumerations are not."""
    return not route.startswith(("/echo/", "/enumerations/", "/participating-banks"))


def is_known(route: str) -> bool:
    """A route the gateway serves with some method (405 rather than 404 for another)."""
    return route in FUNDS_POSTS or any(pattern.match(route) for pattern, _ in STATUS_GETS)
