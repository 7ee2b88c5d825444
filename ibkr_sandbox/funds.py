"""Funds & Banking POSTs (and the signed echo): checked, verified, validated, then registered in
the ledger, unless a fault holds the POST in flight, loses its answer or holds its answer
back."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from ibkr_sandbox.auth import AccessToken, AuthFailure, parse_compact_jws
from ibkr_sandbox.checks import checked, render, signed_payload
from ibkr_sandbox.gateway import retry_after_header
from ibkr_sandbox.ledger import QueryThrottled
from ibkr_sandbox.messages import (
    Request,
    Response,
    internal_error,
    json_response,
    problem,
    received,
)
from ibkr_sandbox.port import SandboxPort
from ibkr_sandbox.schemas import NOT_AN_OBJECT, RequestInvalid, ValidatedRequest, validate_request
from worker import jsontext


class FundsPosts:
    """The POST side of the gateway, for one sandbox."""

    def __init__(self, sandbox: SandboxPort, *, real_time: Callable[[], float] = time.time) -> None:
        self.sandbox = sandbox
        self.config = sandbox.config
        self._real_time = real_time

    def post(
        self,
        request: Request,
        route: str,
        token: AccessToken,
        scope: str,
        bulk: bool,
        endpoint: str,
        hold_until: float | None,
    ) -> Response:
        """Answer a funds POST to `route`; `hold_until`: the end of a downtime window that
        holds (rather than refuses) what arrives in it."""
        sandbox = self.sandbox
        refused = checked(sandbox, token, (scope,), endpoint, received(request))
        if refused is not None:
            return refused
        try:
            payload = signed_payload(sandbox, request, token)
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
            return self._held(request, token, validated, endpoint, hold_until)
        drop = sandbox.faults.roll("drop_response_rate")
        response = self._register(token, validated, hold_until)
        if drop:
            return Response(0, drop=True, close=True)
        if sandbox.faults.roll("answer_delay_rate"):
            sandbox.request_stats.answer_delayed()
            response.hold_s = sandbox.faults.hold_s("answer_delay_s")
        return response

    def echo(self, request: Request, token: AccessToken, endpoint: str) -> Response:
        """`POST /echo/signed-jwt`: checks the signed body and says so."""
        refused = checked(self.sandbox, token, ("echo.write",), endpoint, received(request))
        if refused is not None:
            return refused
        try:
            signed_payload(self.sandbox, request, token)
        except AuthFailure as failure:
            return problem(failure.status, failure.detail)
        body = {"requestMethod": "POST", "securityPolicy": "SIGNED_JWT", "queryParameters": {}}
        return json_response(200, body)

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
        return render(sandbox, status, body)

    def _held(
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
        received_at = received(request)

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
                response = internal_error(error)
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
