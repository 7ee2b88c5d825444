"""No secret, and no bank, broker or tax account number in clear, anywhere a person or another
system can read it: the stderr of the worker and the scheduler (logging at DEBUG), events,
audit rows, status objects, dead-letter views (`dead-letters list` and its `--json`) and
/metrics. The run goes through what fails: messages that are not messages, dead letters, FAILED
requests, a revoked token, and 500s from IBKR.

Searched for: every line of the private key, every access token the sandbox issued, every client
assertion and signed body it received, any compact JWS, and every bank number used (ours and
the sandbox's own bank instructions, which the queries return)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.builders import bank_instruction, deposit, single, transfer
from tests.integration.pipeline import EventCollector, Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

BANK_ACCOUNT = "004455667788"
SENDER_ACCOUNT = "998877665544"
ROUTING_NUMBER = "122199983"
FAILED_BANK_ACCOUNT = "556677889900"
DEAD_BANK_ACCOUNT = "667788990011"
BROKEN_BANK_ACCOUNT = "778899001122"
IBAN = "DE89370400440532013000"
TAX_ID = "5500112233"
# The sandbox's own bank instructions (returned by QUERY_BANK_INSTRUCTION).
SANDBOX_BANK_ACCOUNTS = ("9876543210", "1111222233")
BANK_NUMBERS = (
    BANK_ACCOUNT,
    SENDER_ACCOUNT,
    ROUTING_NUMBER,
    FAILED_BANK_ACCOUNT,
    DEAD_BANK_ACCOUNT,
    BROKEN_BANK_ACCOUNT,
    IBAN,
    TAX_ID,
    *SANDBOX_BANK_ACCOUNTS,
)
JWS = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}")


def free_port_pair() -> int:
    """A port p with p and p + 1 free (the worker's and the scheduler's metrics)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two adjacent free ports")


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return make_pipeline({"LOG_LEVEL": "DEBUG", "METRICS_PORT": str(free_port_pair())}, speed=120.0)


