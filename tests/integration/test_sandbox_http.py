"""The sandbox over a real socket: HTTP/1.1 keep-alive, lost responses, POSTs held in flight and
answers held back, receipt stamps, size limit, admin API, callbacks, throughput, and the
`ibkr-worker sandbox` command as a process."""

from __future__ import annotations

import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ibkr_sandbox import Sandbox, SandboxConfig
from tests.sandbox.support import SandboxClient, ict, public_pem


@pytest.fixture
def served(rsa_private_key: Any) -> Iterator[tuple[Sandbox, SandboxClient]]:
    sandbox = Sandbox(SandboxConfig(port=0, speed=0.0, rate_limits=False))
    sandbox.register_client("acme", "main", public_pem(rsa_private_key))
    sandbox.start()
    with httpx.Client(base_url=sandbox.base_url, timeout=10) as http:
        yield sandbox, SandboxClient(http, rsa_private_key)
    sandbox.stop()


def test_signed_post_and_status_get_over_keep_alive(served: tuple[Sandbox, SandboxClient]) -> None:
    sandbox, client = served
    response = client.post("/internal-cash-transfers", ict(1012983, "123.45"))
    assert response.status_code == 201
    assert response.http_version == "HTTP/1.1"
    assert "close" not in response.headers.get("connection", "")
    assert client.status(1012983)["instructionStatus"] == "PROCESSED"
    assert client.get("/client-instructions/424242").status_code == 404
    assert sandbox.ledger_counts() == {1012983: 1}


