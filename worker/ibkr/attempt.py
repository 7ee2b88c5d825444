"""One request's departure and what a failure to get an answer means.

- `SendBudget`: when a POST attempt must have left by, and when its signed body must expire.
- `SlotGate.send`: a request in a rate-limit slot of its own, taken when it can leave at once
  (at its first write, through `worker._compat.departure_check`), never sent late "anyway".
- `TRANSPORT_FAILURES`: the one table from a failure to an outcome. A failure before any byte
  could leave is NOT_SENT (safe to send again at once); one after is UNKNOWN for a POST (it
  may have registered: the caller looks it up before anything is resent). A GET is
  TRANSIENT either way (it can simply be repeated).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx

from worker._compat import DepartureRefused, departure_check
from worker.clock import Clock
from worker.ibkr.endpoints import Endpoint
from worker.ibkr.ratelimit import RateLimiter
from worker.ibkr.responses import ApiResult, Outcome, no_response
from worker.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SendBudget:
    """Limits of one POST attempt, in monotonic seconds: it leaves before `send_by_mono` or
    not at all, and its signed body expires no later than `lease_end_mono` (the attempt's
    lease), so IBKR refuses it once another process may have taken the attempt over."""

    send_by_mono: float
    lease_end_mono: float


class NoSlot(Exception):
    """No rate-limit slot (or token) could be had before the request's deadline; nothing was
    sent. `retry_after_s`: how long until the earliest slot there would have been (if known)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _SlotTooLate(DepartureRefused):
    """The earliest rate-limit slot comes after the request's deadline (none was taken)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Failure:
    """What a failure to get an answer says about the request: whether any byte of it may have
    reached IBKR, the outcome of a POST and of a GET, whether the POST may be sent again at
    once, and the result's text (`{name}`: the error's class, `{error}`: its message)."""

    may_have_left: bool
    post_outcome: Outcome
    get_outcome: Outcome
    resend_safe: bool
    says: str


_NO_SLOT = Failure(False, Outcome.NOT_SENT, Outcome.TRANSIENT, True, "{error}; nothing was sent")
_NOT_CONNECTED = Failure(
    False,
    Outcome.NOT_SENT,
    Outcome.TRANSIENT,
    True,
    "could not connect to IBKR ({name}); nothing was sent",
)
_NO_ANSWER = Failure(
    True,
    Outcome.UNKNOWN,
    Outcome.TRANSIENT,
    False,
    "no answer from IBKR ({name}); the request may have been processed",
)

#: Failure by the error's class; an error takes the row of its most specific class listed
#: (as httpx maps httpcore's errors). Any other transport error may have left after the
#: request's first byte: a read or write timeout, a reset, a closed connection.
TRANSPORT_FAILURES: dict[type[Exception], Failure] = {
    NoSlot: _NO_SLOT,
    httpx.ConnectError: _NOT_CONNECTED,
    httpx.ConnectTimeout: _NOT_CONNECTED,
    httpx.PoolTimeout: _NOT_CONNECTED,
    httpx.UnsupportedProtocol: _NOT_CONNECTED,
    httpx.TransportError: _NO_ANSWER,
}
#: The errors `TRANSPORT_FAILURES` turns into results (for an `except` clause).
FAILED_SENDS = tuple(TRANSPORT_FAILURES)


def failure_of(error: Exception) -> Failure:
    """The row of `TRANSPORT_FAILURES` for `error` (KeyError for an error it does not list)."""
    for cls in type(error).__mro__:
        failure = TRANSPORT_FAILURES.get(cls)
        if failure is not None:
            return failure
    raise KeyError(f"{type(error).__name__} is not a transport failure")


def failed_result(error: Exception, endpoint: Endpoint, post: bool, started: float) -> ApiResult:
    """The result of a request that got no answer because of `error` (`started`: its
    `time.perf_counter()` at the start)."""
    failure = failure_of(error)
    result = no_response(
        endpoint.method,
        endpoint.path,
        failure.post_outcome if post else failure.get_outcome,
        failure.says.format(name=type(error).__name__, error=error),
        latency_ms=elapsed_ms(started),
    )
    retry_after_s = getattr(error, "retry_after_s", None)
    return replace(result, retry_after_s=retry_after_s) if retry_after_s is not None else result


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class SlotGate:
    """Sends each request of `client_id` in a rate-limit slot of its own from `limiter`.

    `at_write`: the slot is taken at the request's first write (the client's own transport:
    the connection is the request's, its head and body are ready); otherwise (a test's
    transport, the in-process sandbox's) just before the call. `late_departures` counts
    requests that woke too late for their slot and took a new one."""

    def __init__(self, limiter: RateLimiter, clock: Clock, client_id: str, at_write: bool) -> None:
        self.limiter = limiter
        self._clock = clock
        self._client_id = client_id
        self._at_write = at_write
        self.late_departures = 0

    def send(
        self, endpoint_key: str, budget: SendBudget, send: Callable[[], httpx.Response]
    ) -> httpx.Response:
        """`send()` the request in its slot: nothing but the wait for the slot lies between
        the slot and the bytes, and a wake-up more than `tolerance_s` after the slot takes a
        new slot instead of leaving late. Raises NoSlot when no slot can be had before
        `budget.send_by_mono` (nothing left)."""
        if self._clock.monotonic() >= budget.send_by_mono:
            raise NoSlot("the request could not leave before its deadline")
        if not self.limiter.enabled:
            return send()

        def depart() -> None:
            self._depart(endpoint_key, budget)

        try:
            if self._at_write:
                with departure_check(depart):
                    return send()
            depart()
            return send()
        except _SlotTooLate as too_late:
            raise NoSlot(str(too_late), too_late.retry_after_s) from None
        except DepartureRefused as refused:
            raise NoSlot(str(refused)) from None

    def _depart(self, endpoint_key: str, budget: SendBudget) -> None:
        """Returns once the request may leave in a slot it holds; raises DepartureRefused when
        it cannot leave before its deadline."""
        limiter = self.limiter
        while True:
            now_mono = self._clock.monotonic()
            if now_mono >= budget.send_by_mono:
                raise DepartureRefused("the request could not leave before its deadline")
            # The last moment the request may still leave, on the shared clock: a slot after it
            # is not taken at all (it would hold back every later request).
            latest = self._clock.now().timestamp() + (budget.send_by_mono - now_mono)
            try:
                slot = limiter.reserve(self._client_id, endpoint_key, latest)
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
