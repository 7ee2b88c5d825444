"""The client over httpx's transport seam: signed POSTs, GETs, 429 waits, lost answers, logs."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest
import structlog

from tests.unit.client_support import ACCEPTED, BASE, BODY, Gateway, make_client, settings
from worker.clock import ManualClock
from worker.config import Settings
from worker.ibkr.client import IbkrClient
from worker.ibkr.endpoints import INTERNAL_CASH_TRANSFERS, endpoint_for
from worker.ibkr.ratelimit import MemoryLedger, RateLimiter
from worker.ibkr.responses import Outcome
from worker.ibkr.signing import NonAsciiBodyError


def test_post_sends_a_signed_jwt_body_with_the_bearer_token(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    with make_client(gateway, rsa_private_key, clock) as client:
        result = client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    assert result.outcome is Outcome.ACCEPTED
    assert result.instruction_set_id == 1703
    [request] = gateway.requests
    assert request.method == "POST"
    assert request.url == f"{BASE}/gw/api/v1/internal-cash-transfers"
    assert request.headers["Content-Type"] == "application/jwt"
    assert request.headers["Authorization"] == f"Bearer {gateway.tokens[0]}"
    token = request.content.decode("ascii")
    assert token.count(".") == 2
    claims = jwt.decode(
        token,
        rsa_private_key.public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["instruction"]["amount"] == 123.45
    assert claims["iss"] == "acme"
    assert result.exchange.path == "/gw/api/v1/internal-cash-transfers"


def test_the_body_is_signed_before_the_slot_and_the_request_leaves_at_the_slot(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    left_at: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        left_at.append(clock.monotonic())
        return httpx.Response(202, json=ACCEPTED)

    gateway = Gateway(answer)
    limiter = RateLimiter(MemoryLedger(), 1, 0, 0.0, clock)
    client = make_client(gateway, rsa_private_key, clock, rate_limiter=limiter)
    start = clock.monotonic()
    client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)  # its slot is 1 s later
    first, second = (
        jwt.decode(r.content, options={"verify_signature": False}) for r in gateway.requests
    )
    # Signed when the connection was had, then the slot: both bodies carry the same iat, and
    # the second left when its slot came.
    assert first["iat"] == second["iat"]
    assert [t - start for t in left_at] == [0.0, pytest.approx(1.0)]


def test_gets_carry_no_body_and_report_the_path_template(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(200, json=dict(ACCEPTED, status=200)))
    client = make_client(gateway, rsa_private_key, clock)
    by_client_id = client.get_client_instruction(1012983)
    by_id = client.get_instruction(43091814)
    by_set = client.get_instruction_set(1703)
    urls = [str(request.url) for request in gateway.requests]
    assert urls == [
        f"{BASE}/gw/api/v1/client-instructions/1012983",
        f"{BASE}/gw/api/v1/instructions/43091814",
        f"{BASE}/gw/api/v1/instruction-sets/1703",
    ]
    assert all(request.content == b"" for request in gateway.requests)
    assert all("Content-Type" not in request.headers for request in gateway.requests)
    assert by_client_id.exchange.path == "/gw/api/v1/client-instructions/{clientInstructionId}"
    assert by_id.outcome is by_set.outcome is Outcome.ACCEPTED


@pytest.mark.parametrize("bad", [0, 2**53, -(2**53), True])
def test_get_refuses_a_bad_id(rsa_private_key: Any, clock: ManualClock, bad: Any) -> None:
    client = make_client(Gateway(lambda r: httpx.Response(200)), rsa_private_key, clock)
    with pytest.raises(ValueError, match="clientInstructionId must be an int other than 0"):
        client.get_client_instruction(bad)


def test_get_takes_a_negative_id(rsa_private_key: Any, clock: ManualClock) -> None:
    """IBKR's schemas type ids as signed (examples: -1988905739): a status GET must not refuse
    one, or polling a set IBKR numbered so would fail every round. (Revert the check in
    IbkrClient._get to `value <= 0` to see this fail.)"""
    gateway = Gateway(lambda r: httpx.Response(200, json={"status": 200}))
    client = make_client(gateway, rsa_private_key, clock)
    client.get_instruction_set(-1988905739)
    assert str(gateway.requests[0].url).endswith("/gw/api/v1/instruction-sets/-1988905739")


def test_429_is_waited_out_and_retried(rsa_private_key: Any, clock: ManualClock) -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.Response(429),
            httpx.Response(202, json=ACCEPTED),
        ]
    )
    gateway = Gateway(lambda request: next(answers))
    client = make_client(gateway, rsa_private_key, clock)
    started = clock.monotonic()
    result = client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    assert result.outcome is Outcome.ACCEPTED
    assert len(gateway.requests) == 3
    # 2 s from Retry-After, then 2**1 s backoff without the header.
    assert clock.monotonic() - started == pytest.approx(4.0)


def test_429_retries_are_limited(rsa_private_key: Any, clock: ManualClock) -> None:
    gateway = Gateway(lambda request: httpx.Response(429, headers={"Retry-After": "1"}))
    client = make_client(gateway, rsa_private_key, clock, throttle_retries=3)
    result = client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    assert result.outcome is Outcome.THROTTLED
    assert len(gateway.requests) == 4
    assert result.retry_after_s == 1.0


def test_long_retry_after_is_handed_back(rsa_private_key: Any, clock: ManualClock) -> None:
    gateway = Gateway(lambda request: httpx.Response(429, headers={"Retry-After": "600"}))
    client = make_client(gateway, rsa_private_key, clock)
    result = client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    assert result.outcome is Outcome.THROTTLED
    assert len(gateway.requests) == 1


def test_server_error_is_transient_and_not_retried(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(503, json={"title": "Unavailable"}))
    result = make_client(gateway, rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.TRANSIENT
    assert len(gateway.requests) == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteTimeout],
)
def test_post_without_an_answer_is_unknown(
    rsa_private_key: Any, clock: ManualClock, error: type[httpx.TransportError]
) -> None:
    def lose(request: httpx.Request) -> httpx.Response:
        raise error("lost", request=request)

    result = make_client(Gateway(lose), rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.UNKNOWN
    assert result.http_status is None
    assert "may have been processed" in (result.error_detail or "")


def test_post_that_could_not_connect_was_not_sent(rsa_private_key: Any, clock: ManualClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    result = make_client(Gateway(refuse), rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.NOT_SENT
    assert "nothing was sent" in (result.error_detail or "")


def test_get_without_an_answer_is_transient(rsa_private_key: Any, clock: ManualClock) -> None:
    def lose(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("lost", request=request)

    result = make_client(Gateway(lose), rsa_private_key, clock).get_instruction(5)
    assert result.outcome is Outcome.TRANSIENT


def test_refused_credentials_are_an_auth_failure_and_nothing_is_sent(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    gateway.token_status = 400
    result = make_client(gateway, rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.AUTH_FAILED
    assert gateway.requests == []
    assert "token endpoint" in (result.error_detail or "")


def test_401_after_reauthentication_is_an_auth_failure(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(401, json={"title": "Unauthorized"}))
    result = make_client(gateway, rsa_private_key, clock).get_instruction(5)
    assert result.outcome is Outcome.AUTH_FAILED
    assert len(gateway.requests) == 2
    assert len(gateway.tokens) == 2


def test_non_ascii_body_is_refused_before_anything_is_sent(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    body = {"instructionType": "X", "instruction": {"clientNote": "\u00fc"}}
    with pytest.raises(NonAsciiBodyError):
        make_client(gateway, rsa_private_key, clock).post_instruction(INTERNAL_CASH_TRANSFERS, body)
    assert gateway.requests == []


def test_post_instruction_needs_a_post_endpoint(rsa_private_key: Any, clock: ManualClock) -> None:
    from worker.ibkr.endpoints import INSTRUCTION_STATUS

    client = make_client(Gateway(lambda r: httpx.Response(200)), rsa_private_key, clock)
    with pytest.raises(ValueError, match="not a POST endpoint"):
        client.post_instruction(INSTRUCTION_STATUS, BODY)


def test_each_call_logs_one_line_without_secrets(rsa_private_key: Any, clock: ManualClock) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    client = make_client(gateway, rsa_private_key, clock)
    with structlog.testing.capture_logs() as logs:
        client.post_instruction(endpoint_for("INTERNAL_CASH_TRANSFER", bulk=False), BODY)
    calls = [entry for entry in logs if entry["event"] == "ibkr api call"]
    assert len(calls) == 1
    line = calls[0]
    assert line["method"] == "POST"
    assert line["path"] == "/gw/api/v1/internal-cash-transfers"
    assert line["status"] == 202
    assert line["latency_ms"] >= 0
    assert line["outcome"] == "ACCEPTED"
    text = repr(logs) + repr(client)
    assert gateway.tokens[0] not in text
    assert gateway.requests[0].content.decode() not in text
    assert "eyJ" not in text


def test_client_requires_credentials(rsa_private_key: Any) -> None:
    from worker.config import ConfigError

    with pytest.raises(ConfigError, match="IBKR_CLIENT_ID"):
        IbkrClient(Settings(ibkr_key_id="k"), private_key=rsa_private_key)
    with pytest.raises(ConfigError, match="IBKR_PRIVATE_KEY_FILE"):
        IbkrClient(Settings(ibkr_client_id="c", ibkr_key_id="k"))


def test_requests_go_under_a_base_url_with_a_path(rsa_private_key: Any, clock: ManualClock) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.path.endswith("/oauth2/api/v1/token"):
            return httpx.Response(200, json={"access_token": "t0123456789", "expires_in": 600})
        return httpx.Response(202, json=ACCEPTED)

    with IbkrClient(
        settings(
            ibkr_base_url="https://ibkr.test/proxy/",
            ibkr_token_url="https://ibkr.test/proxy/oauth2/api/v1/token",
        ),
        private_key=rsa_private_key,
        transport=httpx.MockTransport(handler),
        clock=clock,
    ) as client:
        client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
        client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
        client.get_client_instruction(1012983)
    assert seen == [
        "https://ibkr.test/proxy/oauth2/api/v1/token",
        "https://ibkr.test/proxy/gw/api/v1/internal-cash-transfers",
        "https://ibkr.test/proxy/gw/api/v1/internal-cash-transfers",
        "https://ibkr.test/proxy/gw/api/v1/client-instructions/1012983",
    ]


def test_a_cookie_the_gateway_sets_is_sent_back(rsa_private_key: Any, clock: ManualClock) -> None:
    # The jar skips answers without Set-Cookie (most of them); one that sets a cookie (a load
    # balancer's, say) is still kept.
    answers = iter(
        [
            httpx.Response(202, json=ACCEPTED),
            httpx.Response(202, json=ACCEPTED, headers={"Set-Cookie": "lb=node7; Path=/"}),
            httpx.Response(202, json=ACCEPTED),
        ]
    )
    gateway = Gateway(lambda request: next(answers))
    with make_client(gateway, rsa_private_key, clock) as client:
        for _ in range(3):
            client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    assert [request.headers.get("Cookie") for request in gateway.requests] == [
        None,
        None,
        "lb=node7",
    ]
