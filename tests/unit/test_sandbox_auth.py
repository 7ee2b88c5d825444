"""The sandbox's token endpoint, bearer checks and signed-JWT bodies (reference §10 items 1-3)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ibkr_sandbox.auth import SIGNED_JWT_POLICY_MESSAGE
from tests.sandbox.support import SandboxClient, ict, in_process, public_pem


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_token_is_issued_for_a_valid_assertion(env: tuple[Any, SandboxClient]) -> None:
    sandbox, client = env
    response = client.token_request("transfers.write instructions.read")
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86399
    assert body["scope"] == "transfers.write instructions.read"
    key = jwt.PyJWKSet.from_dict(sandbox.authority.jwks()).keys[0].key
    claims = jwt.decode(
        body["access_token"], key, algorithms=["RS256"], options={"verify_exp": False}
    )
    assert claims["iss"] == "/token"
    assert claims["sub"] == claims["csid"] == "acme"
    assert claims["accountId"] == "U46377"
    assert claims["exp"] - claims["iat"] == 86400


def test_granted_scopes_are_the_requested_ones_the_client_may_have(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    sandbox.register_client("narrow", "narrow-key", public_pem(rsa_private_key), ["echo.read"])
    narrow = SandboxClient(client.http, rsa_private_key, client_id="narrow", key_id="narrow-key")
    response = narrow.token_request("echo.read transfers.write")
    assert response.status_code == 200
    assert response.json()["scope"] == "echo.read"
    refused = narrow.token_request("transfers.write")
    assert refused.status_code == 400


def test_full_token_url_is_accepted_as_audience(env: tuple[Any, SandboxClient]) -> None:
    _, client = env
    assertion = client.assertion(aud="http://sandbox.test/oauth2/api/v1/token")
    assert client.token_request(client_assertion=assertion).status_code == 200


def test_audience_mode_path_refuses_the_full_url(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key, assertion_audience="path")
    assertion = client.assertion(aud="http://sandbox.test/oauth2/api/v1/token")
    assert client.token_request(client_assertion=assertion).status_code == 400


@pytest.mark.parametrize(
    ("form", "claims"),
    [
        ({"grant_type": "password"}, {}),
        ({"grant_type": None}, {}),
        ({"client_assertion_type": "urn:other"}, {}),
        ({"scope": None}, {}),
        ({"scope": "x"}, {}),
        ({}, {"kid": "unknown"}),
        ({}, {"iss": "someone-else"}),
        ({}, {"sub": "someone-else"}),
        ({}, {"aud": "/elsewhere"}),
        ({}, {"exp": int(time.time()) - 3600}),
        ({}, {"exp": None}),
        ({}, {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 3700}),
    ],
    ids=[
        "grant-type",
        "no-grant-type",
        "assertion-type",
        "no-scope",
        "short-scope",
        "unknown-kid",
        "wrong-iss",
        "wrong-sub",
        "wrong-aud",
        "expired",
        "no-exp",
        "iat-in-future",
    ],
)
def test_token_requests_are_refused_with_400_problems(
    env: tuple[Any, SandboxClient], form: dict[str, Any], claims: dict[str, Any]
) -> None:
    _, client = env
    fields = dict(form)
    if claims:
        fields["client_assertion"] = client.assertion(**claims)
    response = client.token_request(**fields)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/simple"


def test_assertion_signed_with_another_key_is_refused(
    env: tuple[Any, SandboxClient], other_key: rsa.RSAPrivateKey
) -> None:
    _, client = env
    response = client.token_request(client_assertion=client.assertion(key=other_key))
    assert response.status_code == 400
    assert "signature" in response.json()["detail"]


def test_assertion_error_status_can_be_401(rsa_private_key: Any, other_key: Any) -> None:
    _, client = in_process(rsa_private_key, assertion_error_status=401)
    response = client.token_request(client_assertion=client.assertion(key=other_key))
    assert response.status_code == 401


def test_token_endpoint_takes_form_bodies_only(env: tuple[Any, SandboxClient]) -> None:
    _, client = env
    response = client.http.post(
        "/oauth2/api/v1/token",
        json={"grant_type": "client_credentials", "client_assertion": client.assertion()},
    )
    assert response.status_code == 400


def test_missing_and_garbage_bearer_tokens_get_401(env: tuple[Any, SandboxClient]) -> None:
    _, client = env
    assert client.http.get("/gw/api/v1/client-instructions/1").status_code == 401
    response = client.get("/client-instructions/1", token="garbage")
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthorized"


def test_token_expires_on_the_virtual_clock(env: tuple[Any, SandboxClient]) -> None:
    sandbox, client = env
    token = client.token()
    assert client.get("/client-instructions/1", token=token).status_code == 404
    sandbox.clock.advance(86_400)
    assert client.get("/client-instructions/1", token=token).status_code == 401


def test_shorter_token_lifetime_is_configurable(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key, token_lifetime_s=60)
    assert client.token_request().json()["expires_in"] == 59


def test_revoked_tokens_get_401(env: tuple[Any, SandboxClient]) -> None:
    sandbox, client = env
    token = client.token()
    assert sandbox.revoke_tokens() == 1
    assert client.get("/client-instructions/1", token=token).status_code == 401


def test_missing_scope_gets_403(env: tuple[Any, SandboxClient]) -> None:
    _, client = env
    token = client.token_request("echo.read").json()["access_token"]
    response = client.post("/internal-cash-transfers", ict(1), token=token)
    assert response.status_code == 403
    assert response.json()["title"] == "Forbidden"
    assert client.get("/client-instructions/1", token=token).status_code == 403


def test_json_body_is_refused_with_the_signed_jwt_message(env: tuple[Any, SandboxClient]) -> None:
    sandbox, client = env
    response = client.post(
        "/internal-cash-transfers",
        {},
        content=b'{"instructionType": "INTERNAL_CASH_TRANSFER"}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["detail"] == SIGNED_JWT_POLICY_MESSAGE
    assert sandbox.ledger_counts() == {}


def test_non_ascii_body_is_refused_with_the_signed_jwt_message(
    env: tuple[Any, SandboxClient],
) -> None:
    _, client = env
    body = client.sign(ict(1)).encode("ascii") + "\u00e9".encode()
    response = client.post("/internal-cash-transfers", {}, content=body)
    assert response.status_code == 400
    assert response.json()["detail"] == SIGNED_JWT_POLICY_MESSAGE


def test_signed_body_needs_the_jwt_content_type(env: tuple[Any, SandboxClient]) -> None:
    _, client = env
    response = client.post("/internal-cash-transfers", ict(1), content_type="text/plain")
    assert response.status_code == 400
    assert response.json()["detail"] == SIGNED_JWT_POLICY_MESSAGE


def test_content_type_check_can_be_relaxed(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key, require_jwt_content_type=False)
    response = client.post("/internal-cash-transfers", ict(1), content_type="text/plain")
    assert response.status_code == 201


def test_tampered_signature_is_refused(env: tuple[Any, SandboxClient]) -> None:
    sandbox, client = env
    header, payload, signature = client.sign(ict(1)).split(".")
    other_payload = client.sign(ict(1, amount="999999.00")).split(".")[1]
    tampered = f"{header}.{other_payload}.{signature}".encode("ascii")
    response = client.post("/internal-cash-transfers", {}, content=tampered)
    assert response.status_code == 400
    assert "signature" in response.json()["detail"]
    assert sandbox.ledger_counts() == {}
    assert payload != other_payload


def test_bad_body_signature_status_can_be_401(rsa_private_key: Any, other_key: Any) -> None:
    _, client = in_process(rsa_private_key, body_jwt_error_status=401)
    response = client.post(
        "/internal-cash-transfers", {}, content=client.sign(ict(1), key=other_key).encode()
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    "claims",
    [{"exp": int(time.time()) - 3600}, {"iss": "someone-else"}, {"exp": None}],
    ids=["expired", "wrong-iss", "no-exp"],
)
def test_body_claims_are_checked(env: tuple[Any, SandboxClient], claims: dict[str, Any]) -> None:
    _, client = env
    content = client.sign(ict(1), **claims).encode()
    response = client.post("/internal-cash-transfers", {}, content=content)
    assert response.status_code == 400


def test_body_of_another_clients_key_is_refused(rsa_private_key: Any, other_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    sandbox.register_client("other", "other-key", public_pem(other_key))
    content = client.sign(ict(1), key=other_key, kid="other-key").encode()
    response = client.post("/internal-cash-transfers", {}, content=content)
    assert response.status_code == 400
    assert "kid" in response.json()["detail"]


def test_gets_need_no_signed_body(env: tuple[Any, SandboxClient]) -> None:
    _, client = env
    response = client.get("/echo/https?a=1")
    assert response.status_code == 200
    assert response.json() == {
        "requestMethod": "GET",
        "securityPolicy": "HTTPS",
        "queryParameters": {"a": "1"},
    }


def test_signed_echo_answers(env: tuple[Any, SandboxClient]) -> None:
    _, client = env
    response = client.post("/echo/signed-jwt", {"hello": "world"})
    assert response.status_code == 200
    assert response.json()["securityPolicy"] == "SIGNED_JWT"


def test_jwks_publishes_the_sandbox_key(env: tuple[Any, SandboxClient]) -> None:
    sandbox, client = env
    keys = client.http.get("/oauth2/api/v1/jwks").json()["keys"]
    assert keys[0]["kid"] == sandbox.authority.signing_key_id
    assert len(keys[0]["kid"]) == 40
