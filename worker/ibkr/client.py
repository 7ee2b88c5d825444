"""The IBKR Funds & Banking client: rate-limit slot, signature, POST/GET, meaning of the answer.

One `httpx.Client` with keep-alive per `IbkrClient`; tests swap the transport (httpx's seam).
A POST is signed only once its rate-limit slot is granted, so the body's `iat` is fresh. A 429
means nothing was processed and is waited out and retried; 5xx are returned as TRANSIENT (on a
POST their outcome is uncertain, the caller polls); a POST whose answer never arrives is UNKNOWN.
"""

from __future__ import annotations

import socket
import time
from types import TracebackType
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from worker.clock import Clock, SystemClock
from worker.config import ConfigError, Settings
from worker.ibkr import ids
from worker.ibkr.auth import AuthenticationError, IbkrAuth
from worker.ibkr.endpoints import (
    CLIENT_INSTRUCTION_STATUS,
    INSTRUCTION_SET_STATUS,
    INSTRUCTION_STATUS,
    Endpoint,
)
from worker.ibkr.ratelimit import MemoryLedger, RateLimiter
from worker.ibkr.responses import ApiResult, Outcome, no_response, parse_response
from worker.ibkr.signing import BodySigner, load_private_key
from worker.logging import get_logger

log = get_logger(__name__)

DEFAULT_THROTTLE_RETRIES = 3
# A Retry-After longer than this is handed back to the caller (THROTTLED) instead of blocking.
DEFAULT_MAX_THROTTLE_WAIT_S = 60.0
_USER_AGENT = "ibkr-worker"
#: Connections per process: 16 in flight cover IBKR's 10 requests/s up to 1.6 s an answer (32
#: cost the worker more CPU under load, for no throughput). Every one is kept alive, and none
#: is expired by the client: httpcore (1.0.9) closes an idle connection when the pool holds
#: more than `max_keepalive_connections` (counting all of them, not the idle ones) or when its
#: keep-alive expiry passes, and such a close can hit a connection just handed to a waiting
#: request, whose POST then hangs for the whole read timeout and ends UNKNOWN
#: (encode/httpcore#1110; with 32 open and 16 kept, a busy worker also reconnected for nearly
#: every request). A connection the server closes is still dropped before reuse (httpcore
#: checks an idle socket for the server's close), and TCP keep-alive probes find one a network
#: dropped silently, and keep NAT and firewall state of idle connections alive.
HTTP_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=16, keepalive_expiry=None)


class _SetCookies(httpx.Cookies):
    """A cookie jar that only looks at responses that set a cookie. httpx hands every response
    to the jar, which builds urllib request and response stand-ins to find nothing: about a
    tenth of httpx's own time per call. IBKR's API authenticates by bearer token; a cookie a load
    balancer sets is still kept and sent back."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class _HttpClient(httpx.Client):
    """`httpx.Client` with the `_SetCookies` jar."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._jar = _SetCookies(super().cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._jar = _SetCookies(cookies)


def _tcp_keepalive() -> list[tuple[int, int, int]]:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    # Probe after 30 s idle, every 10 s, give up after 3 unanswered (where the OS lets us say).
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def http_transport() -> httpx.HTTPTransport:
    """The transport of every IBKR client: `HTTP_LIMITS` and TCP keep-alive."""
    return httpx.HTTPTransport(limits=HTTP_LIMITS, socket_options=_tcp_keepalive())