class SeenSecrets:
    """Records every token, client assertion and signed body that crosses the sandbox."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.values: set[str] = set()
        self._lock = threading.Lock()
        authority = pipeline.sandbox.authority
        issue, verify = authority.issue_token, authority.verify_signed_body

        def issue_token(content_type: str, body: bytes, **kwargs: Any) -> dict[str, Any]:
            form = parse_qs(body.decode("ascii", "replace"))
            answer = issue(content_type, body, **kwargs)
            self.add(*form.get("client_assertion", []), answer.get("access_token", ""))
            return answer

        def verify_signed_body(body_text: str, client: Any) -> dict[str, Any]:
            self.add(body_text.strip())
            return verify(body_text, client)

        authority.issue_token = issue_token  # type: ignore[method-assign]
        authority.verify_signed_body = verify_signed_body  # type: ignore[method-assign]

    def add(self, *values: str) -> None:
        with self._lock:
            self.values.update(v for v in values if len(v) > 20)


def ibkr_echoes_bank_numbers(pipeline: Pipeline) -> None:
    """The sandbox's rejections name a bank account number in their error text, as IBKR's
    error messages may: it must reach no event, audit row or status in clear."""
    lifecycle = pipeline.sandbox.ledger._lifecycle
    reject = lifecycle.reject

    def _reject(instruction: Any, http_status: int, error: tuple[str, str]) -> None:
        code, message = error
        reject(instruction, http_status, (code, f"{message}; bank account {BANK_ACCOUNT} held"))

    lifecycle.reject = _reject  # type: ignore[method-assign]


def ach(cid: int, account: str, **changes: Any) -> dict[str, Any]:
    """An ACH bank instruction that carries the bank account number `account`."""
    info = {
        "bankRoutingNumber": ROUTING_NUMBER,
        "bankAccountNumber": account,
        "bankName": "Demo Credit Union",
        "bankAccountTypeCode": 1,
    }
    fields = {
        "accountId": "U15667",
        "bankInstructionName": f"Secret test {cid}",
        "clientAccountInfo": info,
    }
    return bank_instruction(cid, **(fields | changes))


def dramatiq_body(kwargs: Any, *, actor: str = "submit_instruction") -> bytes:
    return json.dumps(
        {
            "queue_name": "ibkr.instructions",
            "actor_name": actor,
            "args": [],
            "kwargs": kwargs,
            "options": {"on_failure": "x"},
            "message_id": str(uuid.uuid4()),
            "message_timestamp": int(time.time() * 1000),
        }
    ).encode()


def test_no_secret_or_account_number_reaches_anything_people_read(
    pipeline: Pipeline, rsa_key_files: tuple[Path, Path]
) -> None:
    seen = SeenSecrets(pipeline)
    ibkr_echoes_bank_numbers(pipeline)
    events = EventCollector(pipeline.broker_url)
    pipeline.start_worker()
    pipeline.start_scheduler()
    good = [
        ach(930001, BANK_ACCOUNT),
        deposit(930002, amount="100.00", identifier=SENDER_ACCOUNT),
        single("QUERY_BANK_INSTRUCTION", 930003, accountId="U139838"),
        transfer(930004, "1.00"),
    ]
    pipeline.publish(good[:2])
    pipeline.wait_for(lambda: len(pipeline.statuses()) >= 2, 30, "the first requests")
    pipeline.sandbox.revoke_tokens()  # the next calls re-authenticate: a fresh token in flight
    pipeline.publish(good[2:])
    # FAILED requests that carry bank numbers (one in a value the validation refuses).
    pipeline.publish(
        [
            ach(930005, FAILED_BANK_ACCOUNT, currency="DOLLARS"),
            ach(930006, BROKEN_BANK_ACCOUNT * 3),
            transfer(930012, "1.00", sourceAccountId="U99999"),
            {
                "instructionType": "DWAC",
                "instruction": {
                    "clientInstructionId": 930007,
                    "accountId": "U46377",
                    "contraBrokerTaxId": TAX_ID,
                    "direction": "SIDEWAYS",
                },
            },
        ]
    )
    # Dead letters that carry them: an unknown actor, JSON cut short, not UTF-8, too large.
    pipeline.publish_raw(
        [
            dramatiq_body({"request": ach(930008, DEAD_BANK_ACCOUNT)}, actor="transfer_money"),
            dramatiq_body({"request": ach(930009, DEAD_BANK_ACCOUNT)})[:-40],
            b"\xff\xfe iban=" + IBAN.encode() + b' "contraBrokerTaxId": "' + TAX_ID.encode(),
            dramatiq_body({"request": ach(930010, DEAD_BANK_ACCOUNT, note="x" * 3_000_000)}),
        ]
    )
    pipeline.wait_for(
        lambda: (
            pipeline.statuses().get(930001) == "PROCESSED"
            and pipeline.statuses().get(930003) == "PROCESSED"
        ),
        60,
        "the ACH instruction and the query",
    )
    # 500s from IBKR while a request with bank numbers goes out.
    pipeline.sandbox.set_faults(error_500_rate=1.0)
    pipeline.publish([ach(930011, BANK_ACCOUNT, bankInstructionName="Secret test 500")])
    pipeline.wait_for(
        lambda: pipeline.statuses().get(930011) not in (None, "RECEIVED"), 30, "the 500"
    )
    time.sleep(2)
    pipeline.sandbox.set_faults(error_500_rate=0.0)
    pipeline.sandbox.deposit_arrived(930002)
    pipeline.wait_for(
        lambda: len(pipeline.query("SELECT id FROM dead_letters")) >= 4, 30, "the dead letters"
    )
    pipeline.wait_for(
        lambda: (
            all(
                pipeline.statuses().get(cid) in ("PROCESSED", "FAILED")
                for cid in (930002, 930004, 930005, 930006, 930007)
            )
            and pipeline.statuses().get(930012) == "REJECTED"
        ),
        60,
        "the final states",
    )
    pipeline.wait_for(lambda: len(events.drain()) >= 20, 30, "the events")
    port = int(pipeline.extra_env["METRICS_PORT"])
    metrics = {
        name: urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10).read().decode()
        for name, p in (("worker metrics", port), ("scheduler metrics", port + 1))
    }
    failed_status = {cid: pipeline.status_json(cid) for cid in (930005, 930006, 930007, 930012)}
    letters_json = pipeline.cli("dead-letters", "list", "--json")
    letters_table = pipeline.cli("dead-letters", "list")
    pipeline.stop_all()

    assert [s["status"] for s in failed_status.values()] == ["FAILED"] * 3 + ["REJECTED"]
    assert "bank account ********7788 held" in failed_status[930012]["error"]["message"]
    assert letters_json.returncode == 0 and letters_table.returncode == 0
    assert len(letters_json.stdout.splitlines()) >= 4
    assert seen.values, "the sandbox saw no token, assertion or signed body"
    private_pem = rsa_key_files[0].read_text()
    key_lines = [line for line in private_pem.splitlines() if line and "-----" not in line]
    stderr = {
        path.name: path.read_text(errors="replace") for path in pipeline.log_dir.glob("*.log")
    }
    texts: dict[str, str] = {
        **stderr,
        **metrics,
        "audit": "\n".join(str(tuple(r)) for r in pipeline.query("SELECT * FROM audit_events")),
        "outbox": "\n".join(r[0] for r in pipeline.query("SELECT body_json FROM outbox")),
        "events": "\n".join(json.dumps(event) for event in events.events),
        "results": "\n".join(
            str(r[0]) for r in pipeline.query("SELECT result FROM client_instructions")
        ),
        "status": json.dumps(failed_status),
        "dead-letter rows": "\n".join(
            str(tuple(r)) for r in pipeline.query("SELECT body, reason FROM dead_letters")
        ),
        "dead-letters list --json": letters_json.stdout + letters_json.stderr,
        "dead-letters list": letters_table.stdout + letters_table.stderr,
    }
    assert "ibkr api call" in stderr["worker.log"].lower()  # the worker did log, at DEBUG
    assert "ibkr_api_calls" in metrics["worker metrics"]
    for name, text in texts.items():
        for number in BANK_NUMBERS:
            assert number not in text, (name, number)
        assert not JWS.search(text), (name, JWS.search(text))
        assert "PRIVATE KEY" not in text, name
        assert not any(line in text for line in key_lines[1:-1]), name
        assert not any(secret in text for secret in seen.values), name
    # Every letter here had an account number: none is shown as the original text.
    assert all(
        letter["bodyIsOriginal"] is False
        for letter in map(json.loads, letters_json.stdout.splitlines())
    )
