"""The IBKR Funds & Banking client: connection, token, signature, rate-limit slot, call, answer.

Every request is made in this order, and each resource is taken only when the next can follow
at once: a connection permit (a lane: one of `request_connections` clients of one connection
each, so no request looks through a pool for a free connection), a valid access token (the
token request has a connection and a slot of its own), the signed body, then a rate-limit slot,
whose time the request leaves at. A request that could not
leave within `tolerance_s` of its slot is stopped before its first byte (the check runs in the
transport, at the first write) and takes a new slot; it never goes "anyway".

The connections are in `worker.ibkr.lanes`; the slot and the meaning of a failure to get an
answer (one table) in `worker.ibkr.attempt`.

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

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from worker.clock import Clock, SystemClock
from worker.config import ConfigError, Settings
from worker.ibkr import ids
from worker.ibkr.attempt import (
    FAILED_SENDS,
    NoSlot,
    SendBudget,
    SlotGate,
    elapsed_ms,
    failed_result,
)
from worker.ibkr.auth import AuthenticationError, IbkrAuth
from worker.ibkr.endpoints import (
    CLIENT_INSTRUCTION_STATUS,
    INSTRUCTION_SET_STATUS,
    INSTRUCTION_STATUS,
    Endpoint,
)
from worker.ibkr.lanes import (
    DEFAULT_REQUEST_CONNECTIONS,
    HTTP_LIMITS,
    Lanes,
    http_limits,
    http_transport,
)
from worker.ibkr.ratelimit import MemoryLedger, RateLimiter
from worker.ibkr.responses import ApiResult, Outcome, no_response, parse_response
from worker.ibkr.signing import BodySigner, load_private_key
from worker.logging import get_logger

__all__ = [
    "DEFAULT_REQUEST_CONNECTIONS",
    "DEFAULT_THROTTLE_RETRIES",
    "HTTP_LIMITS",
    "SIGNED_JWT_POLICY_REFUSAL",
    "IbkrClient",
    "SendBudget",
    "http_limits",
    "http_transport",
]

log = get_logger(__name__)

DEFAULT_THROTTLE_RETRIES = 3
#: The text of IBKR's gateway refusal of a signed body (reference §3.1).
SIGNED_JWT_POLICY_REFUSAL = "Invalid payload for security policy: SIGNED_JWT"


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
        self._lanes = Lanes(
            settings.ibkr_base_url, settings.http_timeout_s, request_connections, transport
        )
        # The budget of the request a token is fetched for, and one token request at a time.
        self._token_budget = threading.local()
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
        self._gate = SlotGate(
            self.rate_limiter, self._clock, self.client_id, self._lanes.departs_at_write
        )

    def __repr__(self) -> str:
        return f"IbkrClient(client_id={self.client_id!r}, base_url={self._lanes.base!r})"

    @property
    def late_departures(self) -> int:
        """Requests stopped before their first byte because they would have left late."""
        return self._gate.late_departures

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the keep-alive connections."""
        self._lanes.close()

    def __enter__(self) -> IbkrClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def permit(self) -> Iterator[None]:
        """Hold one of the client's request connections (waiting for one if all are busy).

        A caller that must commit something before its request (SUBMITTING) takes the permit
        first, so nothing it commits waits for a connection afterwards. Re-entrant within a
        thread: the calls below take it themselves when the caller did not.
        """
        with self._lanes.permit():
            yield

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
        with self._lanes.permit():
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
            self._token_budget.budget = budget
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
        url = self._lanes.url(endpoint.path, url_path)
        try:
            response = self._gate.send(
                endpoint.key,
                budget,
                lambda: self._lanes.held().request(
                    endpoint.method, url, content=content, headers=headers
                ),
            )
        except FAILED_SENDS as error:
            return failed_result(error, endpoint, post, started), token
        result = parse_response(
            endpoint.method,
            endpoint.path,
            response.status_code,
            response.content,
            elapsed_ms(started),
            response.headers,
            now=self._clock.wall_now(),
        )
        return result, token

    def _post_token_form(self, url: str, form: dict[str, str]) -> httpx.Response:
        """The token request: its own connection and its own slot (IBKR counts it), within the
        budget of the request that needs the token."""
        budget = getattr(self._token_budget, "budget", None) or self._default_budget()
        with self._token_connection:
            try:
                return self._gate.send(
                    self._token_endpoint_key,
                    budget,
                    lambda: self._lanes.token.post(
                        url, data=form, headers={"Accept": "application/json"}
                    ),
                )
            except NoSlot as error:
                raise AuthenticationError(
                    f"the IBKR token request could not be sent in time ({error}); retry later",
                    transient=True,
                ) from None

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
