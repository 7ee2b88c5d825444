"""The demo's back-office morning: what is submitted, in what order, and the outcome each
request must reach (`ibkr-worker demo` exits 0 only if every one does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.status import Status
from worker.store.rows import ClientInstruction

FOREIGN_CLIENT_INSTRUCTION_ID = 424242  # used by "another system" before the morning starts


@dataclass
class Step:
    """One request of the morning and the outcome it must reach."""

    name: str
    request: dict[str, Any]
    expected: str
    correlation_id: str
    message_id: str = ""
    client_instruction_ids: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    rows: dict[int, ClientInstruction] = field(default_factory=dict)
    sent: bool = False


def _transfer(target: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {
        "sourceAccountId": "U46377",
        "targetAccountId": target,
        "amount": amount,
        "currency": "USD",
        **extra,
    }


def morning() -> dict[str, Step]:
    """The requests a back office sends on a morning (follow-ups are added as facts arrive)."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT10:00:00+00:00")
    steps = [
        Step(
            "payroll bulk (3 internal transfers)",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instructions": [
                    _transfer("U15667", "2500.00", clientNote="November payroll"),
                    _transfer("U87440", "1830.55", clientNote="November payroll"),
                    _transfer("U139838", "912.10", clientNote="November payroll"),
                ],
            },
            Status.PROCESSED,
            "payroll-2026-11",
        ),
        Step(
            "wire deposit notice",
            {
                "instructionType": "DEPOSIT",
                "instruction": {
                    "accountId": "U46377",
                    "amount": "25000.00",
                    "currency": "USD",
                    "bankInstructionMethod": "WIRE",
                    "sendingInstitution": "First Demo Bank",
                },
            },
            Status.PROCESSED,
            "treasury-deposit",
        ),
        Step(
            "withdrawal to saved instruction",
            {
                "instructionType": "WITHDRAWAL",
                "instruction": {
                    "accountId": "U46377",
                    "amount": "1200.00",
                    "currency": "USD",
                    "bankInstructionMethod": "WIRE",
                    "bankInstructionName": "Test Withdrawal",
                },
            },
            Status.PROCESSED,
            "client-withdrawal",
        ),
        Step(
            "ACH bank instruction (micro-deposits)",
            {
                "instructionType": "ACH_INSTRUCTION",
                "instruction": {
                    "accountId": "U15667",
                    "bankInstructionCode": "USACH",
                    "achType": "DEBIT_CREDIT",
                    "bankInstructionName": "Payroll verify",
                    "currency": "USD",
                    "clientAccountInfo": {
                        "bankRoutingNumber": "122199983",
                        "bankAccountNumber": "004455667788",
                        "bankName": "Demo Credit Union",
                        "bankAccountTypeCode": 1,
                    },
                },
            },
            Status.PROCESSED,
            "onboarding-ach",
        ),
        Step(
            "scheduled transfer (to be cancelled)",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instruction": _transfer("U15667", "50.00", dateTimeToOccur=tomorrow),
            },
            Status.REJECTED,
            "cancel-me",
        ),
        Step(
            "recent instructions query",
            {
                "instructionType": "QUERY_RECENT_INSTRUCTIONS",
                "instruction": {
                    "accountId": "U46377",
                    "transactionHistory": {"daysToGoBack": 7, "transactionType": "ALL"},
                },
            },
            Status.PROCESSED,
            "eod-reconciliation",
        ),
        Step(
            "bank instruction query",
            {
                "instructionType": "QUERY_BANK_INSTRUCTION",
                "instruction": {"accountId": "U46377", "bankInstructionMethod": "WIRE"},
            },
            Status.PROCESSED,
            "eod-reconciliation",
        ),
        Step(
            "id already used by another system",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instruction": {
                    "clientInstructionId": FOREIGN_CLIENT_INSTRUCTION_ID,
                    **_transfer("U15667", "75.00"),
                },
            },
            Status.CONFLICT,
            "reused-id",
        ),
        Step(
            "invalid request (negative amount)",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instruction": _transfer("U15667", "-10.00"),
            },
            Status.FAILED,
            "bad-input",
        ),
    ]
    return {step.name: step for step in steps}
