"""The IBKR Funds & Banking client: connection, token, signature, rate-limit slot, call, answer.

Every request is made in this order, and each resource is taken only when the next can follow
at once: a connection permit (a lane: one of `request_connections` clients of one connection
each, so no request looks through a pool for a free connection), a valid access token (the
token request has a connection and a slot of its own), the signed body, then a rate-limit slot,
whose time the request leaves at. A request that could not
leave within `tolerance_s` of its slot is stopped before its first byte (the check runs in the
transport, at the first write) and takes a new slot; it never goes "anyway".

A POST attempt has a budget (`SendBudget`): it leaves before `send_by_mono` or not at all
(`Outcome.NOT_SENT`: nothing reached IBKR), and its body expires no later than the attempt's
lease. Within the budget, answers that show IBKR processed nothing are handled here: a 401 gets
a new token and the body signed again; a `SIGNED_JWT` policy 400 (or a 401 that a new token does
not cure, the worse branch of reference §3.1) gets the body signed again (fresh iat and exp) and
sent once more; a 429 is waited out. None of those can register a transaction, so sending again
cannot move money twice. Everything else is returned: 5xx and lost answers (UNKNOWN) leave the
outcome uncertain, and the caller finds out by asking before anything is resent.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from worker._compat import DepartureRefused, departure_check, departure_guarded_transport
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
#: Requests a client has on the wire at once (connections in its pool, plus one kept for the
#: token request). A worker thread takes one before it commits SUBMITTING, so these also bound
#: the requests a process receives at once: 32 cover IBKR's 10 requests/s up to 3.2 s an
#: answer, and let a worker process's shared transactions carry about 25 steps (16: about 15,
#: and 3 processes at 16 did a quarter less on the benchmark's 2 cores). httpcore opens them
#: only as they are needed.
DEFAULT_REQUEST_CONNECTIONS = 32
#: The text of IBKR's gateway refusal of a signed body (reference §3.1).
SIGNED_JWT_POLICY_REFUSAL = "Invalid payload for security policy: SIGNED_JWT"
_USER_AGENT = "ibkr-worker"


def http_limits(request_connections: int = DEFAULT_REQUEST_CONNECTIONS) -> httpx.Limits:
    """Connections of one client: one per request permit plus one for the token request (each
    permit and the token request have a pool of one of their own: `http_limits(0)`).

    Every one is kept alive and none is expired by the client: httpcore (1.0.9) closes an idle
    connection when the pool holds more than `max_keepalive_connections` (counting all of them,
    not the idle ones) or when its keep-alive expiry passes, and such a close can hit a
    connection just handed to a waiting request, whose POST then hangs for the whole read
    timeout (encode/httpcore#1110). A connection the server closed is still dropped before
    reuse (httpcore checks an idle socket for the server's close), and TCP keep-alive probes
    find one a network dropped silently.
    """
    total = request_connections + 1
    return httpx.Limits(
        max_connections=total, max_keepalive_connections=total, keepalive_expiry=None
    )


HTTP_LIMITS = http_limits()


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


def http_transport(request_connections: int = DEFAULT_REQUEST_CONNECTIONS) -> httpx.HTTPTransport:
    """The transport of every IBKR client: `http_limits`, TCP keep-alive, and the departure
    check at each request's first write (`worker._compat`)."""
    return departure_guarded_transport(http_limits(request_connections), _tcp_keepalive())


# Failures that happen before any byte of the request left: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class SendBudget:
    """Limits of one POST attempt, in monotonic seconds: it leaves before `send_by_mono` or
    not at all, and its signed body expires no later than `lease_end_mono` (the attempt's
    lease), so IBKR refuses it once another process may have taken the attempt over."""

    send_by_mono: float
    lease_end_mono: float


class _NoSlot(Exception):
    """No rate-limit slot (or token) could be had before the request's deadline;
    `retry_after_s`: how long until the earliest slot there would have been (when known)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _SlotTooLate(DepartureRefused):
    """The earliest rate-limit slot comes after the request's deadline (none was taken)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IbkrClient:
    """Calls IBKR's Funds & Banking endpoints for one client id.

    `private_key` defaults to the key in `settings.ibkr_private_key_file` (parsed once);
    `transport` replaces httpx's network transport (tests, the in-process sandbox);
    `rate_limiter` defaults to a per-process limiter from the settings; `clock` is the clock
    every process shares (`now`), the host's wall clock for what IBKR judges (`wall_now`) and
    the monotonic one for durations. `throttle_retries` is how many 429s one call waits out;
    `request_connections` how many requests may be on the wire at once.
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
        request_connections: int = DEFAULT_REQUEST_CONNECTIONS,
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
        self.http_timeout_s = settings.http_timeout_s
        self._signer = BodySigner(
            private_key,
            self.client_id,
            settings.ibkr_key_id,
            self._clock,
            lifetime_s=settings.body_lifetime_s,
        )
        # The client's own transport runs the slot's wait at the request's first write; another
        # (a test's, the in-process sandbox's) has no write: the wait runs before the call.
        self._departs_at_write = transport is None

        def lane() -> _HttpClient:
            # One connection each: a permit is a lane, so finding a free connection never
            # scans a pool (httpcore's does, for every request, across all its connections).
            return _HttpClient(
                base_url=settings.ibkr_base_url,
                transport=transport or http_transport(0),
                timeout=httpx.Timeout(settings.http_timeout_s),
                headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
                limits=http_limits(0),
            )

        # The most recently used lane first: at a low rate a few connections do all the work.
        self._lanes: queue.LifoQueue[_HttpClient] = queue.LifoQueue()
        for _ in range(request_connections):
            self._lanes.put(lane())
        self._token_http = lane()
        # Absolute URLs of the paths without parameters (every POST): httpx parses a relative
        # URL and then the merged one again on every request.
        self._base = str(self._token_http.base_url).rstrip("/")
        self._fixed_urls: dict[str, httpx.URL] = {}
        self._all_lanes = [*self._lanes.queue, self._token_http]
        self._holding = threading.local()
        self._token_connection = threading.Lock()
        self._token_endpoint_key = "POST " + (urlsplit(settings.ibkr_token_url).path or "/")
        self.auth = IbkrAuth(
            post_form=self._post_token_form,
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
        #: Requests stopped before their first byte because they would have left late.
        self.late_departures = 0

    def __repr__(self) -> str:
        return f"IbkrClient(client_id={self.client_id!r}, base_url={self._base!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the keep-alive connections."""
        for lane in self._all_lanes:
            lane.close()

    def __enter__(self) -> IbkrClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- connection permits ---------------------------------------------------------------------

    @contextmanager
    def permit(self) -> Iterator[None]:
        """Hold one of the client's request connections (waiting for one if all are busy).

        A caller that must commit something before its request (SUBMITTING) takes the permit
        first, so nothing it commits waits for a connection afterwards. Re-entrant within a
        thread: the calls below take it themselves when the caller did not.
        """
        if getattr(self._holding, "lane", None) is not None:
            yield
            return
        lane = self._lanes.get()
        self._holding.lane = lane
        try:
            yield
        finally:
            self._holding.lane = None
            self._lanes.put(lane)

    def _lane(self) -> _HttpClient:
        lane: _HttpClient | None = getattr(self._holding, "lane", None)
        assert lane is not None, "a request is made while holding a permit"
        return lane

    # --- calls --------------------------------------------------------------------------------

    def post_instruction(
        self, endpoint: Endpoint, body: dict[str, Any], budget: SendBudget | None = None
    ) -> ApiResult:
        """POST `body` (an IBKR request with clientInstructionIds filled in) to `endpoint` as a
        signed JWT, within `budget` (default: leave within the HTTP timeout, body lifetime as
        configured). Raises NonAsciiBodyError for a body that cannot be signed; every API
        answer (or its absence) comes back as an ApiResult."""
        if endpoint.method != "POST":
            raise ValueError(f"{endpoint.key} is not a POST endpoint")
        return self._call(endpoint, endpoint.path, body, budget or self._default_budget())

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
        url_path = endpoint.url_path(**path_params)
        return self._call(endpoint, url_path, None, self._default_budget())

    def _default_budget(self) -> SendBudget:
        now = self._clock.monotonic()
        return SendBudget(now + self.http_timeout_s, now + self._signer.lifetime_s)

    def _call(
        self, endpoint: Endpoint, url_path: str, body: dict[str, Any] | None, budget: SendBudget
    ) -> ApiResult:
        with self.permit():
            new_token = signed_again = False
            throttled = 0
            while True:
                result, token = self._call_once(endpoint, url_path, body, budget)
                status = result.http_status
                if status == 401 and not new_token:
                    # The token was refused before anything was processed: a new one, the
                    # body signed again, a new slot.
                    new_token = True
                    log.info("ibkr token refused; re-authenticating", path=endpoint.path)
                    self.auth.invalidate(token)
                    continue
                if body is not None and not signed_again and _refused_signature(result):
                    # The gateway refused the signed body itself (a clock IBKR disagrees with,
                    # an expired body) before the backend saw it: signed afresh, sent once more.
                    signed_again = True
                    log.warning(
                        "ibkr refused the signed body; signing it again",
                        path=endpoint.path,
                        status=status,
                    )
                    continue
                if (
                    result.outcome is Outcome.THROTTLED
                    and throttled < self.throttle_retries
                    and self._wait_fits(result.retry_after_s, throttled, budget)
                ):
                    # IBKR processed nothing: waiting and sending again cannot duplicate.
                    wait_s = _throttle_wait_s(result.retry_after_s, throttled)
                    throttled += 1
                    log.warning(
                        "ibkr api throttled; waiting",
                        method=endpoint.method,
                        path=endpoint.path,
                        wait_s=wait_s,
                        attempt=throttled,
                    )
                    self._clock.sleep(wait_s)
                    continue
                return result

    def _wait_fits(self, retry_after_s: float | None, throttled: int, budget: SendBudget) -> bool:
        wait_s = _throttle_wait_s(retry_after_s, throttled)
        return self._clock.monotonic() + wait_s < budget.send_by_mono

    def _call_once(
        self, endpoint: Endpoint, url_path: str, body: dict[str, Any] | None, budget: SendBudget
    ) -> tuple[ApiResult, str | None]:
        """One request (with its own slot); returns the result and the token it carried."""
        result, token = self._request_once(endpoint, url_path, body, budget)
        self._log(result)
        return result, token

    def _request_once(
        self, endpoint: Endpoint, url_path: str, body: dict[str, Any] | None, budget: SendBudget
    ) -> tuple[ApiResult, str | None]:
        post = body is not None
        started = time.perf_counter()
        try:
            self._holding.token_budget = budget
            token = self.auth.access_token()
        except AuthenticationError as error:
            # No token: nothing was sent to the /gw endpoint.
            if error.transient:
                outcome = Outcome.NOT_SENT if post else Outcome.TRANSIENT
            else:
                outcome = Outcome.AUTH_FAILED
            result = no_response(
                endpoint.method, endpoint.path, outcome, str(error), http_status=error.http_status
            )
            return result, None
        headers = {"Authorization": f"Bearer {token}"}
        content: bytes | None = None
        if body is not None:
            remaining_lease_s = budget.lease_end_mono - self._clock.monotonic()
            content = self._signer.sign(body, lifetime_s=remaining_lease_s).encode("ascii")
            headers["Content-Type"] = "application/jwt"
        try:
            response = self._send_in_slot(
                endpoint.key,
                budget,
                lambda: self._lane().request(
                    endpoint.method,
                    self._url(endpoint, url_path),
                    content=content,
                    headers=headers,
                ),
            )
        except _NoSlot as error:
            result = no_response(
                endpoint.method,
                endpoint.path,
                Outcome.NOT_SENT if post else Outcome.TRANSIENT,
                f"{error}; nothing was sent",
            )
            return replace(result, retry_after_s=error.retry_after_s), token
        except _NOT_SENT as error:
            result = no_response(
                endpoint.method,
                endpoint.path,
                Outcome.NOT_SENT if post else Outcome.TRANSIENT,
                f"could not connect to IBKR ({type(error).__name__}); nothing was sent",
                latency_ms=_elapsed_ms(started),
            )
            return result, token
        except httpx.TransportError as error:
            # The request may have reached IBKR: for a POST the outcome is unknown (look it up
            # by clientInstructionId before sending again); a GET can simply be repeated.
            result = no_response(
                endpoint.method,
                endpoint.path,
                Outcome.UNKNOWN if post else Outcome.TRANSIENT,
                f"no answer from IBKR ({type(error).__name__}); the request may have been "
                "processed",
                latency_ms=_elapsed_ms(started),
            )
            return result, token
        result = parse_response(
            endpoint.method,
            endpoint.path,
            response.status_code,
            response.content,
            _elapsed_ms(started),
            response.headers,
            now=self._clock.wall_now(),
        )
        return result, token

    def _send_in_slot(self, endpoint_key: str, budget: SendBudget, send: Any) -> httpx.Response:
        """`send()` the request in a rate-limit slot of its own, taken when it can leave at once.

        With the client's own transport the slot is taken at the request's first write (the
        connection is the request's, its head and body are ready), waited for there, and the
        request leaves right after: nothing but the wait lies between the slot and the bytes.
        A wake-up more than `tolerance_s` after the slot takes a new slot instead of leaving
        late. Raises _NoSlot when no slot can be had before `budget.send_by_mono` (nothing
        left)."""
        limiter = self.rate_limiter
        if self._clock.monotonic() >= budget.send_by_mono:
            raise _NoSlot("the request could not leave before its deadline")
        if not limiter.enabled:
            response: httpx.Response = send()
            return response

        def depart() -> None:
            while True:
                now_mono = self._clock.monotonic()
                if now_mono >= budget.send_by_mono:
                    raise DepartureRefused("the request could not leave before its deadline")
                # The last moment the request may still leave, on the shared clock: a slot after
                # it is not taken at all (it would hold back every later request).
                latest = self._clock.now().timestamp() + (budget.send_by_mono - now_mono)
                try:
                    slot = limiter.reserve(self.client_id, endpoint_key, latest)
                except Exception as error:  # noqa: BLE001 - the shared ledger is away
                    raise DepartureRefused(f"no rate-limit slot ({type(error).__name__})") from None
                if not slot.granted:
                    raise _SlotTooLate(
                        "the next rate-limit slot comes after the request's deadline",
                        max(slot.at - self._clock.now().timestamp(), 0.0),
                    )
                limiter.wait_until(slot.at)
                late_s = limiter.late_s(slot.at)
                if late_s <= limiter.tolerance_s:
                    return
                self.late_departures += 1
                log.info(
                    "request woke too late for its slot; taking a new one",
                    endpoint=endpoint_key,
                    late_s=round(late_s, 3),
                )

        try:
            if self._departs_at_write:
                with departure_check(depart):
                    response = send()
            else:
                depart()
                response = send()
        except _SlotTooLate as too_late:
            raise _NoSlot(str(too_late), too_late.retry_after_s) from None
        except DepartureRefused as refused:
            raise _NoSlot(str(refused)) from None
        return response

    def _post_token_form(self, url: str, form: dict[str, str]) -> httpx.Response:
        """The token request: its own connection and its own slot (IBKR counts it), within the
        budget of the request that needs the token."""
        budget = getattr(self._holding, "token_budget", None) or self._default_budget()
        with self._token_connection:
            try:
                return self._send_in_slot(
                    self._token_endpoint_key,
                    budget,
                    lambda: self._token_http.post(
                        url, data=form, headers={"Accept": "application/json"}
                    ),
                )
            except _NoSlot as error:
                raise AuthenticationError(
                    f"the IBKR token request could not be sent in time ({error}); retry later",
                    transient=True,
                ) from None

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


def _refused_signature(result: ApiResult) -> bool:
    """The gateway refused the signed body (not the request's content): a 400 naming the
    SIGNED_JWT policy, or a 401 after a fresh token (reference §3.1: a bad or expired body may
    be answered 400 or 401)."""
    if result.http_status == 401:
        return True
    return result.http_status == 400 and SIGNED_JWT_POLICY_REFUSAL in (result.error_detail or "")


def _throttle_wait_s(retry_after_s: float | None, throttled: int) -> float:
    return retry_after_s if retry_after_s is not None else float(2**throttled)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
