"""In-flight POSTs and held answers, in-process (issue 12). A held POST registers nothing until
its hold ends (status GETs answer 404, no instruction set exists), then registers as a POST
arriving at that moment would; the in-process caller gets `httpx.ReadTimeout`. A delayed answer
is registered at once and only its answer waits. The socket side is in
tests/integration/test_sandbox_http.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.sandbox.support import SandboxClient, ict, in_process

POST = "POST /gw/api/v1/internal-cash-transfers"
HOLD_S = 0.4


def _wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def _held(rsa_private_key: Any, **config: Any) -> tuple[Any, SandboxClient]:
    settings: dict[str, Any] = {"inflight_rate": 1.0, "inflight_hold_s": HOLD_S}
    settings.update(config)
    sandbox, client = in_process(rsa_private_key, **settings)
    client.token()
    return sandbox, client


def test_held_post_registers_nothing_until_its_hold_ends(rsa_private_key: Any) -> None:
    """Guard: `FundsPosts.post` returns `FundsPosts._held` (registration deferred to
    `complete`). Register at once instead (call `self._register` before returning the held
    response) and the 404 and the missing set during the hold fail."""
    sandbox, client = _held(rsa_private_key)
    sandbox.set_faults(inflight_rate=0.0)
    known_set = client.post("/internal-cash-transfers", ict(1)).json()["instructionSetId"]
    sandbox.set_faults(inflight_rate=1.0)
    source = sandbox.balances()["U46377"]["USD"]
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/internal-cash-transfers", ict(2, "7.00"))
    assert time.monotonic() - started < HOLD_S / 2, "the caller gave up at once"
    assert client.get("/client-instructions/2").status_code == 404
    assert client.get(f"/instruction-sets/{known_set + 1}").status_code == 404
    assert sandbox.ledger_counts() == {1: 1}
    assert sandbox.balances()["U46377"]["USD"] == source

    _wait_until(lambda: 2 in sandbox.ledger_counts())
    assert time.monotonic() - started >= HOLD_S
    assert client.status(2)["instructionStatus"] == "PROCESSED"
    assert client.get(f"/instruction-sets/{known_set + 1}").status_code == 200
    assert sandbox.balances()["U46377"]["USD"] == source - Decimal("7.00")
    stats = sandbox.stats()
    assert stats["inflightHeld"] == 1
    assert stats["endpoints"][POST]["statuses"] == {"201": 2}


def test_a_resend_during_the_hold_registers_twice_under_accept(rsa_private_key: Any) -> None:
    """The failure of issue 12: the caller timed out, saw 404 and resent with the same id;
    both POSTs register, the resend first, so the 208 describes the resend."""
    sandbox, client = _held(rsa_private_key, duplicate_post="accept")
    with pytest.raises(httpx.ReadTimeout):
        client.post("/internal-cash-transfers", ict(50))
    assert client.get("/client-instructions/50").status_code == 404
    sandbox.set_faults(inflight_rate=0.0)
    resent = client.post("/internal-cash-transfers", ict(50))
    assert resent.status_code == 201
    _wait_until(lambda: sandbox.ledger_counts().get(50) == 2)
    status = client.get("/client-instructions/50")
    assert status.status_code == 208
    assert status.json()["instructionSetId"] == resent.json()["instructionSetId"]


def test_a_held_post_meets_the_duplicate_policy_when_it_registers(rsa_private_key: Any) -> None:
    sandbox, client = _held(rsa_private_key)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/internal-cash-transfers", ict(51))
    sandbox.set_faults(inflight_rate=0.0)
    assert client.post("/internal-cash-transfers", ict(51)).status_code == 201
    _wait_until(lambda: sandbox.stats()["endpoints"][POST]["statuses"].get("422") == 1)
    assert sandbox.ledger_counts() == {51: 1}


def test_a_patient_caller_gets_the_answer_once_the_post_registers(rsa_private_key: Any) -> None:
    # None: the caller waits as long as its own httpx read timeout (5 s in in_process).
    sandbox, client = _held(rsa_private_key, transport_read_timeout_s=None)
    started = time.monotonic()
    response = client.post("/internal-cash-transfers", ict(3))
    assert time.monotonic() - started >= HOLD_S
    assert response.status_code == 201
    assert sandbox.ledger_counts() == {3: 1}


def test_the_caller_may_wait_a_short_while_before_timing_out(rsa_private_key: Any) -> None:
    sandbox, client = _held(rsa_private_key, inflight_hold_s=1.0, transport_read_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/internal-cash-transfers", ict(4))
    assert 0.2 <= time.monotonic() - started < 0.9
    assert sandbox.ledger_counts() == {}


def _short_lived_body(client: SandboxClient, cid: int) -> bytes:
    now = int(time.time())
    return client.sign(ict(cid), iat=now, exp=now + 1).encode("ascii")


@pytest.mark.parametrize("recheck", [False, True])
def test_an_expired_body_registers_unless_exp_is_checked_again(
    rsa_private_key: Any, recheck: bool
) -> None:
    """Guard: `complete` in `FundsPosts._held` checks `exp` again when
    `inflight_recheck_exp` is on. Drop that check and the recheck=True case registers."""
    sandbox, client = _held(
        rsa_private_key,
        inflight_hold_s=1.5,
        inflight_recheck_exp=recheck,
        jwt_leeway_s=0.0,
        transport_read_timeout_s=None,
    )
    response = client.post("/internal-cash-transfers", {}, content=_short_lived_body(client, 6))
    if recheck:
        assert response.status_code == 400
        assert "expired" in response.json()["detail"]
        assert sandbox.ledger_counts() == {}
        assert client.get("/client-instructions/6").status_code == 404
    else:
        assert response.status_code == 201
        assert sandbox.ledger_counts() == {6: 1}


def test_a_delayed_answer_is_registered_at_once(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key, answer_delay_rate=1.0, answer_delay_s=HOLD_S)
    client.token()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/internal-cash-transfers", ict(8))
    assert sandbox.ledger_counts() == {8: 1}
    assert client.status(8)["instructionStatus"] == "PROCESSED"
    assert sandbox.stats()["answersDelayed"] == 1
    assert sandbox.stats()["inflightHeld"] == 0


def test_a_patient_caller_gets_a_delayed_answer_late(rsa_private_key: Any) -> None:
    _, client = in_process(
        rsa_private_key,
        answer_delay_rate=1.0,
        answer_delay_s=HOLD_S,
        transport_read_timeout_s=None,
    )
    client.token()
    started = time.monotonic()
    assert client.post("/internal-cash-transfers", ict(9)).status_code == 201
    assert time.monotonic() - started >= HOLD_S


def test_stop_abandons_posts_still_held(rsa_private_key: Any) -> None:
    sandbox, client = _held(rsa_private_key)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/internal-cash-transfers", ict(10))
    sandbox.stop()
    time.sleep(HOLD_S + 0.2)
    assert sandbox.ledger_counts() == {}


def _held_ids(rsa_private_key: Any, seed: int) -> set[int]:
    sandbox, client = in_process(
        rsa_private_key, seed=seed, inflight_rate=0.3, inflight_hold_s=0.05
    )
    client.token()
    held = set()
    for cid in range(1, 61):
        try:
            client.post("/internal-cash-transfers", ict(cid))
        except httpx.ReadTimeout:
            held.add(cid)
    assert sandbox.stats()["inflightHeld"] == len(held)
    _wait_until(lambda: len(sandbox.ledger_counts()) == 60)
    return held


def test_the_held_share_follows_the_rate_and_the_seed(rsa_private_key: Any) -> None:
    first = _held_ids(rsa_private_key, seed=7)
    assert 6 <= len(first) <= 30
    assert _held_ids(rsa_private_key, seed=7) == first
    assert _held_ids(rsa_private_key, seed=8) != first


def test_faults_change_at_run_time_and_through_the_admin_api(rsa_private_key: Any) -> None:
    sandbox, client = in_process(rsa_private_key)
    rates = sandbox.set_faults(inflight_rate=0.25, inflight_hold_s=3.0)
    assert rates["inflight_rate"] == 0.25
    assert rates["inflight_hold_s"] == 3.0
    assert rates["answer_delay_s"] == 40.0
    admin = client.http
    changed = admin.post("/__admin/faults", json={"answer_delay_rate": 0.5, "answer_delay_s": 2})
    assert changed.status_code == 200
    assert changed.json()["answer_delay_rate"] == 0.5
    assert changed.json()["answer_delay_s"] == 2.0
    assert changed.json()["inflight_rate"] == 0.25
    assert admin.post("/__admin/faults", json={"inflight_hold_s": -1}).status_code == 400
    assert admin.post("/__admin/faults", json={"inflight_rate": 1.5}).status_code == 400
    unknown = admin.post("/__admin/faults", json={"inflight_rte": 0.5})
    assert unknown.status_code == 400
    assert "inflight_rate" in unknown.json()["detail"]
    with pytest.raises(ValueError, match="seconds"):
        sandbox.set_faults(answer_delay_s=float("inf"))
