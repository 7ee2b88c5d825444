"""Token handling: cached, refreshed before expiry, one refresh at a time, 401 re-auth once
(the client asks for a new token once and sends the request once more)."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import structlog

from worker.clock import ManualClock
from worker.config import Settings
from worker.ibkr.auth import CLIENT_ASSERTION_TYPE, AuthenticationError, IbkrAuth
from worker.ibkr.client import IbkrClient

TOKEN_URL = "https://ibkr.test/oauth2/api/v1/token"
SCOPE = "transfers.read transfers.write"


class FakeIbkr:
    """Token endpoint and one /gw endpoint, with tokens that can be revoked."""

    def __init__(self, expires_in: int = 86399, token_delay_s: float = 0.0) -> None:
        self.expires_in = expires_in
        self.token_delay_s = token_delay_s
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.assertions: list[str] = []
        self.forms: list[dict[str, list[str]]] = []
        self.gw_calls = 0
        self.token_status = 200
        self.reject_all_tokens = False
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/api/v1/token":
            form = parse_qs(request.content.decode())
            with self._lock:
                self.forms.append(form)
                self.assertions.append(form["client_assertion"][0])
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if self.token_status != 200:
                return httpx.Response(
                    self.token_status,
                    json={"type": "/simple", "title": "Bad Request", "status": self.token_status},
                )
            with self._lock:
                token = f"eyJtoken{len(self.issued)}.eyJpayload.c2lnbmF0dXJlMTIzNDU2"
                self.issued.append(token)
                self.valid.add(token)
            return httpx.Response(
                200,
                json={
                    "access_token": token,
                    "token_type": "Bearer",
                    "scope": SCOPE,
                    "expires_in": self.expires_in,
                },
            )
        with self._lock:
            self.gw_calls += 1
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.reject_all_tokens or bearer not in self.valid:
            return httpx.Response(
                401, json={"type": "/simple", "title": "Unauthorized", "status": 401}
            )
        return httpx.Response(200, json={"requestMethod": "GET", "securityPolicy": "HTTPS"})


def make_auth(fake: FakeIbkr, key: Any, clock: ManualClock) -> tuple[IbkrAuth, IbkrClient]:
    """A client (rate limits off) on the fake, and its token keeper."""
    settings = Settings(
        ibkr_base_url="https://ibkr.test",
        ibkr_client_id="acme",
        ibkr_key_id="main",
        ibkr_scope=SCOPE,
        max_requests_per_second_per_endpoint=0,
        max_requests_per_minute=0,
    )
    client = IbkrClient(settings, private_key=key, transport=httpx.MockTransport(fake), clock=clock)
    return client.auth, client


def call(client: IbkrClient) -> int | None:
    """One /gw call (a status GET); its HTTP status."""
    return client.get_client_instruction(7).http_status


def form_poster(http: httpx.Client) -> Any:
    return lambda url, form: http.post(url, data=form)


def test_token_request_is_form_encoded_with_a_verifiable_assertion(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    fake = FakeIbkr()
    _, http = make_auth(fake, rsa_private_key, clock)
    assert call(http) == 200
    [form] = fake.forms
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_assertion_type"] == [CLIENT_ASSERTION_TYPE]
    assert form["scope"] == [SCOPE]
    assert "client_id" not in form
    claims = jwt.decode(
        form["client_assertion"][0],
        rsa_private_key.public_key(),
        algorithms=["RS256"],
        audience="/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == claims["sub"] == "acme"


def test_token_is_cached_between_calls(rsa_private_key: Any, clock: ManualClock) -> None:
    fake = FakeIbkr()
    _, http = make_auth(fake, rsa_private_key, clock)
    for _ in range(5):
        assert call(http) == 200
    assert len(fake.issued) == 1
    assert fake.gw_calls == 5


def test_token_is_refreshed_300_seconds_before_expiry(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    fake = FakeIbkr(expires_in=3600)
    _, http = make_auth(fake, rsa_private_key, clock)
    call(http)
    clock.advance(3600 - 300 - 1)
    call(http)
    assert len(fake.issued) == 1
    clock.advance(2)
    call(http)
    assert len(fake.issued) == 2


def test_short_lived_token_is_not_fetched_on_every_call(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    fake = FakeIbkr(expires_in=60)
    _, http = make_auth(fake, rsa_private_key, clock)
    call(http)
    clock.advance(29)
    call(http)
    assert len(fake.issued) == 1


def test_eight_threads_share_one_refresh(rsa_private_key: Any, clock: ManualClock) -> None:
    fake = FakeIbkr(token_delay_s=0.3)
    auth, _ = make_auth(fake, rsa_private_key, clock)
    barrier = threading.Barrier(8)
    tokens: list[str] = []

    def work() -> None:
        barrier.wait()
        tokens.append(auth.access_token())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake.forms) == 1
    assert len(set(tokens)) == 1 and len(tokens) == 8


def test_revoked_token_is_replaced_once_and_the_call_replayed_once(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    fake = FakeIbkr()
    _, http = make_auth(fake, rsa_private_key, clock)
    call(http)
    fake.valid.clear()  # IBKR revokes the token
    assert call(http) == 200
    assert len(fake.issued) == 2
    assert fake.gw_calls == 3  # first call, refused call, replay


def test_persistent_401_is_replayed_only_once(rsa_private_key: Any, clock: ManualClock) -> None:
    fake = FakeIbkr()
    fake.reject_all_tokens = True
    _, http = make_auth(fake, rsa_private_key, clock)
    assert call(http) == 401
    assert fake.gw_calls == 2
    assert len(fake.issued) == 2


def test_refused_credentials_raise_a_clear_non_transient_error(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    fake = FakeIbkr()
    fake.token_status = 400
    auth, _ = make_auth(fake, rsa_private_key, clock)
    with pytest.raises(AuthenticationError) as caught:
        auth.access_token()
    error = caught.value
    assert error.transient is False
    assert error.http_status == 400
    assert "HTTP 400" in str(error) and "IBKR_CLIENT_ID" in str(error)
    assert fake.assertions[0] not in str(error)
    assert "eyJ" not in str(error)


def test_token_endpoint_5xx_is_transient(rsa_private_key: Any, clock: ManualClock) -> None:
    fake = FakeIbkr()
    fake.token_status = 503
    auth, _ = make_auth(fake, rsa_private_key, clock)
    with pytest.raises(AuthenticationError) as caught:
        auth.access_token()
    assert caught.value.transient is True


def test_unreachable_token_endpoint_is_transient(rsa_private_key: Any, clock: ManualClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    auth = IbkrAuth(
        post_form=form_poster(http),
        token_url=TOKEN_URL,
        client_id="acme",
        key_id="main",
        private_key=rsa_private_key,
        scope=SCOPE,
        audience="/token",
        clock=clock,
    )
    with pytest.raises(AuthenticationError, match="could not reach") as caught:
        auth.access_token()
    assert caught.value.transient is True


def test_token_response_without_access_token_is_an_error(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    http = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"nope": 1}))
    )
    auth = IbkrAuth(
        post_form=form_poster(http),
        token_url=TOKEN_URL,
        client_id="acme",
        key_id="main",
        private_key=rsa_private_key,
        scope=SCOPE,
        audience="/token",
        clock=clock,
    )
    with pytest.raises(AuthenticationError, match="without a usable access_token"):
        auth.access_token()


def test_secrets_never_reach_logs_or_reprs(rsa_private_key: Any, clock: ManualClock) -> None:
    fake = FakeIbkr()
    auth, http = make_auth(fake, rsa_private_key, clock)
    with structlog.testing.capture_logs() as logs:
        call(http)
        fake.valid.clear()
        call(http)
    text = repr(logs) + repr(auth) + repr(auth._token)
    assert logs  # the token fetch and re-authentication are logged
    for secret in fake.issued + fake.assertions:
        assert secret not in text
    assert "BEGIN" not in text
