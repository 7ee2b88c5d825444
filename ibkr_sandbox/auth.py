"""OAuth 2.0 `private_key_jwt` token endpoint, bearer tokens and signed-JWT request bodies
(reference §2, §3, §10 items 1-3).

Client keys are parsed once at registration and kept as key objects: verifying a 3072-bit RS256
signature with a key object costs well under a millisecond, parsing the PEM each time would not.
Access tokens are looked up in a table (the sandbox issued them), so a bearer check costs no
cryptography at all.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from ibkr_sandbox.clock import VirtualClock
from ibkr_sandbox.config import SandboxConfig
from ibkr_sandbox.fixtures import DEFAULT_COUNTERPARTY, MASTER_ACCOUNT
from worker import jsontext

TOKEN_PATH = "/oauth2/api/v1/token"  # noqa: S105 - a URL path, not a secret
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNED_JWT_POLICY_MESSAGE = "Invalid payload for security policy: SIGNED_JWT"

#: Every scope a registered client may be granted unless told otherwise (reference §2.5).
FUNDS_SCOPES: tuple[str, ...] = (
    "transfers.read",
    "transfers.write",
    "bank-instructions.read",
    "bank-instructions.write",
    "instructions.read",
    "instructions.write",
    "balances.read",
    "enumerations.read",
    "accounts.read",
    "echo.read",
    "echo.write",
)
#: JWT claims merged into a signed body; removed before schema validation.
BODY_CLAIMS = ("iss", "iat", "exp")


class AuthFailure(Exception):
    """A refused credential: `status` and a problem `detail` for the response."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class RegisteredClient:
    """A client the sandbox accepts (IBKR hands these out at onboarding)."""

    client_id: str
    scopes: frozenset[str]
    counterparty: str = DEFAULT_COUNTERPARTY
    #: instructionTypes this client is refused with 403 ERROR_PERMISSION_DENIED.
    denied_instruction_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AccessToken:
    """An access token the sandbox issued."""

    client: RegisteredClient
    scopes: frozenset[str]
    #: Virtual POSIX seconds.
    expires_at: float


@dataclass(frozen=True)
class _Key:
    client_id: str
    key_id: str
    public_key: rsa.RSAPublicKey


def _b64url_decode(segment: str) -> bytes:
    padded = segment + "=" * (-len(segment) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


@dataclass(frozen=True)
class CompactJws:
    """The parts of a compact JWS, signature not yet checked."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def parse_compact_jws(token: str) -> CompactJws:
    """Split and decode `header.payload.signature`; ValueError when it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError("not a compact JWS (three base64url segments)")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        payload = _b64url_decode(parts[1])
        signature = _b64url_decode(parts[2])
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"undecodable JWS segment: {error}") from error
    if not isinstance(header, dict):
        raise ValueError("the JWS header is not a JSON object")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return CompactJws(header, payload, signing_input, signature)


def verify_rs256(public_key: rsa.RSAPublicKey, jws: CompactJws) -> bool:
    """True when `jws` carries a valid RS256 signature under `public_key`."""
    try:
        public_key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


