"""One request of every family through the whole pipeline: what the database, the `status`
command and the events say of each instruction is what the sandbox (IBKR's truth) says."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from ibkr_sandbox.config import Timings
from tests.builders import (
    bank_instruction,
    bulk,
    deposit,
    position_transfer,
    single,
    transfer,
    transfer_member,
    withdrawal,
)
from tests.integration.pipeline import FINAL, EventCollector, Pipeline
from worker.redaction import mask_bank_details

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

# Every IBKR delay shortened (virtual seconds) and the clock sped up, so a day-long FOP or a
# 7-15 minute ACH verification takes a few real seconds.
SPEED = 120.0
TIMINGS = Timings(
    internal_cash_batch_s=30.0,
    position_window_s=120.0,
    ach_min_s=60.0,
    ach_max_s=120.0,
    verification_s=60.0,
    query_s=60.0,
    withdrawal_s=120.0,
    external_asset_s=300.0,
)
STANDARD_FIELDS = {
    "clientInstructionId",
    "instructionType",
    "instructionStatus",
    "instructionId",
    "ibReferenceId",
    "description",
    "error",
    "processedTimestamp",
    "code",
}

CID = 9_100_000
ICT, BULK, POSITION, DEPOSIT, WITHDRAWAL, ACH, SCHEDULED = (CID + i for i in range(1, 8))
RECENT, BANK_QUERY, RECURRING, WITHDRAWABLE, CASH_EQUITY, FOP = (CID + i for i in range(10, 16))
VERIFICATION, CANCEL = CID + 20, CID + 21
BULK_MEMBERS = (CID + 31, CID + 32, CID + 33)


def first_wave() -> list[dict[str, Any]]:
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT10:00:00+00:00")
    return [
        transfer(ICT, "15.00"),
        bulk(
            "INTERNAL_CASH_TRANSFER",
            [
                transfer_member(BULK_MEMBERS[0], "100.00"),
                transfer_member(BULK_MEMBERS[1], "200.00", targetAccountId="U87440"),
                transfer_member(BULK_MEMBERS[2], "300.00", targetAccountId="U139838"),
            ],
        ),
        position_transfer(POSITION, tradingInstrument={"conid": 21323, "currency": "USD"}),
        deposit(DEPOSIT, amount="2500.00", sendingInstitution="First Test Bank"),
        withdrawal(WITHDRAWAL, amount="120.50", currency="USD"),
        bank_instruction(
            ACH,
            accountId="U15667",
            bankInstructionName="Payroll verify",
            clientAccountInfo={
                "bankRoutingNumber": "122199983",
                "bankAccountNumber": "004455667788",
                "bankName": "Test Credit Union",
                "bankAccountTypeCode": 1,
            },
        ),
        transfer(SCHEDULED, "50.00", dateTimeToOccur=tomorrow),
        single(
            "QUERY_RECENT_INSTRUCTIONS",
            RECENT,
            accountId="U46377",
            transactionHistory={"daysToGoBack": 7, "transactionType": "ALL"},
        ),
        single("QUERY_BANK_INSTRUCTION", BANK_QUERY, bankInstructionMethod="WIRE"),
        single("QUERY_RECURRING_INSTRUCTIONS", RECURRING),
        single("QUERY_WITHDRAWABLE_FUNDS", WITHDRAWABLE),
        single("QUERY_WITHDRAWABLE_CASH_EQUITY", CASH_EQUITY),
        single("FOP", FOP),
    ]


EXPECTED = {
    ICT: "PROCESSED",
    **dict.fromkeys(BULK_MEMBERS, "PROCESSED"),
    POSITION: "PROCESSED",
    DEPOSIT: "PROCESSED",
    WITHDRAWAL: "PROCESSED",
    ACH: "PROCESSED",
    VERIFICATION: "PROCESSED",
    SCHEDULED: "REJECTED",  # cancelled before it was due
    CANCEL: "PROCESSED",
    RECENT: "PROCESSED",
    BANK_QUERY: "PROCESSED",
    RECURRING: "PROCESSED",
    WITHDRAWABLE: "PROCESSED",
    CASH_EQUITY: "PROCESSED",
    FOP: "PROCESSED",
}
RESULT_KEYS = {
    RECENT: "instructionHistory",
    BANK_QUERY: "bankInstructionDetails",
    RECURRING: "recurringInstructions",
    WITHDRAWABLE: "withdrawableAmount",
    CASH_EQUITY: "withdrawableCashAmount",
    DEPOSIT: "depositDetails",
}


def plain(value: Any) -> Any:
    """Numbers compared by value whatever their JSON spelling (Decimal, int, float, text)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        return Decimal(str(value)).normalize()
    return value


def row_of(pipeline: Pipeline, cid: int) -> dict[str, Any]:
    [row] = pipeline.query(
        "SELECT status, instruction_id FROM client_instructions "
        "WHERE client_instruction_id = :cid AND duplicate_of_id IS NULL",
        cid=cid,
    )
    return {"status": row[0], "instructionId": row[1]}