def test_lost_response_closes_the_connection_but_the_post_is_applied(
    served: tuple[Sandbox, SandboxClient],
) -> None:
    sandbox, client = served
    client.token()
    sandbox.set_faults(drop_response_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/internal-cash-transfers", ict(7))
    sandbox.set_faults(drop_response_rate=0.0)
    assert client.status(7)["instructionStatus"] == "PROCESSED"
    assert sandbox.ledger_counts() == {7: 1}


POST_ENDPOINT = "POST /gw/api/v1/internal-cash-transfers"
STATUS_GET = "GET /gw/api/v1/client-instructions/{clientInstructionId}"


def _wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def test_held_post_waits_in_its_handler_and_registers_after_the_hold(
    served: tuple[Sandbox, SandboxClient],
) -> None:
    sandbox, client = served
    client.token()
    sandbox.set_faults(inflight_rate=1.0, inflight_hold_s=1.0)
    started = time.monotonic()
    with httpx.Client(base_url=sandbox.base_url, timeout=0.3) as impatient:
        caller = SandboxClient(impatient, client.key)
        caller._token = client.token()
        with pytest.raises(httpx.ReadTimeout):
            caller.post("/internal-cash-transfers", ict(21))
    sandbox.set_faults(inflight_rate=0.0)
    # Held: nothing registered yet, and other connections are served meanwhile.
    assert client.get("/client-instructions/21").status_code == 404
    assert time.monotonic() - started < 1.0
    assert sandbox.ledger_counts() == {}
    _wait_until(lambda: sandbox.ledger_counts() == {21: 1})
    assert time.monotonic() - started >= 1.0
    assert client.status(21)["instructionStatus"] == "PROCESSED"
    assert sandbox.stats()["inflightHeld"] == 1


def test_a_patient_caller_over_a_socket_gets_the_held_answer(
    served: tuple[Sandbox, SandboxClient],
) -> None:
    sandbox, client = served
    sandbox.set_faults(inflight_rate=1.0, inflight_hold_s=0.5)
    client.token()
    started = time.monotonic()
    response = client.post("/internal-cash-transfers", ict(22))
    assert response.status_code == 201
    assert time.monotonic() - started >= 0.5


def test_an_answer_to_a_closed_connection_is_dropped_quietly(
    served: tuple[Sandbox, SandboxClient], capsys: pytest.CaptureFixture[str]
) -> None:
    """The caller gave up and reset its connection while its POST was held; the answer then
    has nowhere to go. It must be dropped without a word: no traceback from the server, the
    POST still registered when its hold ends, and the connection counted closed."""
    sandbox, client = served
    token = client.token()
    sandbox.set_faults(inflight_rate=1.0, inflight_hold_s=0.5)
    body = client.sign(ict(23)).encode("ascii")
    head = (
        "POST /gw/api/v1/internal-cash-transfers HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{sandbox.port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/jwt\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("ascii")
    raw = socket.create_connection(("127.0.0.1", sandbox.port))
    raw.sendall(head + body)
    _wait_until(lambda: sandbox.stats()["inflightHeld"] == 1)
    # Linger 0: close with a reset, as a client that timed out and went away may.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    sandbox.set_faults(inflight_rate=0.0)
    _wait_until(lambda: sandbox.ledger_counts() == {23: 1})
    _wait_until(lambda: sandbox.stats()["connectionsOpen"] == 1)  # only `client`'s remains
    assert client.status(23)["instructionStatus"] == "PROCESSED"
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


def test_a_delayed_answer_over_a_socket_is_registered_at_once(
    served: tuple[Sandbox, SandboxClient],
) -> None:
    sandbox, client = served
    sandbox.set_faults(answer_delay_rate=1.0, answer_delay_s=1.0)
    with httpx.Client(base_url=sandbox.base_url, timeout=0.3) as impatient:
        caller = SandboxClient(impatient, client.key)
        with pytest.raises(httpx.ReadTimeout):
            caller.post("/internal-cash-transfers", ict(24))
    sandbox.set_faults(answer_delay_rate=0.0)
    assert client.status(24)["instructionStatus"] == "PROCESSED"
    assert sandbox.ledger_counts() == {24: 1}
    assert sandbox.stats()["answersDelayed"] == 1


def test_a_request_waiting_behind_a_slow_one_is_stamped_when_its_line_is_read(
    served: tuple[Sandbox, SandboxClient],
) -> None:
    """The ledger is busy (a slow operation holds its lock) for 0.6 s; a status GET sent
    meanwhile is answered after it, but counted as arriving when it was sent. Guard: the
    arrival is recorded at the start of `SandboxApp.handle` with the receipt stamp; record it
    after the answer with the time then (as the request statistics once did) and this fails."""
    sandbox, client = served
    client.token()
    sent: list[float] = []
    answered: list[float] = []

    def status_get() -> None:
        sent.append(time.time())
        client.get("/client-instructions/1")
        answered.append(time.time())

    with sandbox.ledger.lock:
        getter = threading.Thread(target=status_get)
        getter.start()
        time.sleep(0.6)
        assert answered == []
    getter.join(timeout=10)
    stamps = [a.at for a in sandbox.arrivals() if a.endpoint == STATUS_GET]
    assert len(stamps) == 1
    assert 0 <= stamps[0] - sent[0] < 0.1
    assert answered[0] - stamps[0] >= 0.5
    at = [r["at"] for r in sandbox.stats(include_requests=True)["requests"]]
    assert stamps[0] in at


def test_a_request_is_stamped_when_its_request_line_is_read_not_its_body(
    served: tuple[Sandbox, SandboxClient],
) -> None:
    """A client sends the request line and headers, then its body 0.5 s later. Guard:
    `asgi.StampArrival` stamps the request as the server hands it over (headers read, body
    not) and `SandboxHttp._endpoint` hands that stamp to the app. Pass `received_at=None`
    instead (the app then stamps it after the body is read) and this fails."""
    sandbox, client = served
    token = client.token()
    body = client.sign(ict(25)).encode("ascii")
    head = (
        "POST /gw/api/v1/internal-cash-transfers HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{sandbox.port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/jwt\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(("127.0.0.1", sandbox.port)) as raw:
        sent_at = time.time()
        raw.sendall(head)
        time.sleep(0.5)
        raw.sendall(body)
        raw.settimeout(10)
        assert raw.recv(65536).startswith(b"HTTP/1.1 201 ")
    stamp = next(a.at for a in sandbox.arrivals() if a.endpoint == POST_ENDPOINT)
    assert 0 <= stamp - sent_at < 0.25


def test_requests_refused_before_their_body_are_still_counted(rsa_private_key: Any) -> None:
    sandbox = Sandbox(SandboxConfig(port=0, speed=0.0, max_body_bytes=1024))
    sandbox.register_client("acme", "main", public_pem(rsa_private_key))
    with sandbox, httpx.Client(base_url=sandbox.base_url, timeout=10) as http:
        client = SandboxClient(http, rsa_private_key)
        token = client.token()
        response = client.post("/internal-cash-transfers", {}, content=b"x" * 4096, token=token)
        assert response.status_code == 413
        arrivals = sandbox.arrivals()
    assert [(a.client_id, a.endpoint) for a in arrivals][-1] == ("acme", POST_ENDPOINT)


def test_oversized_body_is_refused_with_413_before_reading(rsa_private_key: Any) -> None:
    sandbox = Sandbox(SandboxConfig(port=0, speed=0.0, max_body_bytes=4096))
    sandbox.register_client("acme", "main", public_pem(rsa_private_key))
    with sandbox, httpx.Client(base_url=sandbox.base_url, timeout=10) as http:
        client = SandboxClient(http, rsa_private_key)
        response = client.post("/internal-cash-transfers", {}, content=b"x" * 100_000)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert client.post("/internal-cash-transfers", ict(1)).status_code == 201


def test_admin_api_answers_loopback_over_http(served: tuple[Sandbox, SandboxClient]) -> None:
    _, client = served
    client.post("/internal-cash-transfers", ict(3))
    assert client.http.get("/__admin/ledger-counts").json() == {"3": 1}
    advanced = client.http.post("/__admin/clock/advance", json={"seconds": 30})
    assert advanced.status_code == 200
    stats = client.http.get("/__admin/stats").json()
    assert stats["statuses"]["201"] == 1


def test_stop_closes_open_connections(rsa_private_key: Any) -> None:
    sandbox = Sandbox(SandboxConfig(port=0, speed=0.0))
    sandbox.register_client("acme", "main", public_pem(rsa_private_key))
    sandbox.start()
    http = httpx.Client(base_url=sandbox.base_url, timeout=5)
    client = SandboxClient(http, rsa_private_key)
    assert client.get("/echo/https").status_code == 200
    sandbox.stop()
    with pytest.raises(httpx.TransportError):
        client.get("/echo/https")
    http.close()


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received: queue.Queue[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put((self.headers["Content-Type"], body))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_callbacks_announce_every_status_change_signed_by_the_sandbox(
    rsa_private_key: Any,
) -> None:
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"received": received})
    receiver = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    # Speed 600: the 30-60 s batch passes within a tenth of a second of real time, and the
    # ticker (not a poll) must move the transfer to PROCESSED.
    sandbox = Sandbox(SandboxConfig(port=0, speed=600.0, callback_url=url))
    sandbox.register_client("acme", "main", public_pem(rsa_private_key))
    try:
        with sandbox, httpx.Client(base_url=sandbox.base_url, timeout=10) as http:
            client = SandboxClient(http, rsa_private_key)
            body = {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instructions": [ict(5)["instruction"]],
            }
            assert client.post("/internal-cash-transfers:bulk", body).status_code == 202
            statuses = []
            key = jwt.PyJWKSet.from_dict(sandbox.authority.jwks()).keys[0].key
            for _ in range(2):
                content_type, token = received.get(timeout=5)
                assert content_type == "application/jwt"
                claims = jwt.decode(token, key, algorithms=["RS256"])
                assert claims["instructionResult"]["clientInstructionId"] == 5
                statuses.append(claims["instructionResult"]["instructionStatus"])
            assert statuses == ["PENDING", "PROCESSED"]
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_sustains_hundreds_of_signed_posts_per_second(
    served: tuple[Sandbox, SandboxClient],
) -> None:
    sandbox, client = served
    token = client.token()
    bodies = [client.sign(ict(10_000 + n)).encode("ascii") for n in range(300)]
    headers = {**client.headers(token), "Content-Type": "application/jwt"}
    started = time.perf_counter()
    for body in bodies:
        response = client.http.post(
            "/gw/api/v1/internal-cash-transfers", content=body, headers=headers
        )
        assert response.status_code == 201
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, f"300 signed POSTs took {elapsed:.2f} s"
    assert len(sandbox.ledger_counts()) == 300


def test_sandbox_command_prints_a_working_demo_client(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ibkr-worker"),
            "sandbox",
            "--port",
            "0",
            "--speed",
            "0",
            "--duplicate-post",
            "accept",
            "--inflight-hold",
            "7",
            "--answer-delay",
            "9",
            "--internal-cash-async-delay",
            "1",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        values: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while "IBKR_HONOR_DOWNTIME" not in values and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            name, _, value = line.strip().partition("=")
            if name.startswith("IBKR_"):
                values[name] = value
        assert values["IBKR_HONOR_DOWNTIME"] == "false"
        key = serialization.load_pem_private_key(
            Path(values["IBKR_PRIVATE_KEY_FILE"]).read_bytes(), password=None
        )
        with httpx.Client(base_url=values["IBKR_BASE_URL"], timeout=10) as http:
            assert isinstance(key, rsa.RSAPrivateKey)
            client = SandboxClient(
                http, key, client_id=values["IBKR_CLIENT_ID"], key_id=values["IBKR_KEY_ID"]
            )
            assert client.post("/internal-cash-transfers", ict(1)).status_code == 201
            # --duplicate-post accept: the re-POST is a second transaction.
            assert client.post("/internal-cash-transfers", ict(1)).status_code == 201
            assert http.get("/__admin/ledger-counts").json() == {"1": 2}
            faults = http.post("/__admin/faults", json={}).json()
            assert faults["inflight_hold_s"] == 7.0
            assert faults["answer_delay_s"] == 9.0
            assert faults["inflight_rate"] == 0.0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
