"""OAuth 2.0 client credentials with `private_key_jwt` (reference §2).

The access token is cached and refreshed `refresh_margin_s` (300 s) before it expires; one
thread refreshes at a time while the others wait and reuse its token. The token request goes
out through `post_form`, which the client gives: it takes a rate-limit slot and a connection
for it like any other request, because IBKR counts token requests too. What a 401 from a `/gw`
call leads to (a new token, the request signed and sent again) is the client's business.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from worker import jsontext
from worker.clock import Clock
from worker.ibkr.signing import DEFAULT_ASSERTION_LIFETIME_S, client_assertion
from worker.logging import get_logger
from worker.redaction import scrub_text

log = get_logger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_REFRESH_MARGIN_S = 300.0
# Used when a token response has no usable expires_in (IBKR sends 86399).
_FALLBACK_EXPIRES_IN_S = 600.0


class AuthenticationError(Exception):
    """No access token could be obtained. `transient` is True for network failures and 5xx
    answers (try again later), False when IBKR refused the credentials (fix the settings).
    The message never contains the token or the client assertion."""

    def __init__(self, message: str, *, transient: bool, http_status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.http_status = http_status


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # monotonic seconds after which a new token is fetched
    expires_in_s: float

    def __repr__(self) -> str:
        return f"_Token(refresh_at={self.refresh_at}, expires_in_s={self.expires_in_s})"


#: Sends the token request: (token URL, form fields) -> the answer. Raises httpx.HTTPError
#: when no answer came, or AuthenticationError when the request could not be sent in time.
PostForm = Callable[[str, dict[str, str]], httpx.Response]


class IbkrAuth:
    """Bearer tokens for IBKR `/gw` calls.

    `post_form` sends the token request; `clock` gives the monotonic time used for expiry and
    the wall time of the assertion; `refresh_margin_s` is how long before expiry (seconds) a
    token is replaced, at most half its lifetime so short-lived tokens are not fetched on every
    call.
    """

    def __init__(
        self,
        *,
        post_form: PostForm,
        token_url: str,
        client_id: str,
        key_id: str,
        private_key: RSAPrivateKey,
        scope: str,
        audience: str,
        clock: Clock,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        assertion_lifetime_s: int = DEFAULT_ASSERTION_LIFETIME_S,
    ) -> None:
        self._post_form = post_form
        self.token_url = token_url
        self.client_id = client_id
        self._key_id = key_id
        self._private_key = private_key
        self.scope = scope
        self.audience = audience
        self._clock = clock
        self.refresh_margin_s = refresh_margin_s
        self.assertion_lifetime_s = assertion_lifetime_s
        self._token: _Token | None = None
        self._refresh_lock = threading.Lock()
        self.token_requests = 0  # how many token requests were sent (for tests and metrics)

    def __repr__(self) -> str:
        return f"IbkrAuth(client_id={self.client_id!r}, token_url={self.token_url!r})"

    # --- tokens -------------------------------------------------------------------------------

    def access_token(self) -> str:
        """A valid access token: the cached one, or a new one (one refresh at a time)."""
        current = self._token
        if current is not None and self._clock.monotonic() < current.refresh_at:
            return current.value
        with self._refresh_lock:
            current = self._token
            if current is not None and self._clock.monotonic() < current.refresh_at:
                return current.value  # another thread refreshed while we waited
            self._token = self._fetch()
            return self._token.value

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still `token`, when given)."""
        with self._refresh_lock:
            if token is None or (self._token is not None and self._token.value == token):
                self._token = None

    def _fetch(self) -> _Token:
        assertion = client_assertion(
            self._private_key,
            client_id=self.client_id,
            key_id=self._key_id,
            audience=self.audience,
            clock=self._clock,
            lifetime_s=self.assertion_lifetime_s,
        )
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": self.scope,
        }
        self.token_requests += 1
        try:
            response = self._post_form(self.token_url, form)
        except httpx.HTTPError as error:
            raise AuthenticationError(
                f"could not reach the IBKR token endpoint {self.token_url} "
                f"({type(error).__name__}); check IBKR_TOKEN_URL and the network, then retry",
                transient=True,
            ) from None
        if response.status_code != 200:
            detail = _problem_detail(response)
            transient = response.status_code >= 500 or response.status_code == 429
            advice = (
                "retry later"
                if transient
                else "check IBKR_CLIENT_ID, IBKR_KEY_ID, the registered public key, "
                "IBKR_ASSERTION_AUDIENCE and IBKR_SCOPE"
            )
            raise AuthenticationError(
                f"the IBKR token endpoint {self.token_url} answered HTTP "
                f"{response.status_code}{detail} for client {self.client_id}; {advice}",
                transient=transient,
                http_status=response.status_code,
            )
        try:
            body = jsontext.loads(response.content)
            value = body["access_token"]
            if not isinstance(value, str) or not value:
                raise TypeError("access_token is not a non-empty string")
        except (ValueError, KeyError, TypeError) as error:
            raise AuthenticationError(
                f"the IBKR token endpoint {self.token_url} answered 200 without a usable "
                f"access_token ({type(error).__name__}); check IBKR_TOKEN_URL",
                transient=True,
                http_status=200,
            ) from None
        expires_in = _seconds(body.get("expires_in"))
        margin = min(self.refresh_margin_s, expires_in / 2)
        refresh_at = self._clock.monotonic() + expires_in - margin
        log.info(
            "ibkr access token obtained",
            client_id=self.client_id,
            expires_in_s=expires_in,
            scope=body.get("scope"),
        )
        return _Token(value=value, refresh_at=refresh_at, expires_in_s=expires_in)


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return _FALLBACK_EXPIRES_IN_S
    return seconds if seconds > 0 else _FALLBACK_EXPIRES_IN_S


def _problem_detail(response: httpx.Response) -> str:
    """` (title: detail)` from a problem+json body, scrubbed of anything token-like."""
    try:
        body = jsontext.loads(response.content)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[key]) for key in ("title", "detail", "error") if body.get(key)]
    if not parts:
        return ""
    return " (" + scrub_text(": ".join(parts))[:200] + ")"
