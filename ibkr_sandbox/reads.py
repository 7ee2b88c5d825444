"""The gateway's GETs: status by clientInstructionId, instructionId or instruction set, the
HTTPS echo, participating banks and the enumerations."""

from __future__ import annotations

from ibkr_sandbox import fixtures
from ibkr_sandbox.auth import AccessToken
from ibkr_sandbox.checks import checked, render
from ibkr_sandbox.messages import PATH_DETAIL, Request, Response, json_response, problem, received
from ibkr_sandbox.port import SandboxPort
from ibkr_sandbox.routes import FUNDS_POSTS, STATUS_GETS
from worker.ibkr import ids


def get(
    sandbox: SandboxPort,
    request: Request,
    route: str,
    query: dict[str, list[str]],
    token: AccessToken,
    endpoint: str,
) -> Response:
    """Answer a GET of `route` (relative to the gateway) for an authenticated client."""
    for pattern, template in STATUS_GETS:
        match = pattern.match(route)
        if match is None:
            continue
        refused = checked(sandbox, token, ("instructions.read",), endpoint, received(request))
        if refused is not None:
            return refused
        return _status(sandbox, template, match.group(1), token)
    if route == "/echo/https":
        refused = checked(sandbox, token, ("echo.read",), endpoint, received(request))
        if refused is not None:
            return refused
        parameters = {name: values[0] for name, values in query.items()}
        return json_response(
            200,
            {"requestMethod": "GET", "securityPolicy": "HTTPS", "queryParameters": parameters},
        )
    if route == "/participating-banks" or route.startswith("/enumerations/"):
        scopes = ("enumerations.read", "accounts.read")
        refused = checked(sandbox, token, scopes, endpoint, received(request))
        if refused is not None:
            return refused
        return _enumeration(route, query)
    return problem(405 if route in FUNDS_POSTS else 404, f"No such resource: GET {route}")


def _status(sandbox: SandboxPort, template: str, raw_id: str, token: AccessToken) -> Response:
    ledger = sandbox.ledger
    # Ids are signed (worker.ibkr.ids): `/instruction-sets/-1988905739` is a real path.
    number = ids.as_id(raw_id)
    if number is None:
        return problem(400, PATH_DETAIL)
    client = token.client
    if template.startswith("/instruction-sets"):
        found_set = ledger.instruction_set(client, number)
        if found_set is None:
            return problem(404, "No such instruction set found", instructionSetId=number)
        return render(sandbox, 200, found_set)
    if template.startswith("/client-instructions"):
        found = ledger.by_client_instruction_id(client, number)
    else:
        found = ledger.by_instruction_id(client, number)
    if found is None:
        return problem(
            404,
            f"Funds & Banking: Could not get status for clientId: {client.client_id}, "
            f"transactionId : {number}",
        )
    return render(sandbox, found[0], found[1])


def _enumeration(route: str, query: dict[str, list[str]]) -> Response:
    def arg(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    if route == "/participating-banks":
        kind = arg("type")
        if not kind:
            return problem(400, PATH_DETAIL)
        banks = fixtures.PARTICIPATING_BANKS.get(kind, [])
        return json_response(200, {"type": kind, "participatingBanks": banks})
    name = route[len("/enumerations/") :]
    if name == "complex-asset-transfer":
        if arg("instructionType") != "COMPLEX_ASSET_TRANSFER":
            return problem(400, PATH_DETAIL)
        brokers = list(fixtures.COMPLEX_ASSET_BROKERS)
        return json_response(200, {"instructionType": "COMPLEX_ASSET_TRANSFER", "brokers": brokers})
    if name in fixtures.FULL_TRANSFER_BROKERS:
        return json_response(
            200, {"enumerationsType": name, "jsonData": fixtures.FULL_TRANSFER_BROKERS[name]}
        )
    if name == "wire-instructions":
        account_id, currency = arg("accountId"), arg("currency")
        if not account_id or not currency:
            return problem(400, PATH_DETAIL)
        return json_response(200, fixtures.wire_instructions(account_id, currency))
    return problem(400, PATH_DETAIL)