@functools.cache
def _signing_key() -> rsa.RSAPrivateKey:
    """The sandbox's own signing key (access tokens, callbacks), made once per process: 2048
    bits keeps start fast, and sandboxes never accept each other's tokens anyway (tokens are
    looked up in the issuing sandbox's table)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Authority:
    """Registered clients and keys, the token endpoint, bearer checks and signed bodies."""

    def __init__(
        self,
        config: SandboxConfig,
        clock: VirtualClock,
        *,
        real_time: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._real_time = real_time
        self._lock = threading.Lock()
        self._clients: dict[str, RegisteredClient] = {}
        self._keys: dict[str, _Key] = {}
        self._tokens: dict[str, AccessToken] = {}
        self._serial = itertools.count(1)
        self._signing_key = _signing_key()
        public_der = self._signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # IBKR's own key ids are 40 hex characters.
        self.signing_key_id = hashlib.sha1(public_der, usedforsecurity=False).hexdigest()
        self._jws = jwt.api_jws.PyJWS()

    # --- registration ------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        key_id: str,
        public_key_pem: bytes,
        scopes: Iterable[str] | None = None,
        *,
        counterparty: str = DEFAULT_COUNTERPARTY,
        denied_instruction_types: Iterable[str] = (),
    ) -> RegisteredClient:
        """Accept `client_id` signing with the RSA public key `public_key_pem` under `key_id`.
        `scopes` None grants every Funds & Banking and echo scope. Registering the same client
        again adds the key (clients may hold several)."""
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"the public key of client {client_id!r} is not an RSA key")
        client = RegisteredClient(
            client_id=client_id,
            scopes=frozenset(FUNDS_SCOPES if scopes is None else scopes),
            counterparty=counterparty,
            denied_instruction_types=frozenset(denied_instruction_types),
        )
        with self._lock:
            existing = self._keys.get(key_id)
            if existing is not None and existing.client_id != client_id:
                raise ValueError(f"key id {key_id!r} already belongs to {existing.client_id!r}")
            self._keys[key_id] = _Key(client_id, key_id, key)
            self._clients[client_id] = client
        return client

    def client(self, client_id: str) -> RegisteredClient | None:
        """The registered client `client_id`, or None."""
        return self._clients.get(client_id)

    # --- token endpoint -----------------------------------------------------------------------

    def _audiences(self, host: str | None, base_url: str | None) -> set[str]:
        paths = {"/token"}
        urls: set[str] = set()
        if base_url:
            urls.add(base_url.rstrip("/") + TOKEN_PATH)
        if host:
            urls.update({f"http://{host}{TOKEN_PATH}", f"https://{host}{TOKEN_PATH}"})
        mode = self._config.assertion_audience
        if mode == "path":
            return paths
        if mode == "url":
            return urls
        return paths | urls

    def issue_token(
        self, content_type: str, body: bytes, *, host: str | None, base_url: str | None
    ) -> dict[str, Any]:
        """Answer a token request (form body) with IBKR's token response; AuthFailure else."""
        bad = self._config.assertion_error_status
        if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            raise AuthFailure(400, "The token request must be application/x-www-form-urlencoded")
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise AuthFailure(400, "The token request body is not ASCII form data") from None
        fields = {name: values[0] for name, values in form.items() if values}
        if fields.get("grant_type") != "client_credentials":
            raise AuthFailure(400, "grant_type must be client_credentials")
        if fields.get("client_assertion_type") != ASSERTION_TYPE:
            raise AuthFailure(400, f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = fields.get("client_assertion", "")
        if not assertion:
            raise AuthFailure(400, "client_assertion is missing")
        scope = fields.get("scope", "")
        if not 4 <= len(scope) <= 1024:
            raise AuthFailure(400, "scope is missing or not 4-1024 characters")
        try:
            jws = parse_compact_jws(assertion)
        except ValueError as error:
            raise AuthFailure(bad, f"client_assertion is not a JWT: {error}") from None
        key = self._keys.get(str(jws.header.get("kid", "")))
        if jws.header.get("alg") != "RS256":
            raise AuthFailure(bad, "client_assertion must be signed with RS256")
        if key is None:
            raise AuthFailure(bad, "client_assertion kid names no registered key")
        if not verify_rs256(key.public_key, jws):
            raise AuthFailure(bad, "client_assertion signature does not verify")
        claims = self._claims(jws, bad, "client_assertion")
        if claims.get("iss") != key.client_id or claims.get("sub") != key.client_id:
            raise AuthFailure(bad, "client_assertion iss and sub must both be the client id")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        accepted = self._audiences(host, base_url)
        if not any(isinstance(value, str) and value in accepted for value in audiences):
            raise AuthFailure(bad, f"client_assertion aud must be one of {sorted(accepted)}")
        self._check_times(claims, bad, "client_assertion", self._config.assertion_max_lifetime_s)
        client = self._clients[key.client_id]
        requested = scope.split()
        granted = [name for name in dict.fromkeys(requested) if name in client.scopes]
        if not granted:
            raise AuthFailure(400, "none of the requested scopes is allowed for this client")
        return self._new_token(client, granted)

    def _claims(self, jws: CompactJws, status: int, what: str) -> dict[str, Any]:
        try:
            claims = json.loads(jws.payload)
        except ValueError:
            raise AuthFailure(status, f"{what} payload is not JSON") from None
        if not isinstance(claims, dict):
            raise AuthFailure(status, f"{what} payload is not a JSON object")
        return claims

    def _check_times(
        self, claims: dict[str, Any], status: int, what: str, max_lifetime_s: float | None
    ) -> None:
        now = self._real_time()
        leeway = self._config.jwt_leeway_s
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthFailure(status, f"{what} has no numeric exp")
        if exp < now - leeway:
            raise AuthFailure(status, f"{what} has expired")
        if iat is not None:
            if not isinstance(iat, int | float) or isinstance(iat, bool):
                raise AuthFailure(status, f"{what} iat is not numeric")
            if iat > now + leeway:
                raise AuthFailure(status, f"{what} iat is in the future")
            if max_lifetime_s is not None and exp - iat > max_lifetime_s:
                raise AuthFailure(status, f"{what} lives longer than {max_lifetime_s:g} s")

    def _new_token(self, client: RegisteredClient, granted: list[str]) -> dict[str, Any]:
        issued = int(self._clock.timestamp())
        lifetime = self._config.token_lifetime_s
        claims = {
            "iss": "/token",
            "sub": client.client_id,
            "exp": issued + lifetime,
            "iat": issued,
            "scope": " ".join(granted),
            "csid": client.client_id,
            "accountId": MASTER_ACCOUNT,
            # Unique per token even within one second, so revocation and lookups stay exact.
            "jti": f"{next(self._serial)}-{secrets.token_hex(4)}",
        }
        token = self._jws.encode(
            json.dumps(claims, separators=(",", ":")).encode(),
            self._signing_key,
            algorithm="RS256",
            headers={"typ": "JWT", "kid": self.signing_key_id},
        )
        with self._lock:
            self._tokens[token] = AccessToken(client, frozenset(granted), float(issued + lifetime))
        return {
            "access_token": token,
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": max(lifetime - 1, 0),
        }

    # --- bearer tokens -------------------------------------------------------------------------

    def check_bearer(self, authorization: str | None) -> AccessToken:
        """The access token named by an Authorization header; AuthFailure(401) otherwise."""
        if not authorization:
            raise AuthFailure(401, "access token request invalid: no Authorization header")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthFailure(401, "access token request invalid: not a Bearer token")
        token = self._tokens.get(value.strip())
        if token is None:
            raise AuthFailure(401, "access token request invalid")
        if token.expires_at <= self._clock.timestamp():
            raise AuthFailure(401, "access token expired")
        return token

    def revoke_tokens(self) -> int:
        """Invalidate every access token issued so far; returns how many there were."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
        return count

    # --- signed bodies ---------------------------------------------------------------------------

    def verify_signed_body(self, body_text: str, client: RegisteredClient) -> dict[str, Any]:
        """Verify a compact-JWS request body of `client` and return its payload (claims
        removed, numbers exact). Shape errors raise AuthFailure(400, the SIGNED_JWT policy
        message); verification errors raise AuthFailure(configured 400 or 401)."""
        bad = self._config.body_jwt_error_status
        try:
            jws = parse_compact_jws(body_text.strip())
        except ValueError:
            raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE) from None
        key = self._keys.get(str(jws.header.get("kid", "")))
        if jws.header.get("alg") != "RS256":
            raise AuthFailure(bad, "signed request must use RS256")
        if key is None or key.client_id != client.client_id:
            raise AuthFailure(bad, "signed request kid names no key of this client")
        if not verify_rs256(key.public_key, jws):
            raise AuthFailure(bad, "signed request signature does not verify")
        try:
            payload = jsontext.loads(jws.payload)
        except ValueError:
            raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE) from None
        if not isinstance(payload, dict):
            raise AuthFailure(400, SIGNED_JWT_POLICY_MESSAGE)
        if self._config.body_jwt_check_iss and payload.get("iss") != client.client_id:
            raise AuthFailure(bad, "signed request iss is not the client id")
        self._check_times(payload, bad, "signed request", self._config.body_jwt_max_lifetime_s)
        for claim in BODY_CLAIMS:
            payload.pop(claim, None)
        return payload

    # --- the sandbox's own key ---------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """The sandbox's public key set (to verify its access tokens and callbacks)."""
        jwk = json.loads(RSAAlgorithm.to_jwk(self._signing_key.public_key()))
        jwk.update({"kid": self.signing_key_id, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def sign(self, payload: dict[str, Any]) -> str:
        """A compact RS256 JWS of `payload` (exact JSON) under the sandbox's key."""
        return self._jws.encode(
            jsontext.dumps(payload).encode(),
            self._signing_key,
            algorithm="RS256",
            headers={"typ": "JWT", "kid": self.signing_key_id},
        )
