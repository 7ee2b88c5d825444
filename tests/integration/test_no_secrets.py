"""No log line, audit row or event carries a private key, a token, a signed body or a bank
account number in clear, for a run that handled all of them (processes logging at DEBUG)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.pipeline import EventCollector, Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

BANK_ACCOUNT = "004455667788"
SENDER_ACCOUNT = "998877665544"
JWS = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}")


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return make_pipeline({"LOG_LEVEL": "DEBUG"}, speed=120.0)


def test_no_secret_or_account_number_reaches_logs_audit_or_events(
    pipeline: Pipeline, rsa_key_files: tuple[Path, Path]
) -> None:
    events = EventCollector(pipeline.broker_url)
    pipeline.start_worker()
    pipeline.start_scheduler()
    requests = [
        {
            "instructionType": "ACH_INSTRUCTION",
            "instruction": {
                "clientInstructionId": 930001,
                "accountId": "U15667",
                "bankInstructionCode": "USACH",
                "achType": "DEBIT_CREDIT",
                "bankInstructionName": "Secret test",
                "currency": "USD",
                "clientAccountInfo": {
                    "bankRoutingNumber": "122199983",
                    "bankAccountNumber": BANK_ACCOUNT,
                    "bankName": "Demo Credit Union",
                    "bankAccountTypeCode": 1,
                },
            },
        },
        {
            "instructionType": "DEPOSIT",
            "instruction": {
                "clientInstructionId": 930002,
                "accountId": "U46377",
                "amount": "100.00",
                "currency": "USD",
                "bankInstructionMethod": "WIRE",
                "identifier": SENDER_ACCOUNT,
            },
        },
        {
            "instructionType": "QUERY_BANK_INSTRUCTION",
            "instruction": {
                "clientInstructionId": 930003,
                "accountId": "U46377",
                "bankInstructionMethod": "ACH",
            },
        },
        {
            "instructionType": "INTERNAL_CASH_TRANSFER",
            "instruction": {
                "clientInstructionId": 930004,
                "sourceAccountId": "U46377",
                "targetAccountId": "U15667",
                "amount": "1.00",
                "currency": "USD",
            },
        },
    ]
    pipeline.publish(requests[:2])
    pipeline.wait_for(lambda: len(pipeline.statuses()) >= 2, 30, "the first requests")
    pipeline.sandbox.revoke_tokens()  # the next calls re-authenticate: a fresh token in flight
    pipeline.publish(requests[2:])
    pipeline.wait_for(
        lambda: (
            pipeline.statuses().get(930001) == "PROCESSED"
            and pipeline.statuses().get(930003) == "PROCESSED"
        ),
        60,
        "the ACH instruction and the query",
    )
    pipeline.sandbox.deposit_arrived(930002)
    pipeline.wait_final(4, timeout_s=30)
    pipeline.wait_for(lambda: len(events.drain()) >= 12, 20, "the events")
    pipeline.stop_all()

    private_pem = rsa_key_files[0].read_text()
    key_lines = [line for line in private_pem.splitlines() if line and "-----" not in line]
    logs = pipeline.logs()
    audit = "\n".join(str(tuple(row)) for row in pipeline.query("SELECT * FROM audit_events"))
    outbox = "\n".join(row[0] for row in pipeline.query("SELECT body_json FROM outbox"))
    published = "\n".join(str(event) for event in events.events)
    results = "\n".join(
        str(row[0]) for row in pipeline.query("SELECT result FROM client_instructions")
    )
    assert "ibkr api call" in logs.lower()  # the processes did log, at DEBUG
    for name, text in {
        "logs": logs,
        "audit": audit,
        "outbox": outbox,
        "events": published,
        "results": results,
    }.items():
        assert BANK_ACCOUNT not in text, name
        assert SENDER_ACCOUNT not in text, name
        assert not JWS.search(text), (name, JWS.search(text))
        assert "PRIVATE KEY" not in text, name
        assert not any(line in text for line in key_lines[1:-1]), name