def test_every_request_family_reaches_the_sandbox_truth_in_database_status_and_events(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(speed=SPEED, timings=TIMINGS, internal_cash_async_above=Decimal(150))
    sandbox = pipeline.sandbox
    events = EventCollector(pipeline.broker_url)
    pipeline.start_worker()
    pipeline.start_scheduler()
    pipeline.publish(first_wave(), correlation_id="mixed-batch")

    # Act as a back office would once facts arrive: the deposit's money comes in, the ACH
    # micro-deposits are confirmed, the scheduled transfer is cancelled.
    follow_ups: set[str] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        statuses = pipeline.statuses()
        if statuses.get(DEPOSIT) == "PENDING" and "deposit" not in follow_ups:
            sandbox.deposit_arrived(DEPOSIT)
            follow_ups.add("deposit")
        if statuses.get(ACH) == "PENDING_VERIFICATION" and "verify" not in follow_ups:
            ach_id = row_of(pipeline, ACH)["instructionId"]
            first, second = sandbox.micro_amounts(ach_id)
            pipeline.publish(
                [
                    {
                        "instructionType": "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
                        "instruction": {
                            "clientInstructionId": VERIFICATION,
                            "accountId": "U15667",
                            "bankInstructionCode": "USACH",
                            "bankInstructionName": "Payroll verify",
                            "pendingInstructionId": ach_id,
                            "creditAmount1": str(first),
                            "creditAmount2": str(second),
                        },
                    }
                ],
                correlation_id="mixed-batch",
            )
            follow_ups.add("verify")
        if statuses.get(SCHEDULED) == "PENDING" and "cancel" not in follow_ups:
            pipeline.publish(
                [
                    {
                        "instructionType": "CANCEL_INSTRUCTION",
                        "instruction": {
                            "clientInstructionId": CANCEL,
                            "instructionId": row_of(pipeline, SCHEDULED)["instructionId"],
                            "reason": "Client changed their mind",
                        },
                    }
                ],
                correlation_id="mixed-batch",
            )
            follow_ups.add("cancel")
        if set(statuses) >= set(EXPECTED) and all(s in FINAL for s in statuses.values()):
            break
        time.sleep(0.25)
    statuses = pipeline.statuses()
    assert follow_ups == {"deposit", "verify", "cancel"}, (statuses, pipeline.logs())
    assert set(statuses) == set(EXPECTED), pipeline.logs()

    # The database holds the sandbox's final status of every instruction, and the expected one.
    truth = {cid: sandbox.instruction(cid) for cid in EXPECTED}
    assert {cid: t["instructionStatus"] for cid, t in truth.items()} == statuses
    assert statuses == EXPECTED
    assert all(count == 1 for count in sandbox.ledger_counts().values())

    # What IBKR returned beyond the status is in `result`, visible through `status --json`
    # (one command per instruction that carries a result; each takes a process start).
    with ThreadPoolExecutor(3) as pool:
        states = dict(zip(RESULT_KEYS, pool.map(pipeline.status_json, RESULT_KEYS), strict=True))
    for cid, state in states.items():
        assert state["status"] == EXPECTED[cid], state
        assert state["instructionId"] == truth[cid]["instructionId"], state
        assert state["correlationId"] == "mixed-batch"
    for cid, key in RESULT_KEYS.items():
        result = states[cid]["result"]
        assert result is not None and key in result, (cid, states[cid])
        sandbox_extra = {k: v for k, v in truth[cid].items() if k not in STANDARD_FIELDS}
        # As the status shows it: bank and routing numbers masked (worker.redaction).
        shown = mask_bank_details(sandbox_extra)
        assert plain({k: result.get(k) for k in sandbox_extra}) == plain(shown), cid
    history = states[RECENT]["result"]["instructionHistory"]["result"]
    assert ICT in {row["clientInstructionId"] for row in history}

    # Every status change was announced, in order, the final one carrying the final state.
    def all_final_events() -> bool:
        finals = {e["clientInstructionId"] for e in events.drain() if e["status"] in FINAL}
        return finals >= set(EXPECTED)

    pipeline.wait_for(all_final_events, 30, "a final event for every instruction")
    by_cid: dict[int, list[dict[str, Any]]] = {}
    for event in events.events:
        by_cid.setdefault(event["clientInstructionId"], []).append(event)
    for cid, expected in EXPECTED.items():
        seq = sorted(by_cid[cid], key=lambda e: e["sequence"])
        assert [e["sequence"] for e in seq] == list(range(1, len(seq) + 1)), cid
        assert seq[0]["status"] == "RECEIVED"
        assert seq[-1]["status"] == expected
        assert seq[-1]["_routing_key"] == f"instruction.{expected.lower()}"
        if cid in states:
            assert seq[-1]["result"] == states[cid]["result"], cid
    ach_path = [e["status"] for e in sorted(by_cid[ACH], key=lambda e: e["sequence"])]
    assert "PENDING_VERIFICATION" in ach_path
