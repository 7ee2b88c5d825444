"""Routing and HTTP semantics of the sandbox, independent of any socket: `SandboxApp.handle`
turns a `Request` into a `Response`. The ASGI app and the in-process httpx transport both call
it, so tests over a socket and in-process see the same behaviour."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from ibkr_sandbox import reads
from ibkr_sandbox.admin import admin
from ibkr_sandbox.auth import TOKEN_PATH, AuthFailure, parse_compact_jws
from ibkr_sandbox.funds import FundsPosts
from ibkr_sandbox.gateway import retry_after_header
from ibkr_sandbox.messages import (
    Request,
    Response,
    internal_error,
    json_response,
    problem,
    received,
)
from ibkr_sandbox.port import SandboxPort
from ibkr_sandbox.routes import (
    ADMIN,
    FUNDS_POSTS,
    JWKS_PATH,
    endpoint_name,
    gateway_path,
    is_funds,
    is_gateway,
    is_known,
    route_of,
    route_template,
)

#: How many bearer tokens `_claimed_client` remembers the client of.
_TOKEN_CLIENTS_KEPT = 1024


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


class SandboxApp:
    """Routes requests to the token endpoint, the gateway checks, the ledger and admin API."""

    def __init__(self, sandbox: SandboxPort, *, real_time: Callable[[], float] = time.time) -> None:
        self.sandbox = sandbox
        self.config = sandbox.config
        self._real_time = real_time
        self._funds = FundsPosts(sandbox, real_time=real_time)
        # Bearer token -> the client its claims name (tokens repeat; parsing them need not).
        self._token_clients: dict[str, str] = {}

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
                return admin(self.sandbox, request, path[len(ADMIN) :], query)
            self.count_arrival(request)
            if path == TOKEN_PATH:
                response = self._token(request)
                self.sandbox.request_stats.record(
                    f"POST {TOKEN_PATH}", response.status, "", received_at
                )
                return response
            if path == JWKS_PATH and request.method == "GET":
                return json_response(200, self.sandbox.authority.jwks())
            if is_gateway(path):
                route = route_of(path)
                endpoint = f"{request.method} {gateway_path(route_template(route))}"
                response, client_id = self._gateway(request, route, query, endpoint)
                if response.complete is None:
                    # A POST held in flight is counted when it registers (see FundsPosts).
                    self.sandbox.request_stats.record(
                        endpoint, 0 if response.drop else response.status, client_id, received_at
                    )
                return response
            return problem(404, f"No such resource: {path}")
        except Exception as error:  # noqa: BLE001 - a sandbox bug must answer, not hang
            return internal_error(error)

    def count_arrival(self, request: Request) -> None:
        """Record `request` (stamped on receipt) as an arrival, as IBKR would count it. The
        HTTP server calls this itself for requests it refuses before `handle` (411, 413)."""
        path = urlsplit(request.target).path
        if path.startswith(ADMIN + "/"):
            return
        self.sandbox.arrival_log.record(
            received(request),
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
            if len(self._token_clients) >= _TOKEN_CLIENTS_KEPT:
                self._token_clients.clear()
            self._token_clients[token] = found
        return found

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

    def _gateway(
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
        if is_funds(route):
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
            response = self._funds.post(request, route, token, scope, bulk, endpoint, hold_until)
        elif request.method == "GET":
            response = reads.get(sandbox, request, route, query, token, endpoint)
        elif request.method == "POST" and route == "/echo/signed-jwt":
            response = self._funds.echo(request, token, endpoint)
        else:
            status = 405 if is_known(route) else 404
            response = problem(status, f"No such resource: {request.method} {route}")
        return response, client_id
