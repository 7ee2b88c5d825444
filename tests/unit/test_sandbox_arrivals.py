"""Arrivals counted as IBKR counts them (issue 13): every request stamped on receipt, attributed
to the client its credentials claim and to its endpoint; exact sliding-window maxima; and the
sandbox's own 429 limiter judging by the same receipt stamps."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ibkr_sandbox.gateway import Arrivals, RateLimiter, max_in_window
from ibkr_sandbox.messages import Request
from tests.sandbox.support import GW, ict, in_process

TOKEN = "POST /oauth2/api/v1/token"
STATUS_GET = "GET /gw/api/v1/client-instructions/{clientInstructionId}"
POST = "POST /gw/api/v1/internal-cash-transfers"


def _brute_max(stamps: list[float], window_s: float) -> int:
    """The most stamps in any [t, t + window_s), trying every start (a busiest window can be
    taken to start at a stamp)."""
    return max(
        (sum(1 for other in stamps if start <= other < start + window_s) for start in stamps),
        default=0,
    )


# Stamps on a millisecond grid, so boundaries (exactly one window apart) come up often.
_stamps = st.lists(st.integers(min_value=0, max_value=5_000).map(lambda ms: ms / 1000), max_size=60)


@given(_stamps)
def test_window_maximum_is_exact(stamps: list[float]) -> None:
    assert max_in_window(stamps, 1.0) == _brute_max(stamps, 1.0)
    assert max_in_window(stamps, 0.25) == _brute_max(stamps, 0.25)


def test_windows_are_half_open() -> None:
    assert max_in_window([10.0, 11.0], 1.0) == 1
    assert max_in_window([10.0, 10.999], 1.0) == 2
    assert max_in_window([], 1.0) == 0


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=0, max_value=3_000), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=4),
    st.randoms(use_true_random=False),
)
def test_limiter_is_exact_when_stamps_come_in_out_of_order(
    milliseconds: list[int], limit: int, rng: Any
) -> None:
    """Each request is admitted iff admitting it keeps every 1 s window at or under the limit,
    whatever order the receipt stamps reach the limiter in (threads stamp, then queue).

    Guard: `_Stamps.wait_before` also checks the windows that end at later stamps. Check only
    the window ending at the new stamp (`ends = [at]`) and this fails."""
    stamps = [ms / 1000 for ms in milliseconds]
    # Nearly sorted, as from threads: each stamp may be overtaken by a few later ones.
    order = sorted(range(len(stamps)), key=lambda i: stamps[i] + rng.uniform(0, 0.3))
    limiter = RateLimiter(limit, 10_000)
    admitted: list[float] = []
    for index in order:
        at = stamps[index]
        would_fit = _brute_max([*admitted, at], 1.0) <= limit
        wait = limiter.admit("c", "e", at)
        assert (wait is None) == would_fit, (admitted, at)
        if wait is None:
            admitted.append(at)
        else:
            assert wait > 0
    assert max_in_window(admitted, 1.0) <= limit


def test_limiter_retry_after_names_when_the_window_frees() -> None:
    limiter = RateLimiter(2, 600)
    assert limiter.admit("c", "e", 100.0) is None
    assert limiter.admit("c", "e", 100.4) is None
    assert limiter.admit("c", "e", 100.5) == pytest.approx(0.5)
    assert limiter.admit("c", "e", 101.0) is None
    # The per-client minute counts every endpoint together.
    minute = RateLimiter(100, 3)
    for at, endpoint in ((0.0, "a"), (1.0, "b"), (2.0, "c")):
        assert minute.admit("c", endpoint, at) is None
    assert minute.admit("c", "d", 59.0) == pytest.approx(1.0)
    assert minute.admit("other", "d", 59.0) is None


def _get(client: Any, at: float, cid: int = 1) -> Request:
    return Request(
        "GET",
        f"{GW}/client-instructions/{cid}",
        {"authorization": f"Bearer {client.token()}"},
        received_at=at,
    )


def test_the_429_limiter_judges_by_receipt_stamps_not_processing_time(
    rsa_private_key: Any,
) -> None:
    """Guard: `checks.checked` hands the request's receipt stamp to the limiter. Hand it
    the time of processing instead (`time.time()`) and this fails: the first burst,
    processed at once, gets a 429 (and the second, processed slowly, would get none)."""
    sandbox, client = in_process(rsa_private_key, rate_limits=True)
    app = sandbox.app
    base = time.time()
    # Received 150 ms apart, processed in one burst: no window of a second holds more than 7.
    spread = [app.handle(_get(client, base + 0.15 * n)).status for n in range(11)]
    assert spread == [404] * 11
    # Received within 0.3 s, processed 120 ms apart: the 11th is one too many in that second.
    later = base + 10.0
    crowded = []
    for n in range(11):
        crowded.append(app.handle(_get(client, later + 0.03 * n)).status)
        time.sleep(0.12)
    assert crowded == [404] * 10 + [429]


def test_every_request_is_counted_with_its_claimed_client(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, rate_limits=True)
    client.token()
    assert client.get("/client-instructions/1").status_code == 404
    # A token the sandbox never issued: refused, still counted for the client it names.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"sub": "mallory"}, stranger, algorithm="RS256")
    assert client.get("/echo/https", token=forged).status_code == 401
    assert client.get("/echo/https", token="not-a-jwt").status_code == 401
    assert client.http.get(GW + "/echo/https").status_code == 401
    assert client.http.get("/nowhere").status_code == 404
    refused = client.token_request(client_assertion=client.assertion(iss="acme", aud="/wrong"))
    assert refused.status_code == 400
    sandbox.set_faults(error_500_rate=1.0)
    assert client.post("/internal-cash-transfers", ict(1)).status_code == 500
    sandbox.set_faults(error_500_rate=0.0, drop_response_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/internal-cash-transfers", ict(2))
    sandbox.set_faults(drop_response_rate=0.0, inflight_rate=1.0, inflight_hold_s=60)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/internal-cash-transfers", ict(3))
    sandbox.set_faults(inflight_rate=0.0)
    statuses = [client.get("/client-instructions/1").status_code for _ in range(10)]
    assert statuses[-1] == 429
    client.http.get("/__admin/stats")  # the admin API is the sandbox's own, never counted

    seen = [(arrival.client_id, arrival.endpoint) for arrival in sandbox.arrivals()]
    assert seen == [
        ("acme", TOKEN),
        ("acme", STATUS_GET),
        ("mallory", "GET /gw/api/v1/echo/https"),
        ("", "GET /gw/api/v1/echo/https"),
        ("", "GET /gw/api/v1/echo/https"),
        ("", "GET /nowhere"),
        ("acme", TOKEN),
        ("acme", POST),
        ("acme", POST),
        ("acme", POST),
        *[("acme", STATUS_GET)] * 10,
    ]
    counted = sandbox.stats()["arrivals"]
    assert counted["total"] == len(seen) == 20
    assert counted["maxPerEndpointPerSecond"]["acme"][STATUS_GET] == 11
    assert counted["maxPerEndpointPerSecond"]["mallory"] == {"GET /gw/api/v1/echo/https": 1}
    assert counted["maxPerClientPerMinute"]["acme"] == 16
    assert counted["dropped"] == 0


def test_a_request_waiting_behind_a_slow_one_is_stamped_on_receipt(
    rsa_private_key: Any,
) -> None:
    """A status GET waits for the ledger a slow operation holds; its arrival is stamped when
    it reached the transport, not when it was processed."""
    sandbox, client = in_process(rsa_private_key)
    client.token()
    answered: list[float] = []
    sent: list[float] = []

    def status_get() -> None:
        sent.append(time.time())
        client.get("/client-instructions/1")
        answered.append(time.time())

    with sandbox.ledger.lock:
        worker = threading.Thread(target=status_get)
        worker.start()
        time.sleep(0.5)
        assert answered == []
    worker.join(timeout=5)
    stamp = next(a.at for a in sandbox.arrivals() if a.endpoint == STATUS_GET)
    assert stamp - sent[0] < 0.1
    assert answered[0] - stamp >= 0.4
    requests = sandbox.stats(include_requests=True)["requests"]
    assert [r["at"] for r in requests if r["endpoint"] == STATUS_GET] == [stamp]


def test_admin_api_serves_arrivals_and_their_maxima(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key)
    client.post("/internal-cash-transfers", ict(1))
    raw = client.http.get("/__admin/arrivals").json()["arrivals"]
    assert [(a["clientId"], a["endpoint"]) for a in raw] == [("acme", TOKEN), ("acme", POST)]
    assert raw[0]["at"] <= raw[1]["at"]
    stats = client.http.get("/__admin/stats").json()
    assert stats["arrivals"]["maxPerClientPerMinute"] == {"acme": 2}
    assert stats["arrivals"]["maxPerEndpointPerSecond"] == {"acme": {TOKEN: 1, POST: 1}}
    # The fields bench/ and older tests read are still there.
    for name in ("throttled", "connectionsOpened", "endpoints", "clients", "statuses"):
        assert name in stats
    assert stats["endpoints"][POST]["maxPerSecond"] == 1


def test_arrivals_past_the_kept_number_are_let_go_and_said_so() -> None:
    arrivals = Arrivals(keep=8)
    for n in range(9):
        arrivals.record(float(n), "c", "e")
    snapshot = arrivals.snapshot()
    assert snapshot["total"] == 9
    assert snapshot["dropped"] == 2
    assert [a.at for a in arrivals.list()] == [float(n) for n in range(2, 9)]
