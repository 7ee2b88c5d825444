"""RS256 signing: the client assertion (reference §2.2) and Signed-JWT request bodies (§3.1).

The private key is parsed once per process into a key object: handing PyJWT PEM bytes would
re-parse and re-check a 3072-bit key on every signature (~145 ms against ~0.7 ms). Bodies are
serialised with :func:`worker.jsontext.dumps` so Decimal amounts keep their exact digits, and
the bytes are signed with `PyJWS` (``jwt.encode`` would go through ``json.dumps``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.api_jws import PyJWS

from worker import jsontext
from worker.clock import Clock

ALGORITHM = "RS256"
# Body lifetime (exp - now): working clients use 300 s to 1000 s (reference §3.1).
DEFAULT_BODY_LIFETIME_S = 300
# Client assertion: exp = now + 60 s, iat = now - 10 s for clock skew (reference §2.2).
DEFAULT_ASSERTION_LIFETIME_S = 60
ASSERTION_SKEW_S = 10
# A signed body's iat is set this far in the past, as the assertion's is: a host clock a little
# ahead of IBKR's must not make IBKR see a body issued in the future.
BODY_IAT_BACKDATE_S = 10

_JWS = PyJWS()


class SigningKeyError(ValueError):
    """The private key file cannot be used (missing, not PEM, not RSA)."""


class NonAsciiBodyError(ValueError):
    """A body to sign carries non-ASCII text, which IBKR's Signed-JWT policy refuses."""


def _read_key(path: str) -> RSAPrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SigningKeyError(
            f"cannot read the IBKR private key file {path}: {error.strerror}; "
            "check IBKR_PRIVATE_KEY_FILE and the file's permissions"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        # The message of cryptography never contains key material, but keep ours generic.
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({type(error).__name__}); "
            "point IBKR_PRIVATE_KEY_FILE at the key written by `ibkr-worker keygen`"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(key).__name__}, not an RSA key; IBKR needs RSA (RS256)"
        )
    return key


@cache
def _load_cached(path: str, mtime_ns: int) -> RSAPrivateKey:
    del mtime_ns  # part of the cache key only: a replaced key file is read again
    return _read_key(path)


def load_private_key(path: str | os.PathLike[str]) -> RSAPrivateKey:
    """The RSA private key in the PEM file `path`, parsed once per process (per file version).

    Raises SigningKeyError with the path (never the key) when the file cannot be used.
    """
    resolved = str(Path(path).expanduser().resolve())
    try:
        mtime_ns = os.stat(resolved).st_mtime_ns
    except OSError as error:
        raise SigningKeyError(
            f"cannot read the IBKR private key file {resolved}: {error.strerror}; "
            "check IBKR_PRIVATE_KEY_FILE"
        ) from None
    return _load_cached(resolved, mtime_ns)


def non_ascii_path(value: Any, path: str = "") -> str | None:
    """The JSON path of the first key or string holding a non-ASCII character (`a.b[0]`;
    `(body)` for a bare string), or None. Request validation and the signer both use it."""
    if isinstance(value, str):
        return None if value.isascii() else (path or "(body)")
    if isinstance(value, Mapping):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if not str(key).isascii():
                return child
            found = non_ascii_path(item, child)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = non_ascii_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _headers(key_id: str) -> dict[str, str]:
    return {"typ": "JWT", "kid": key_id}


class BodySigner:
    """Turns a request body into the compact JWS IBKR expects for SIGNED_JWT operations.

    The payload is the body with `iss` (client id), `iat` and `exp` merged at the top level, in
    epoch seconds of the host's wall clock (`clock.wall_now()`: IBKR judges them against its
    own clock). `iat` is `BODY_IAT_BACKDATE_S` in the past; `exp` is `lifetime_s` after now
    (default 300 s), or sooner when `sign` is told so.
    """

    def __init__(
        self,
        private_key: RSAPrivateKey,
        client_id: str,
        key_id: str,
        clock: Clock,
        *,
        lifetime_s: float = DEFAULT_BODY_LIFETIME_S,
    ) -> None:
        self._private_key = private_key
        self.client_id = client_id
        self.key_id = key_id
        self._clock = clock
        self.lifetime_s = lifetime_s

    def __repr__(self) -> str:
        return f"BodySigner(client_id={self.client_id!r}, key_id={self.key_id!r})"

    def payload_bytes(self, body: dict[str, Any], *, lifetime_s: float | None = None) -> bytes:
        """The exact JSON bytes that get signed for `body` (claims merged, Decimals exact).
        `lifetime_s`: seconds from now to `exp` (default `self.lifetime_s`; never more)."""
        now = self._clock.wall_now().timestamp()
        lifetime = self.lifetime_s if lifetime_s is None else min(lifetime_s, self.lifetime_s)
        payload = {
            **body,
            "iss": self.client_id,
            "iat": int(now) - BODY_IAT_BACKDATE_S,
            # Rounded down: a body never lives longer than it was allowed to.
            "exp": int(now + max(lifetime, 0.0)),
        }
        text = jsontext.dumps(payload)
        # The text escapes every non-ASCII character as \uXXXX, so without an escape there is
        # none and the body need not be walked.
        if "\\u" in text:
            bad = non_ascii_path(body)
            if bad is not None:
                raise NonAsciiBodyError(
                    f"{bad} holds non-ASCII text, which IBKR refuses in a signed body "
                    "(Invalid payload for security policy: SIGNED_JWT); send ASCII only"
                )
        return text.encode("ascii")

    def sign(self, body: dict[str, Any], *, lifetime_s: float | None = None) -> str:
        """The compact JWS (`header.payload.signature`) carrying `body`, expiring `lifetime_s`
        seconds from now (default and upper bound: the signer's lifetime).

        Raises NonAsciiBodyError when the body holds non-ASCII text.
        """
        return _JWS.encode(
            self.payload_bytes(body, lifetime_s=lifetime_s),
            self._private_key,
            algorithm=ALGORITHM,
            headers=_headers(self.key_id),
        )


def client_assertion(
    private_key: RSAPrivateKey,
    *,
    client_id: str,
    key_id: str,
    audience: str,
    clock: Clock,
    lifetime_s: int = DEFAULT_ASSERTION_LIFETIME_S,
    skew_s: int = ASSERTION_SKEW_S,
) -> str:
    """The `private_key_jwt` client assertion for the token request (reference §2.2):
    iss = sub = client id, aud = `audience`, exp = now + `lifetime_s`, iat = now - `skew_s`."""
    now = int(clock.wall_now().timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "exp": now + lifetime_s,
        "iat": now - skew_s,
    }
    return _JWS.encode(
        jsontext.dumps(claims).encode("ascii"),
        private_key,
        algorithm=ALGORITHM,
        headers=_headers(key_id),
    )
