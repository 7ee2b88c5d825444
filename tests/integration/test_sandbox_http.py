"""The sandbox over a real socket: HTTP/1.1 keep-alive, lost responses, size limit, admin API,
callbacks, throughput, and the `ibkr-worker sandbox` command as a process."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.sandbox_support import SandboxClient, ict, public_pem
from worker.sandbox import Sandbox, SandboxConfig


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
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
