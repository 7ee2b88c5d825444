"""The sandbox's own HTTP cost: signed internal cash transfers POSTed over keep-alive
connections from several threads to the sandbox served from a process of its own (as the other
benchmarks serve it), reporting requests per second and the sandbox process's CPU per request.

    .venv/bin/python -m bench.sandbox_http [--posts 2000] [--threads 8] [--rounds 3]
        [--sandbox-repo DIR]

`--sandbox-repo` serves the sandbox from another checkout (an earlier commit, say) with this
venv, so two versions can be measured in one run. Bodies are signed before the clock starts:
the figures are the sandbox's, not the client's signing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil
from cryptography.hazmat.primitives import serialization

from bench import common
from worker import jsontext

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "transfers.read transfers.write instructions.read"
POST_PATH = "/gw/api/v1/internal-cash-transfers"


def _token(http: httpx.Client, key: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": common.CLIENT_ID, "sub": common.CLIENT_ID, "aud": "/token"}
    claims.update(iat=now - 5, exp=now + 60)
    assertion = jwt.encode(
        claims, key, algorithm="RS256", headers={"kid": common.KEY_ID, "typ": "JWT"}
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": SCOPE,
    }
    response = http.post("/oauth2/api/v1/token", data=form)
    response.raise_for_status()
    return str(response.json()["access_token"])


def _signed_bodies(key: Any, first_cid: int, n: int) -> list[bytes]:
    now = int(time.time())
    signer = jwt.api_jws.PyJWS()
    bodies = []
    for cid in range(first_cid, first_cid + n):
        payload = {
            "instructionType": "INTERNAL_CASH_TRANSFER",
            "instruction": {
                "clientInstructionId": cid,
                "sourceAccountId": "U46377",
                "targetAccountId": "U15667",
                "amount": jsontext.loads("0.01"),
                "currency": "USD",
            },
            "iss": common.CLIENT_ID,
            "iat": now,
            "exp": now + 600,
        }
        token = signer.encode(
            jsontext.dumps(payload).encode(),
            key,
            algorithm="RS256",
            headers={"typ": "JWT", "kid": common.KEY_ID},
        )
        bodies.append(token.encode("ascii"))
    return bodies


def _round(
    base_url: str, pid: int, key: Any, first_cid: int, posts: int, threads: int
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(base_url=base_url, limits=limits, timeout=30) as http:
        token = _token(http, key)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/jwt"}
        bodies = _signed_bodies(key, first_cid, posts)
        http.post(POST_PATH, content=bodies.pop(), headers=headers).raise_for_status()  # warm
        statuses: list[int] = []
        lock = threading.Lock()

        def send(share: list[bytes]) -> None:
            for body in share:
                status = http.post(POST_PATH, content=body, headers=headers).status_code
                with lock:
                    statuses.append(status)

        workers = [
            threading.Thread(target=send, args=(bodies[i::threads],)) for i in range(threads)
        ]
        sandbox = psutil.Process(pid)
        cpu_before = sandbox.cpu_times()
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        cpu_after = sandbox.cpu_times()
    cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    if set(statuses) != {201}:
        raise RuntimeError(f"unexpected answers: {sorted(set(statuses))}")
    return {
        "requests_per_s": len(statuses) / elapsed,
        "cpu_ms_per_request": 1000 * cpu_s / len(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sandbox-repo", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-http-") as scratch:
        directory = Path(scratch)
        private_path, public_path = common.make_key(directory)
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        processes = common.Processes(log_dir=directory)
        if args.sandbox_repo is not None:
            common.REPO = args.sandbox_repo.resolve()
        try:
            sandbox = common.start_sandbox(processes, public_path, {"rate_limits": False})
            pid = processes.running["sandbox"].pid
            rounds: list[dict[str, float]] = []
            for n in range(args.rounds):
                first_cid = 1 + n * (args.posts + 1)
                rounds.append(
                    _round(sandbox.base_url, pid, key, first_cid, args.posts, args.threads)
                )
        finally:
            processes.stop_all()
    for name in ("requests_per_s", "cpu_ms_per_request"):
        values = [r[name] for r in rounds]
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name}: median {statistics.median(values):.2f} (rounds: {shown})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
