"""A small signing client for the sandbox's own tests. It talks to the sandbox with PyJWT and
httpx directly (not through worker.ibkr), so these tests pin the sandbox's wire behaviour."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import builders
from worker import jsontext

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALL_SCOPES = (
    "transfers.read transfers.write bank-instructions.read bank-instructions.write "
    "instructions.read instructions.write balances.read enumerations.read echo.read echo.write"
)
GW = "/gw/api/v1"


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The PEM public key of `key`."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ict(cid: int, amount: Any = "10.00", **fields: Any) -> dict[str, Any]:
    """A single INTERNAL_CASH_TRANSFER body, its amount a JSON number."""
    return builders.transfer(cid, jsontext.loads(str(amount)), **fields)


class SandboxClient:
    """Token, signed POSTs and GETs against a sandbox reached through `http`."""

    def __init__(
        self,
        http: httpx.Client,
        key: rsa.RSAPrivateKey,
        *,
        client_id: str = "acme",
        key_id: str = "main",
    ) -> None:
        self.http = http
        self.key = key
        self.client_id = client_id
        self.key_id = key_id
        self._token: str | None = None

    def assertion(self, *, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        kid = claims.pop("kid", None) or self.key_id
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": "/token",
            "iat": now - 10,
            "exp": now + 20,
        }
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(
            payload, key or self.key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"}
        )

    def token_request(self, scope: str = ALL_SCOPES, **form: Any) -> httpx.Response:
        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
            "scope": scope,
        }
        data.update(form)
        data = {name: value for name, value in data.items() if value is not None}
        return self.http.post("/oauth2/api/v1/token", data=data)

    def token(self, scope: str = ALL_SCOPES) -> str:
        if self._token is None:
            response = self.token_request(scope)
            assert response.status_code == 200, response.text
            self._token = str(response.json()["access_token"])
        return self._token

    def renew(self) -> None:
        """Forget the cached token (after moving the virtual clock past its expiry)."""
        self._token = None

    def sign(
        self, body: dict[str, Any], *, key: rsa.RSAPrivateKey | None = None, **claims: Any
    ) -> str:
        kid = claims.pop("kid", None) or self.key_id
        now = int(time.time())
        payload = {**body, "iss": self.client_id, "iat": now, "exp": now + 300}
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.api_jws.PyJWS().encode(
            jsontext.dumps(payload).encode(),
            key or self.key,
            algorithm="RS256",
            headers={"typ": "JWT", "kid": kid},
        )

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}"}

    def post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        content: bytes | None = None,
        content_type: str = "application/jwt",
        token: str | None = None,
        gateway: str = GW,
    ) -> httpx.Response:
        """POST `body` signed to `gateway` + `path` (`gateway="/gw/api/v2"` for v2)."""
        data = content if content is not None else self.sign(body).encode("ascii")
        headers = {**self.headers(token), "Content-Type": content_type}
        return self.http.post(gateway + path, content=data, headers=headers)

    def get(self, path: str, *, token: str | None = None) -> httpx.Response:
        return self.http.get(GW + path, headers=self.headers(token))

    def status(self, client_instruction_id: int) -> dict[str, Any]:
        response = self.get(f"/client-instructions/{client_instruction_id}")
        assert response.status_code in (200, 208), response.text
        return dict(response.json()["instructionResult"])


def in_process(key: rsa.RSAPrivateKey, **config: Any) -> tuple[Any, SandboxClient]:
    """A frozen-clock sandbox (rate limits off unless given) with client "acme" registered,
    and a client reaching it through the in-process transport."""
    from ibkr_sandbox import Sandbox, SandboxConfig

    settings: dict[str, Any] = {"speed": 0.0, "rate_limits": False}
    settings.update(config)
    sandbox = Sandbox(SandboxConfig(**settings))
    sandbox.register_client(client_id="acme", key_id="main", public_key_pem=public_pem(key))
    http = httpx.Client(transport=sandbox.transport(), base_url="http://sandbox.test")
    return sandbox, SandboxClient(http, key)
