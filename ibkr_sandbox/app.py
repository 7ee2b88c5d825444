"""Routing and HTTP semantics of the sandbox, independent of any socket: `SandboxApp.handle`
turns a `Request` into a `Response`. The HTTP server and the in-process httpx transport both
call it, so tests over a socket and in-process see the same behaviour."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from ibkr_sandbox import fixtures
from ibkr_sandbox.auth import (
    SIGNED_JWT_POLICY_MESSAGE,
    TOKEN_PATH,
    AccessToken,
    AuthFailure,
    Authority,
    parse_compact_jws,
)
from ibkr_sandbox.clock import VirtualClock
from ibkr_sandbox.config import SandboxConfig
from ibkr_sandbox.gateway import (
    FAULT_HOLDS,
    FAULT_RATES,
    Arrival,
    Arrivals,
    Downtime,
    Faults,
    RateLimiter,
    Stats,
    quirk_body,
    retry_after_header,
)
from ibkr_sandbox.ledger import Ledger, QueryThrottled
from ibkr_sandbox.schemas import (
    NOT_AN_OBJECT,
    RequestInvalid,
    ValidatedRequest,
    validate_request,
)
from worker import jsontext
from worker.ibkr import ids

GW = "/gw/api/v1"
GW_V2 = "/gw/api/v2"
#: Routes are paths relative to GW; a v2 path is named by this prefix and its rest.
V2_ROUTE = "/v2"
JWKS_PATH = "/oauth2/api/v1/jwks"
ADMIN = "/__admin"
PATH_DETAIL = (
    "Request path does not contain all expected fields, please consult provided documentation, "
    "escalate to IB contact if issue persists"
)

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
_STATUS_GETS = (
    (re.compile(r"^/client-instructions/([^/]+)$"), "/client-instructions/{clientInstructionId}"),
    (re.compile(r"^/instructions/([^/]+)$"), "/instructions/{instructionId}"),
    (re.compile(r"^/instruction-sets/([^/]+)$"), "/instruction-sets/{instructionSetId}"),
)
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    """One HTTP request as the app sees it; `headers` keys are lower case."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""
    client_host: str = "127.0.0.1"
    #: Real POSIX seconds at receipt (request line read, or entry of the in-process
    #: transport); None: stamped when `SandboxApp.handle` starts.
    received_at: float | None = None


@dataclass
class Response:
    """One HTTP answer. `drop`: close the connection without answering (a lost response).
    `hold_s`: wait this many real seconds before answering; then, when `complete` is set, call
    it for the answer (a POST held in flight registers only then), else answer this one."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    close: bool = False
    hold_s: float = 0.0
    complete: Callable[[], Response] | None = None


_GATEWAY_PATH = re.compile(r"^(/gw/api/v\d+)(/.*)$")


def route_template(route: str) -> str:
    """A gateway route (below /gw/api/vN) with its ids replaced by their names."""
    for pattern, template in _STATUS_GETS:
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


def _unverified_claim(token: str, names: tuple[str, ...]) -> str:
    """The first of the claims `names` a compact JWS carries, read without verifying it;
    "" when it is not a JWS or carries none of them as a string."""
    try:
        claims = json.loads(parse_compact_jws(token).payload)
    except ValueError:
        return ""
    if not isinstance(claims, dict):
        return ""
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _route(path: str) -> str:
    """The route of a gateway path: relative to GW, a v2 path as `/v2/...`."""
    if path.startswith(GW_V2 + "/"):
        return V2_ROUTE + path[len(GW_V2) :]
    return path[len(GW) :]


def _gateway_path(route: str) -> str:
    """The gateway path of a route (the inverse of `_route`)."""
    if route.startswith(V2_ROUTE + "/"):
        return GW_V2 + route[len(V2_ROUTE) :]
    return GW + route


def is_loopback(host: str) -> bool:
    """True for a loopback client address (IPv4, IPv6, IPv4-mapped IPv6)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _received(request: Request) -> float:
    """The request's receipt stamp (`SandboxApp.handle` sets it before routing)."""
    if request.received_at is None:
        raise RuntimeError("a request reached routing without a receipt stamp")
    return request.received_at