# Failures that happen before any byte of the request left: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class IbkrClient:
    """Calls IBKR's Funds & Banking endpoints for one client id.

    `private_key` defaults to the key in `settings.ibkr_private_key_file` (parsed once);
    `transport` replaces httpx's network transport (tests, the in-process sandbox);
    `rate_limiter` defaults to a per-process limiter from the settings; `clock` to the system
    clock. `throttle_retries` is how many times a 429 is waited out before THROTTLED is
    returned.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        private_key: RSAPrivateKey | None = None,
        transport: httpx.BaseTransport | None = None,
        rate_limiter: RateLimiter | None = None,
        clock: Clock | None = None,
        throttle_retries: int = DEFAULT_THROTTLE_RETRIES,
        max_throttle_wait_s: float = DEFAULT_MAX_THROTTLE_WAIT_S,
    ) -> None:
        if not settings.ibkr_client_id:
            raise ConfigError("IBKR_CLIENT_ID is required to talk to IBKR; set it")
        if not settings.ibkr_key_id:
            raise ConfigError("IBKR_KEY_ID is required to talk to IBKR; set it")
        if private_key is None:
            _, _, key_path = settings.require_ibkr_credentials()
            private_key = load_private_key(key_path)
        self.client_id: str = settings.ibkr_client_id
        self._clock: Clock = clock or SystemClock()
        self.throttle_retries = throttle_retries
        self.max_throttle_wait_s = max_throttle_wait_s
        self._signer = BodySigner(private_key, self.client_id, settings.ibkr_key_id, self._clock)
        self._http = _HttpClient(
            base_url=settings.ibkr_base_url,
            transport=transport or http_transport(),
            timeout=httpx.Timeout(settings.http_timeout_s),
            headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
            limits=HTTP_LIMITS,
        )
        # Absolute URLs of the paths without parameters (every POST): httpx parses a relative
        # URL and then the merged one again on every request.
        self._base = str(self._http.base_url).rstrip("/")
        self._fixed_urls: dict[str, httpx.URL] = {}
        self.auth = IbkrAuth(
            http=self._http,
            token_url=settings.ibkr_token_url,
            client_id=self.client_id,
            key_id=settings.ibkr_key_id,
            private_key=private_key,
            scope=settings.ibkr_scope,
            audience=settings.ibkr_assertion_audience,
            clock=self._clock,
        )
        self.rate_limiter = rate_limiter or RateLimiter(
            MemoryLedger(),
            settings.max_requests_per_second_per_endpoint,
            settings.max_requests_per_minute,
            settings.rate_limit_margin_s,
            self._clock,
        )

    def __repr__(self) -> str:
        return f"IbkrClient(client_id={self.client_id!r}, base_url={str(self._http.base_url)!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the keep-alive connections."""
        self._http.close()

    def __enter__(self) -> IbkrClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- calls --------------------------------------------------------------------------------

    def post_instruction(self, endpoint: Endpoint, body: dict[str, Any]) -> ApiResult:
        """POST `body` (an IBKR request with clientInstructionIds filled in) to `endpoint` as a
        signed JWT. Raises NonAsciiBodyError for a body that cannot be signed; every API
        answer (or its absence) comes back as an ApiResult."""
        if endpoint.method != "POST":
            raise ValueError(f"{endpoint.key} is not a POST endpoint")
        return self._with_throttle_retries(endpoint, endpoint.path, body)

    def get_client_instruction(self, client_instruction_id: int) -> ApiResult:
        """Status of an instruction by its clientInstructionId (200, 208 for a reused id)."""
        return self._get(CLIENT_INSTRUCTION_STATUS, clientInstructionId=client_instruction_id)

    def get_instruction(self, instruction_id: int) -> ApiResult:
        """Status of an instruction by IBKR's instructionId."""
        return self._get(INSTRUCTION_STATUS, instructionId=instruction_id)

    def get_instruction_set(self, instruction_set_id: int) -> ApiResult:
        """Status of every instruction of an instruction set."""
        return self._get(INSTRUCTION_SET_STATUS, instructionSetId=instruction_set_id)

    def _get(self, endpoint: Endpoint, **path_params: int) -> ApiResult:
        for name, value in path_params.items():
            if not ids.is_id(value) or value == ids.NO_ID:
                raise ValueError(
                    f"{name} must be an int other than 0, {ids.ID_DOMAIN}, for {endpoint.key}"
                )
        return self._with_throttle_retries(endpoint, endpoint.url_path(**path_params), None)

    def _with_throttle_retries(
        self, endpoint: Endpoint, url_path: str, body: dict[str, Any] | None
    ) -> ApiResult:
        attempt = 0
        while True:
            self.rate_limiter.acquire(self.client_id, endpoint.key)
            result = self._send(endpoint, url_path, body)
            if result.outcome is not Outcome.THROTTLED or attempt >= self.throttle_retries:
                return result
            # A 429 means IBKR processed nothing: waiting and sending again cannot duplicate.
            wait_s = result.retry_after_s
            if wait_s is None:
                wait_s = float(2**attempt)
            if wait_s > self.max_throttle_wait_s:
                return result
            attempt += 1
            log.warning(
                "ibkr api throttled; waiting",
                method=endpoint.method,
                path=endpoint.path,
                wait_s=wait_s,
                attempt=attempt,
            )
            self._clock.sleep(wait_s)

    def _send(self, endpoint: Endpoint, url_path: str, body: dict[str, Any] | None) -> ApiResult:
        headers: dict[str, str] = {}
        content: bytes | None = None
        if body is not None:
            # Signed after the slot was granted (the caller waited), so iat/exp are current.
            content = self._signer.sign(body).encode("ascii")
            headers["Content-Type"] = "application/jwt"
        started = time.perf_counter()
        try:
            response = self._http.request(
                endpoint.method,
                self._url(endpoint, url_path),
                content=content,
                headers=headers,
                auth=self.auth,
            )
        except AuthenticationError as error:
            # No token: nothing was sent to the /gw endpoint.
            outcome = Outcome.TRANSIENT if error.transient else Outcome.AUTH_FAILED
            result = no_response(
                endpoint.method, endpoint.path, outcome, str(error), http_status=error.http_status
            )
            self._log(result)
            return result
        except _NOT_SENT as error:
            result = no_response(
                endpoint.method,
                endpoint.path,
                Outcome.TRANSIENT,
                f"could not connect to IBKR ({type(error).__name__}); nothing was sent",
                latency_ms=_elapsed_ms(started),
            )
            self._log(result)
            return result
        except httpx.TransportError as error:
            # The request may have reached IBKR: for a POST the outcome is unknown (poll by
            # clientInstructionId before sending again); a GET can simply be repeated.
            outcome = Outcome.UNKNOWN if endpoint.method == "POST" else Outcome.TRANSIENT
            result = no_response(
                endpoint.method,
                endpoint.path,
                outcome,
                f"no answer from IBKR ({type(error).__name__}); the request may have been "
                "processed",
                latency_ms=_elapsed_ms(started),
            )
            self._log(result)
            return result
        latency_ms = _elapsed_ms(started)
        result = parse_response(
            endpoint.method,
            endpoint.path,
            response.status_code,
            response.content,
            latency_ms,
            response.headers,
            now=self._clock.now(),
        )
        self._log(result)
        return result

    def _url(self, endpoint: Endpoint, url_path: str) -> httpx.URL:
        if url_path != endpoint.path:  # with an id in it: parsed once, not kept
            return httpx.URL(self._base + url_path)
        url = self._fixed_urls.get(url_path)
        if url is None:
            url = self._fixed_urls[url_path] = httpx.URL(self._base + url_path)
        return url

    def _log(self, result: ApiResult) -> None:
        # Method, path template, status and latency only: never the token or the signed body.
        exchange = result.exchange
        log.info(
            "ibkr api call",
            method=exchange.method,
            path=exchange.path,
            status=exchange.http_status,
            latency_ms=exchange.latency_ms,
            outcome=result.outcome.value,
            instruction_set_id=result.instruction_set_id,
            client_instruction_ids=[
                item.client_instruction_id
                for item in result.results
                if item.client_instruction_id is not None
            ][:20],
        )


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
