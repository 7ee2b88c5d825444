"""The admin API under `/__admin` (loopback clients only): the sandbox's test hooks and
inspection over HTTP, the same operations `Sandbox` offers as methods."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from ibkr_sandbox.gateway import FAULT_HOLDS, FAULT_RATES
from ibkr_sandbox.messages import Request, Response, is_loopback, json_response, problem
from ibkr_sandbox.port import SandboxPort


def admin(
    sandbox: SandboxPort, request: Request, route: str, query: dict[str, list[str]]
) -> Response:
    """Answer an admin request (`route`: the path below `/__admin`)."""
    if not is_loopback(request.client_host):
        return problem(403, "The admin API answers loopback clients only")
    try:
        data = json.loads(request.body or b"{}", parse_float=Decimal)
    except ValueError:
        return problem(400, "The admin API takes a JSON object")
    if not isinstance(data, dict):
        return problem(400, "The admin API takes a JSON object")
    try:
        return _route(sandbox, request.method, route, query, data)
    except KeyError as error:
        return problem(404, str(error.args[0] if error.args else error))
    except (ValueError, TypeError) as error:
        return problem(400, str(error))


def _route(
    sandbox: SandboxPort,
    method: str,
    route: str,
    query: dict[str, list[str]],
    data: dict[str, Any],
) -> Response:
    if method == "GET" and route == "/ledger-counts":
        return json_response(200, {str(k): v for k, v in sandbox.ledger_counts().items()})
    if method == "GET" and route == "/stats":
        include = query.get("requests", ["false"])[0].lower() in ("1", "true", "yes")
        return json_response(200, sandbox.stats(include_requests=include))
    if method == "GET" and route == "/final-transitions":
        return json_response(200, {str(k): v for k, v in sandbox.final_transitions().items()})
    if method == "GET" and route == "/clock":
        return json_response(200, sandbox.clock_state())
    if method == "POST" and route == "/clock/advance":
        sandbox.advance(float(data.get("seconds", 0)))
        return json_response(200, sandbox.clock_state())
    if method == "GET" and route == "/balances":
        return json_response(200, sandbox.balances())
    if method == "GET" and route == "/arrivals":
        arrivals = [
            {"at": arrival.at, "clientId": arrival.client_id, "endpoint": arrival.endpoint}
            for arrival in sandbox.arrivals()
        ]
        return json_response(200, {"arrivals": arrivals})
    if method == "POST" and route == "/faults":
        unknown = sorted(set(data) - set(FAULT_RATES) - set(FAULT_HOLDS))
        if unknown:
            known = ", ".join((*FAULT_RATES, *FAULT_HOLDS))
            raise ValueError(f"unknown fault settings {unknown}; the known ones are {known}")
        return json_response(
            200, sandbox.set_faults(**{name: float(value) for name, value in data.items()})
        )
    if method == "GET" and route == "/duplicate-post":
        return json_response(200, {"duplicatePost": sandbox.duplicate_post()})
    if method == "POST" and route == "/duplicate-post":
        policy = sandbox.set_duplicate_post(str(data.get("duplicatePost", "")))
        return json_response(200, {"duplicatePost": policy})
    if method == "POST" and route == "/revoke-tokens":
        return json_response(200, {"revoked": sandbox.revoke_tokens()})
    if method == "POST" and route == "/downtime":
        end = sandbox.downtime_now(float(data.get("seconds", 0)))
        return json_response(200, {"until": end})
    if method == "POST" and route == "/clients":
        sandbox.register_client(
            client_id=str(data["clientId"]),
            key_id=str(data["keyId"]),
            public_key_pem=str(data["publicKeyPem"]).encode("ascii"),
            scopes=data.get("scopes"),
        )
        return json_response(201, {"clientId": data["clientId"], "keyId": data["keyId"]})
    match = re.match(r"^/deposits/(\d+)/arrived$", route)
    if method == "POST" and match:
        return json_response(200, sandbox.deposit_arrived(int(match.group(1))))
    match = re.match(r"^/micro-amounts/(\d+)$", route)
    if method == "GET" and match:
        first, second = sandbox.micro_amounts(int(match.group(1)))
        return json_response(200, {"creditAmount1": first, "creditAmount2": second})
    match = re.match(r"^/instructions/(\d+)$", route)
    if method == "GET" and match:
        return json_response(200, sandbox.instruction(int(match.group(1))))
    return problem(404, f"No such admin resource: {method} {route}")
