"""One POST attempt, as the client makes it: within its budget, in its slot, never with a stale
signed body, and every request IBKR counts (token requests included) in a slot of its own."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import jwt

from tests.unit.client_support import ACCEPTED, BODY, Gateway, make_client
from worker.clock import ManualClock
from worker.ibkr.client import SIGNED_JWT_POLICY_REFUSAL, SendBudget
from worker.ibkr.endpoints import INTERNAL_CASH_TRANSFERS
from worker.ibkr.ratelimit import MemoryLedger, RateLimiter
from worker.ibkr.responses import Outcome


def claims(request: httpx.Request) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(request.content, options={"verify_signature": False})
    return decoded


def refused(status: int, detail: str) -> httpx.Response:
    return httpx.Response(status, json={"type": "/simple", "status": status, "detail": detail})


def test_a_401_gets_a_new_token_and_a_body_signed_afresh(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    """The replay after a 401 never carries the refused body: it is signed again (guard: the
    signature in `IbkrClient._request_once`; sign once before the loop and this fails)."""
    answers = iter(
        [refused(401, "access token request invalid"), httpx.Response(202, json=ACCEPTED)]
    )

    def gw(request: httpx.Request) -> httpx.Response:
        clock.advance(2)  # time passes between the two sends
        return next(answers)

    gateway = Gateway(gw)
    result = make_client(gateway, rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.ACCEPTED
    first, second = gateway.requests
    assert len(gateway.tokens) == 2
    assert first.headers["Authorization"] != second.headers["Authorization"]
    assert claims(second)["iat"] == claims(first)["iat"] + 2
    assert first.content != second.content


def test_a_signed_jwt_policy_refusal_is_signed_again_and_sent_once_more(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    """IBKR's gateway refused the body (an expired one, a clock it disagrees with) before the
    backend saw it: nothing registered, so a fresh body goes once more before it counts."""
    answers = iter([refused(400, SIGNED_JWT_POLICY_REFUSAL), httpx.Response(202, json=ACCEPTED)])

    def gw(request: httpx.Request) -> httpx.Response:
        clock.advance(3)
        return next(answers)

    gateway = Gateway(gw)
    result = make_client(gateway, rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.ACCEPTED
    first, second = gateway.requests
    assert claims(second)["iat"] == claims(first)["iat"] + 3
    assert len(gateway.tokens) == 1  # the token was fine


def test_a_second_policy_refusal_is_the_answer(rsa_private_key: Any, clock: ManualClock) -> None:
    gateway = Gateway(lambda request: refused(400, SIGNED_JWT_POLICY_REFUSAL))
    result = make_client(gateway, rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.INVALID
    assert len(gateway.requests) == 2


def test_an_ordinary_400_is_never_sent_again(rsa_private_key: Any, clock: ManualClock) -> None:
    gateway = Gateway(lambda request: refused(400, "Missing required parameter"))
    result = make_client(gateway, rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.INVALID
    assert len(gateway.requests) == 1


def test_a_401_a_new_token_does_not_cure_gets_a_fresh_body_once_then_is_the_answer(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    """Reference 3.1: a bad or expired body may be answered 401 as well as 400."""
    gateway = Gateway(lambda request: refused(401, "Unauthorized"))
    result = make_client(gateway, rsa_private_key, clock).post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY
    )
    assert result.outcome is Outcome.AUTH_FAILED
    assert len(gateway.requests) == 3  # as sent, with a new token, with a fresh body
    assert len(gateway.tokens) == 2


def test_nothing_leaves_after_the_attempts_deadline(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    client = make_client(gateway, rsa_private_key, clock)
    now = clock.monotonic()
    result = client.post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY, SendBudget(send_by_mono=now, lease_end_mono=now + 90)
    )
    assert result.outcome is Outcome.NOT_SENT
    assert gateway.requests == []


def test_a_slot_after_the_deadline_is_not_waited_for(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    limiter = RateLimiter(MemoryLedger(), 1, 0, 0.0, clock)
    client = make_client(gateway, rsa_private_key, clock, rate_limiter=limiter)
    client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)  # takes the slot of this second
    now = clock.monotonic()
    result = client.post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY, SendBudget(send_by_mono=now + 0.5, lease_end_mono=now + 90)
    )
    assert result.outcome is Outcome.NOT_SENT
    assert len(gateway.requests) == 1
    assert clock.monotonic() == now  # it did not sleep for a slot it could not use


def test_a_429_is_not_waited_out_past_the_deadline(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(429, headers={"Retry-After": "20"}))
    client = make_client(gateway, rsa_private_key, clock)
    now = clock.monotonic()
    result = client.post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY, SendBudget(send_by_mono=now + 10, lease_end_mono=now + 90)
    )
    assert result.outcome is Outcome.THROTTLED
    assert len(gateway.requests) == 1


def test_the_body_expires_no_later_than_the_attempts_lease(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    client = make_client(gateway, rsa_private_key, clock)
    now = clock.monotonic()
    client.post_instruction(
        INTERNAL_CASH_TRANSFERS, BODY, SendBudget(send_by_mono=now + 30, lease_end_mono=now + 75)
    )
    signed = claims(gateway.requests[0])
    assert signed["exp"] == int(clock.now().timestamp()) + 75


class OversleepingClock(ManualClock):
    """A saturated host: the first `late_times` sleeps end `late_s` after they should."""

    def __init__(self, late_s: float, late_times: int) -> None:
        super().__init__()
        self.late_s = late_s
        self.late_times = late_times

    def sleep(self, seconds: float) -> None:
        extra = self.late_s if self.late_times > 0 and seconds > 0 else 0.0
        self.late_times -= 1 if seconds > 0 else 0
        super().sleep(seconds + extra)


def test_a_request_too_late_for_its_slot_takes_a_new_one_and_never_goes_anyway(
    rsa_private_key: Any,
) -> None:
    """Guard: the lateness check before the first byte (`SlotGate._depart` in ibkr.attempt;
    make it return without raising and the late request leaves 0.5 s after its slot)."""
    clock = OversleepingClock(late_s=0.5, late_times=1)
    left: list[float] = []

    def gw(request: httpx.Request) -> httpx.Response:
        left.append(clock.now().timestamp())
        return httpx.Response(202, json=ACCEPTED)

    gateway = Gateway(gw)
    ledger = MemoryLedger()
    limiter = RateLimiter(ledger, 1, 0, 0.2, clock)
    client = make_client(gateway, rsa_private_key, clock, rate_limiter=limiter)
    client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)  # waits, wakes 0.5 s late
    assert client.late_departures == 1
    granted = sorted(t for state in ledger._states.values() for t in state.ring.values())
    # Each request left within the tolerance of a slot it held; the late slot stays counted.
    for t in left:
        assert any(0 <= t - slot <= limiter.tolerance_s for slot in granted)
    assert left[1] - left[0] >= 1.2


def test_the_token_request_takes_a_slot_of_its_own(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    gateway = Gateway(lambda request: httpx.Response(202, json=ACCEPTED))
    ledger = MemoryLedger()
    limiter = RateLimiter(ledger, 10, 600, 0.1, clock)
    client = make_client(gateway, rsa_private_key, clock, rate_limiter=limiter)
    client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY)
    buckets = set(ledger._states)
    assert any("POST /oauth2/api/v1/token" in bucket for bucket in buckets)
    # The client's minute counts both: the token request and the POST.
    [minute] = [state for name, state in ledger._states.items() if name.startswith("client:")]
    assert minute.granted == 2


def test_no_more_requests_are_on_the_wire_than_the_client_has_connections(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    on_wire = 0
    most = 0
    lock = threading.Lock()

    def gw(request: httpx.Request) -> httpx.Response:
        nonlocal on_wire, most
        with lock:
            on_wire += 1
            most = max(most, on_wire)
        time.sleep(0.02)
        with lock:
            on_wire -= 1
        return httpx.Response(202, json=ACCEPTED)

    client = make_client(
        Gateway(gw),
        rsa_private_key,
        clock,
        request_connections=3,
        rate_limiter=RateLimiter(MemoryLedger(), 0, 0, 0.0, clock),
    )
    threads = [
        threading.Thread(target=client.post_instruction, args=(INTERNAL_CASH_TRANSFERS, BODY))
        for _ in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 3


def test_a_caller_holding_a_permit_is_not_given_a_second_one(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    client = make_client(
        Gateway(lambda request: httpx.Response(202, json=ACCEPTED)),
        rsa_private_key,
        clock,
        request_connections=1,
    )
    with client.permit():
        # The POST inside uses the permit already held (it would wait forever otherwise).
        assert client.post_instruction(INTERNAL_CASH_TRANSFERS, BODY).outcome is Outcome.ACCEPTED
