"""The gateway's checks shared by every authenticated route: the token's scope and the rate
limits (judged by the request's receipt stamp), the signed body's policy, and rendering an
answer in IBKR's shapes (quirks included when switched on)."""

from __future__ import annotations

from typing import Any

from ibkr_sandbox.auth import SIGNED_JWT_POLICY_MESSAGE, AccessToken, AuthFailure
from ibkr_sandbox.gateway import quirk_body, retry_after_header
from ibkr_sandbox.messages import Request, Response, json_response, problem, problem_json
from ibkr_sandbox.port import SandboxPort


def checked(
    sandbox: SandboxPort,
    token: AccessToken,
    scopes: tuple[str, ...],
    endpoint: str,
    received_at: float,
) -> Response | None:
    """403 when the token lacks every scope in `scopes`, 429 past the rate limits (judged
    by `received_at`, the request's receipt stamp, real POSIX seconds); None: go on."""
    if not any(scope in token.scopes for scope in scopes):
        return problem(403, f"token lacks sufficient scope: {' or '.join(scopes)} required")
    wait = sandbox.limiter.admit(token.client.client_id, endpoint, received_at)
    if wait is not None:
        config = sandbox.config
        return problem(
            429,
            "Too many requests: at most "
            f"{config.max_requests_per_second_per_endpoint}/s per endpoint and "
            f"{config.max_requests_per_minute}/min per client",
            headers={"Retry-After": retry_after_header(wait)},
        )
    return None


def signed_payload(sandbox: SandboxPort, request: Request, token: AccessToken) -> dict[str, Any]:
    """The verified claims of a signed (compact JWS) body; AuthFailure when the body is not
    one, is sent without `Content-Type: application/jwt` (when required) or fails to verify."""
    body = request.body
    if not body.isascii():
        raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE)
    text = body.decode("ascii").strip()
    if not text or text[0] in '{["':
        raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if sandbox.config.require_jwt_content_type and content_type != "application/jwt":
        raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE)
    return sandbox.authority.verify_signed_body(text, token.client)


def render(
    sandbox: SandboxPort, status: int, body: Any, headers: dict[str, str] | None = None
) -> Response:
    """A ledger answer in IBKR's shape: quirks when switched on; problem+json for 403, 422
    and error bodies."""
    if sandbox.config.quirks:
        body = quirk_body(body)
    if status in (403, 422) or (isinstance(body, dict) and "type" in body and status >= 400):
        return problem_json(status, body, headers=headers)
    return json_response(status, body, headers=headers)
