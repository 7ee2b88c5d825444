"""Gateway behaviour around the backend: rate limits, downtime, quirks, faults, size limit, admin
API and statistics (reference §10 items 12-14, 16-18)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ibkr_sandbox.gateway import RateLimiter
from ibkr_sandbox.messages import is_loopback
from tests.sandbox.support import SandboxClient, ict, in_process

Env = tuple[Any, SandboxClient]


def test_per_endpoint_limit_answers_429_with_retry_after(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, rate_limits=True)
    client.token()
    statuses = [client.get(f"/client-instructions/{n}").status_code for n in range(11)]
    assert statuses == [404] * 10 + [429]
    limited = client.get("/client-instructions/1")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.json()["title"] == "Too Many Requests"
    # Another endpoint has its own per-second budget.
    assert client.get("/echo/https").status_code == 200
    assert sandbox.stats()["throttled"] == 2


def test_per_client_minute_limit_is_configurable(rsa_private_key: Any) -> None:
    _, client = in_process(
        rsa_private_key,
        rate_limits=True,
        max_requests_per_second_per_endpoint=100,
        max_requests_per_minute=5,
    )
    statuses = [client.get("/echo/https").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]


def test_sliding_windows_admit_again_after_they_pass() -> None:
    limiter = RateLimiter(2, 600)
    assert limiter.admit("c", "e", 100.0) is None
    assert limiter.admit("c", "e", 100.0) is None
    wait = limiter.admit("c", "e", 100.0)
    assert wait == pytest.approx(1.0)
    assert limiter.admit("c", "e", 101.0) is None
    assert RateLimiter(1, 1, enabled=False).admit("c", "e", 100.0) is None


def test_downtime_now_answers_503_until_the_window_closes(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    client.token()
    sandbox.downtime_now(600)
    response = client.post("/internal-cash-transfers", ict(1))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "600"
    assert client.get("/client-instructions/1").status_code == 503
    assert client.get("/echo/https").status_code == 200
    sandbox.clock.advance(600)
    assert client.post("/internal-cash-transfers", ict(1)).status_code == 201
    assert sandbox.ledger_counts() == {1: 1}


def test_hold_mode_accepts_and_keeps_pending_until_the_window_ends(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, downtime_behaviour="hold")
    sandbox.downtime_now(600)
    response = client.post("/internal-cash-transfers", ict(1))
    assert response.status_code == 202
    assert response.json()["instructionResult"]["instructionStatus"] == "PENDING"
    sandbox.clock.advance(599)
    assert client.status(1)["instructionStatus"] == "PENDING"
    sandbox.clock.advance(1)
    # Worked on from the end of the window, as a 202 internal transfer: at the next batch.
    assert client.status(1)["instructionStatus"] == "PENDING"
    sandbox.clock.advance(60)
    assert client.status(1)["instructionStatus"] == "PROCESSED"


def test_calendar_downtime_applies_on_saturday_when_switched_on(rsa_private_key: Any) -> None:
    saturday = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    _, client = in_process(rsa_private_key, downtime_calendar=True, start_time=saturday)
    assert client.post("/internal-cash-transfers", ict(1)).status_code == 503
    _, calendar_off = in_process(rsa_private_key, start_time=saturday)
    assert calendar_off.post("/internal-cash-transfers", ict(1)).status_code == 201


def test_quirks_mode_uses_ibkrs_older_shapes(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key, quirks=True)
    ok = client.post("/internal-cash-transfers", ict(1)).json()["instructionResult"]
    assert ok["status"] == "PROCESSED"
    assert "instructionStatus" not in ok
    assert ok["clientInstructionId"] == "1"
    rejected = client.post("/internal-cash-transfers", ict(2, sourceAccountId="U345")).json()
    assert isinstance(rejected["instructionSetId"], str)
    assert rejected["instructionResult"]["code"] == "CORRUPT_DATA_INVALID_ACCT"
    assert rejected["instructionResult"]["description"] == "Account U345 does not exist"
    assert "error" not in rejected["instructionResult"]
    polled = client.get("/client-instructions/1").json()
    assert polled["instructionResult"]["status"] == "PROCESSED"


def test_injected_500s_and_503s_apply_nothing(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, error_500_rate=1.0)
    client_token = client.token()
    assert client.post("/internal-cash-transfers", ict(1), token=client_token).status_code == 500
    sandbox.set_faults(error_500_rate=0.0, error_503_rate=1.0)
    assert client.post("/internal-cash-transfers", ict(1)).status_code == 503
    sandbox.set_faults(error_503_rate=0.0)
    assert sandbox.ledger_counts() == {}
    assert client.post("/internal-cash-transfers", ict(1)).status_code == 201


def test_lost_response_is_applied_once(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    client.token()
    sandbox.set_faults(drop_response_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/internal-cash-transfers", ict(1))
    sandbox.set_faults(drop_response_rate=0.0)
    assert sandbox.ledger_counts() == {1: 1}
    assert client.status(1)["instructionStatus"] == "PROCESSED"
    assert client.post("/internal-cash-transfers", ict(1)).status_code == 422
    assert sandbox.ledger_counts() == {1: 1}
    assert sandbox.stats()["statuses"]["0"] == 1


def test_fault_rates_are_checked() -> None:
    from ibkr_sandbox.gateway import Faults

    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(1).set(error_500_rate=2.0)


def test_oversized_body_is_413(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, max_body_bytes=1024)
    response = client.post("/internal-cash-transfers", {}, content=b"x" * 2048)
    assert response.status_code == 413
    assert sandbox.ledger_counts() == {}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.5", False),
        ("2001:db8::1", False),
        ("not-an-address", False),
    ],
)
def test_loopback_check(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_admin_api_refuses_other_hosts(rsa_private_key: Any) -> None:
    sandbox, _ = in_process(rsa_private_key)
    remote = httpx.Client(
        transport=sandbox.transport(client_host="10.1.2.3"), base_url="http://sandbox.test"
    )
    assert remote.get("/__admin/ledger-counts").status_code == 403
    assert remote.post("/__admin/revoke-tokens").status_code == 403


def test_admin_api_mirrors_the_methods(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key)
    admin = client.http
    deposit = {
        "instructionType": "DEPOSIT",
        "instruction": {
            "clientInstructionId": 9,
            "accountId": "U15667",
            "amount": 250,
            "currency": "USD",
            "bankInstructionMethod": "WIRE",
        },
    }
    client.post("/external-cash-transfers", deposit)
    assert admin.get("/__admin/ledger-counts").json() == {"9": 1}
    arrived = admin.post("/__admin/deposits/9/arrived")
    assert arrived.json()["instructionStatus"] == "PROCESSED"
    assert "9" in admin.get("/__admin/final-transitions").json()
    before = admin.get("/__admin/clock").json()["timestamp"]
    after = admin.post("/__admin/clock/advance", json={"seconds": 60}).json()["timestamp"]
    assert after == pytest.approx(before + 60)
    faults = admin.post("/__admin/faults", json={"error_500_rate": 0.5}).json()
    assert faults["error_500_rate"] == 0.5
    assert admin.post("/__admin/downtime", json={"seconds": 60}).status_code == 200
    assert admin.post("/__admin/revoke-tokens").json() == {"revoked": 1}
    stats = admin.get("/__admin/stats?requests=true").json()
    assert stats["endpoints"]["POST /gw/api/v1/external-cash-transfers"]["count"] == 1
    assert stats["requests"][0]["endpoint"] == "POST /oauth2/api/v1/token"
    assert admin.get("/__admin/micro-amounts/1").status_code == 404
    assert admin.get("/__admin/balances").json()["U15667"]["USD"] == 1_000_250


def test_stats_count_requests_per_endpoint_and_second(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    for cid in range(3):
        client.post("/internal-cash-transfers", ict(cid + 1))
    stats = sandbox.stats()
    endpoint = stats["endpoints"]["POST /gw/api/v1/internal-cash-transfers"]
    assert endpoint["count"] == 3
    assert endpoint["statuses"] == {"201": 3}
    assert sum(endpoint["perSecond"].values()) == 3
    assert stats["clients"]["acme"]["maxPerMinute"] == 3


def test_unknown_paths_are_404_problems(rsa_private_key: Any) -> None:
    _, client = in_process(rsa_private_key)
    assert client.http.get("/nowhere").status_code == 404
    assert client.get("/no-such-endpoint").status_code == 404
    assert client.get("/internal-cash-transfers").status_code == 405