def json_response(status: int, body: Any, *, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (exact Decimal amounts)."""
    return Response(status, jsontext.dumps(body).encode("ascii"), headers=headers or {})


def problem(
    status: int,
    detail: str,
    *,
    kind: str = "/simple",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """An `application/problem+json` answer in IBKR's shape."""
    body = {"type": kind, "title": _TITLES.get(status, "Error"), "status": status}
    body["detail"] = detail
    body.update(extra)
    return Response(
        status,
        jsontext.dumps(body).encode("ascii"),
        content_type="application/problem+json",
        headers=headers or {},
    )


class SandboxPort(Protocol):
    """What `SandboxApp` uses of the sandbox it serves: its parts, and the admin operations
    behind `/__admin`. `server.Sandbox` provides it; naming it here keeps this module free of
    an import of the server, which imports this module."""

    @property
    def config(self) -> SandboxConfig: ...
    @property
    def clock(self) -> VirtualClock: ...
    @property
    def authority(self) -> Authority: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def limiter(self) -> RateLimiter: ...
    @property
    def faults(self) -> Faults: ...
    @property
    def downtime(self) -> Downtime: ...
    @property
    def request_stats(self) -> Stats: ...
    @property
    def arrival_log(self) -> Arrivals: ...
    @property
    def base_url_or_none(self) -> str | None: ...

    def register_client(
        self,
        client_id: str,
        key_id: str,
        public_key_pem: bytes,
        scopes: Iterable[str] | None = None,
    ) -> object: ...
    def advance(self, seconds: float) -> None: ...
    def clock_state(self) -> dict[str, Any]: ...
    def ledger_counts(self) -> dict[int, int]: ...
    def stats(self, *, include_requests: bool = False) -> dict[str, Any]: ...
    def arrivals(self) -> list[Arrival]: ...
    def set_faults(
        self,
        *,
        error_500_rate: float | None = None,
        error_503_rate: float | None = None,
        drop_response_rate: float | None = None,
        inflight_rate: float | None = None,
        inflight_hold_s: float | None = None,
        answer_delay_rate: float | None = None,
        answer_delay_s: float | None = None,
    ) -> dict[str, float]: ...
    def duplicate_post(self) -> str: ...
    def set_duplicate_post(self, policy: str) -> str: ...
    def revoke_tokens(self) -> int: ...
    def downtime_now(self, seconds: float) -> float: ...
    def deposit_arrived(self, client_or_instruction_id: int) -> dict[str, Any]: ...
    def micro_amounts(self, instruction_id: int) -> tuple[Decimal, Decimal]: ...
    def final_transitions(self) -> dict[int, dict[str, Any]]: ...
    def balances(self) -> dict[str, dict[str, Decimal]]: ...
    def instruction(self, client_or_instruction_id: int) -> dict[str, Any]: ...


class SandboxApp:
    """Routes requests to the token endpoint, the gateway checks, the ledger and admin API."""

    def __init__(self, sandbox: SandboxPort, *, real_time: Callable[[], float] = time.time) -> None:
        self.sandbox = sandbox
        self.config = sandbox.config
        self._real_time = real_time
        # Bearer token -> the client its claims name (tokens repeat; parsing them need not).
        self._token_clients: dict[str, str] = {}

    # --- entry ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer `request`; never raises for bad input (a sandbox bug answers 500). Every
        request but the admin API's is first counted as an arrival at its receipt stamp. A
        response with `hold_s` or `complete` is finished by the caller (see `Response`)."""
        received_at = request.received_at
        if received_at is None:
            received_at = self._real_time()
            request = dataclasses.replace(request, received_at=received_at)
        parts = urlsplit(request.target)
        path, query = parts.path, parse_qs(parts.query)
        try:
            if path.startswith(ADMIN + "/"):
                return self._admin(request, path[len(ADMIN) :], query)
            self.count_arrival(request)
            if path == TOKEN_PATH:
                response = self._token(request)
                self.sandbox.request_stats.record(
                    f"POST {TOKEN_PATH}", response.status, "", received_at
                )
                return response
            if path == JWKS_PATH and request.method == "GET":
                return json_response(200, self.sandbox.authority.jwks())
            if path.startswith((GW + "/", GW_V2 + "/")):
                route = _route(path)
                endpoint = f"{request.method} {_gateway_path(self._template(route))}"
                response, client_id = self._gateway_inner(request, route, query, endpoint)
                if response.complete is None:
                    # A POST held in flight is counted when it registers (see _held_post).
                    self.sandbox.request_stats.record(
                        endpoint, 0 if response.drop else response.status, client_id, received_at
                    )
                return response
            return problem(404, f"No such resource: {path}")
        except Exception as error:  # noqa: BLE001 - a sandbox bug must answer, not hang
            return problem(500, f"Internal Server Error: {type(error).__name__}: {error}")

    def _template(self, route: str) -> str:
        return route_template(route)

    def count_arrival(self, request: Request) -> None:
        """Record `request` (stamped on receipt) as an arrival, as IBKR would count it. The
        HTTP server calls this itself for requests it refuses before `handle` (411, 413)."""
        path = urlsplit(request.target).path
        if path.startswith(ADMIN + "/"):
            return
        self.sandbox.arrival_log.record(
            _received(request),
            self._claimed_client(request, path),
            endpoint_name(request.method, path),
        )

    def _claimed_client(self, request: Request, path: str) -> str:
        """The client a request claims to come from, as IBKR's counting would attribute it:
        the bearer token's subject, or at the token endpoint the client assertion's `iss`;
        read without checking signatures or expiry ("" when there is none)."""
        if path == TOKEN_PATH:
            if request.method != "POST":
                return ""
            try:
                form = parse_qs(request.body.decode("ascii"))
            except UnicodeDecodeError:
                return ""
            assertion = form.get("client_assertion", [""])[0]
            return _unverified_claim(assertion, ("iss",))
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return ""
        token = value.strip()
        found = self._token_clients.get(token)
        if found is None:
            found = _unverified_claim(token, ("sub", "csid"))
            if len(self._token_clients) >= 1024:
                self._token_clients.clear()
            self._token_clients[token] = found
        return found

    # --- token ----------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        if request.method != "POST":
            return problem(405, "Use POST for the token endpoint")
        try:
            body = self.sandbox.authority.issue_token(
                request.headers.get("content-type", ""),
                request.body,
                host=request.headers.get("host"),
                base_url=self.sandbox.base_url_or_none,
            )
        except AuthFailure as failure:
            return problem(failure.status, failure.detail)
        return json_response(200, body, headers={"Cache-Control": "no-store"})

    # --- gateway --------------------------------------------------------------------------

    def _gateway_inner(
        self, request: Request, route: str, query: dict[str, list[str]], endpoint: str
    ) -> tuple[Response, str]:
        """The gateway checks (as far as IBKR's order is known), then the route. Returns the
        answer and the client id (empty before authentication)."""
        sandbox = self.sandbox
        if len(request.body) > self.config.max_body_bytes:
            return problem(413, "Request body exceeds the 20 MB limit"), ""
        if sandbox.faults.roll("error_500_rate"):
            return problem(500, "Internal Server Error"), ""
        if sandbox.faults.roll("error_503_rate"):
            return problem(503, "Service temporarily unavailable", headers={"Retry-After": "1"}), ""
        hold_until: float | None = None
        if self._is_funds(route):
            window_end = sandbox.downtime.window_end()
            if window_end is not None:
                if self.config.downtime_behaviour == "reject":
                    wait = window_end - sandbox.clock.timestamp()
                    speed = sandbox.clock.speed
                    retry_after = retry_after_header(wait / speed if speed else wait)
                    detail = "Funds and Banking is in scheduled downtime"
                    return problem(503, detail, headers={"Retry-After": retry_after}), ""
                hold_until = window_end
        try:
            token = sandbox.authority.check_bearer(request.headers.get("authorization"))
        except AuthFailure as failure:
            headers = {"WWW-Authenticate": "Bearer"}
            return problem(failure.status, failure.detail, headers=headers), ""
        client_id = token.client.client_id
        if request.method == "POST" and route in FUNDS_POSTS:
            scope, bulk = FUNDS_POSTS[route]
            response = self._funds_post(request, route, token, scope, bulk, endpoint, hold_until)
        elif request.method == "GET":
            response = self._gets(request, route, query, token, endpoint)
        elif request.method == "POST" and route == "/echo/signed-jwt":
            response = self._echo_signed(request, token, endpoint)
        else:
            status = 405 if self._known(route) else 404
            response = problem(status, f"No such resource: {request.method} {route}")
        return response, client_id

    @staticmethod
    def _is_funds(route: str) -> bool:
        """Funds & Banking paths (subject to its downtime); echo and enumerations are not."""
        return not route.startswith(("/echo/", "/enumerations/", "/participating-banks"))

    def _echo_signed(self, request: Request, token: AccessToken, endpoint: str) -> Response:
        checked = self._checked(token, ("echo.write",), endpoint, _received(request))
        if checked is not None:
            return checked
        try:
            self._signed_payload(request, token)
        except AuthFailure as failure:
            return problem(failure.status, failure.detail)
        body = {"requestMethod": "POST", "securityPolicy": "SIGNED_JWT", "queryParameters": {}}
        return json_response(200, body)

    def _known(self, route: str) -> bool:
        return route in FUNDS_POSTS or any(p.match(route) for p, _ in _STATUS_GETS)

    def _checked(
        self, token: AccessToken, scopes: tuple[str, ...], endpoint: str, received_at: float
    ) -> Response | None:
        """403 when the token lacks every scope in `scopes`, 429 past the rate limits (judged
        by `received_at`, the request's receipt stamp, real POSIX seconds)."""
        if not any(scope in token.scopes for scope in scopes):
            return problem(403, f"token lacks sufficient scope: {' or '.join(scopes)} required")
        wait = self.sandbox.limiter.admit(token.client.client_id, endpoint, received_at)
        if wait is not None:
            return problem(
                429,
                "Too many requests: at most "
                f"{self.config.max_requests_per_second_per_endpoint}/s per endpoint and "
                f"{self.config.max_requests_per_minute}/min per client",
                headers={"Retry-After": retry_after_header(wait)},
            )
        return None

    def _signed_payload(self, request: Request, token: AccessToken) -> dict[str, Any]:
        body = request.body
        if not body.isascii():
            raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE)
        text = body.decode("ascii").strip()
        if not text or text[0] in '{["':
            raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if self.config.require_jwt_content_type and content_type != "application/jwt":
            raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE)
        return self.sandbox.authority.verify_signed_body(text, token.client)

    def _render(self, status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        if self.config.quirks:
            body = quirk_body(body)
        if status in (403, 422) or (isinstance(body, dict) and "type" in body and status >= 400):
            return Response(
                status,
                jsontext.dumps(body).encode("ascii"),
                content_type="application/problem+json",
                headers=headers or {},
            )
        return json_response(status, body, headers=headers)

    def _funds_post(
        self,
        request: Request,
        route: str,
        token: AccessToken,
        scope: str,
        bulk: bool,
        endpoint: str,
        hold_until: float | None,
    ) -> Response:
        sandbox = self.sandbox
        checked = self._checked(token, (scope,), endpoint, _received(request))
        if checked is not None:
            return checked
        try:
            payload = self._signed_payload(request, token)
        except AuthFailure as failure:
            return problem(failure.status, failure.detail)
        try:
            validated = validate_request(
                route, payload, bulk=bulk, v2_quantity=self.config.v2_position_quantity
            )
        except RequestInvalid as invalid:
            return problem(
                400,
                invalid.detail or NOT_AN_OBJECT,
                kind="/invalid-argument",
                invalidArguments=invalid.invalid_arguments,
            )
        if sandbox.faults.roll("inflight_rate"):
            return self._held_post(request, token, validated, endpoint, hold_until)
        drop = sandbox.faults.roll("drop_response_rate")
        response = self._register(token, validated, hold_until)
        if drop:
            return Response(0, drop=True, close=True)
        if sandbox.faults.roll("answer_delay_rate"):
            sandbox.request_stats.answer_delayed()
            response.hold_s = sandbox.faults.hold_s("answer_delay_s")
        return response

    def _register(
        self, token: AccessToken, validated: ValidatedRequest, hold_until: float | None
    ) -> Response:
        """Register a checked funds POST in the ledger (ids, business checks, state machines)
        and render its answer."""
        sandbox = self.sandbox
        try:
            status, body = sandbox.ledger.submit(token.client, validated, hold_until=hold_until)
        except QueryThrottled as throttled:
            speed = sandbox.clock.speed
            wait = throttled.retry_after_s / speed if speed else throttled.retry_after_s
            return problem(429, throttled.detail, headers={"Retry-After": retry_after_header(wait)})
        return self._render(status, body)

    def _held_post(
        self,
        request: Request,
        token: AccessToken,
        validated: ValidatedRequest,
        endpoint: str,
        hold_until: float | None,
    ) -> Response:
        """A funds POST held in flight: nothing is registered now; after `inflight_hold_s`
        real seconds the caller runs `complete`, which registers it as a POST arriving then
        would be (unless `inflight_recheck_exp` finds its signed body expired by then)."""
        sandbox = self.sandbox
        sandbox.request_stats.held_in_flight()
        received_at = _received(request)

        def complete() -> Response:
            try:
                if self.config.inflight_recheck_exp and self._body_expired(request):
                    response = problem(
                        self.config.body_jwt_error_status,
                        "signed request has expired (checked again when the held request "
                        "registered)",
                    )
                else:
                    response = self._register(token, validated, hold_until)
            except Exception as error:  # noqa: BLE001 - as in handle: a sandbox bug answers
                response = problem(500, f"Internal Server Error: {type(error).__name__}: {error}")
            sandbox.request_stats.record(
                endpoint, response.status, token.client.client_id, received_at
            )
            return response

        return Response(0, hold_s=sandbox.faults.hold_s("inflight_hold_s"), complete=complete)

    def _body_expired(self, request: Request) -> bool:
        """True when the signed body's `exp` has passed (the leeway the arrival check allows
        included), by the real clock now."""
        try:
            claims = jsontext.loads(parse_compact_jws(request.body.decode("ascii").strip()).payload)
        except ValueError:
            return True
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if not isinstance(exp, int | float | Decimal) or isinstance(exp, bool):
            return True
        return float(exp) < self._real_time() - self.config.jwt_leeway_s

    def _gets(
        self,
        request: Request,
        route: str,
        query: dict[str, list[str]],
        token: AccessToken,
        endpoint: str,
    ) -> Response:
        ledger = self.sandbox.ledger
        for pattern, template in _STATUS_GETS:
            match = pattern.match(route)
            if match is None:
                continue
            checked = self._checked(token, ("instructions.read",), endpoint, _received(request))
            if checked is not None:
                return checked
            # Ids are signed (worker.ibkr.ids): `/instruction-sets/-1988905739` is a real path.
            number = ids.as_id(match.group(1))
            if number is None:
                return problem(400, PATH_DETAIL)
            client = token.client
            if template.startswith("/instruction-sets"):
                found_set = ledger.instruction_set(client, number)
                if found_set is None:
                    return problem(404, "No such instruction set found", instructionSetId=number)
                return self._render(200, found_set)
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
            return self._render(found[0], found[1])
        if route == "/echo/https":
            checked = self._checked(token, ("echo.read",), endpoint, _received(request))
            if checked is not None:
                return checked
            parameters = {name: values[0] for name, values in query.items()}
            return json_response(
                200,
                {"requestMethod": "GET", "securityPolicy": "HTTPS", "queryParameters": parameters},
            )
        if route == "/participating-banks" or route.startswith("/enumerations/"):
            checked = self._checked(
                token, ("enumerations.read", "accounts.read"), endpoint, _received(request)
            )
            if checked is not None:
                return checked
            return self._enumeration(route, query)
        return problem(405 if route in FUNDS_POSTS else 404, f"No such resource: GET {route}")

    def _enumeration(self, route: str, query: dict[str, list[str]]) -> Response:
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
            return json_response(
                200, {"instructionType": "COMPLEX_ASSET_TRANSFER", "brokers": brokers}
            )
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

    # --- admin ----------------------------------------------------------------------------

    def _admin(self, request: Request, route: str, query: dict[str, list[str]]) -> Response:
        if not is_loopback(request.client_host):
            return problem(403, "The admin API answers loopback clients only")
        sandbox = self.sandbox
        try:
            data = json.loads(request.body or b"{}", parse_float=Decimal)
        except ValueError:
            return problem(400, "The admin API takes a JSON object")
        if not isinstance(data, dict):
            return problem(400, "The admin API takes a JSON object")
        method = request.method
        try:
            return self._admin_route(method, route, query, data, sandbox)
        except KeyError as error:
            return problem(404, str(error.args[0] if error.args else error))
        except (ValueError, TypeError) as error:
            return problem(400, str(error))

    def _admin_route(
        self,
        method: str,
        route: str,
        query: dict[str, list[str]],
        data: dict[str, Any],
        sandbox: SandboxPort,
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
