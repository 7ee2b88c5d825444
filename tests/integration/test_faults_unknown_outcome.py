"""Lost answers: the sandbox applies every POST but a tenth of the answers never arrive. The
worker must find out what happened instead of guessing: every instruction ends in IBKR's status
and is applied exactly once."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.pipeline import Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

FAST_LIMITS = {
    "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT": "40",
    "IBKR_MAX_REQUESTS_PER_MINUTE": "5000",
}
SINGLES, BULKS, BULK_SIZE = 120, 10, 3


def member(cid: int, amount: str) -> dict[str, Any]:
    return {
        "clientInstructionId": cid,
        "sourceAccountId": "U46377",
        "targetAccountId": "U15667",
        "amount": amount,
        "currency": "USD",
    }


def requests() -> tuple[list[dict[str, Any]], set[int]]:
    bodies: list[dict[str, Any]] = []
    cids: set[int] = set()
    for i in range(SINGLES):
        cid = 7_300_000 + i
        # Half answer 201 at once, half 202 and are polled to the end.
        amount = "10.00" if i % 2 else "500.00"
        bodies.append(
            {"instructionType": "INTERNAL_CASH_TRANSFER", "instruction": member(cid, amount)}
        )
        cids.add(cid)
    for b in range(BULKS):
        ids = [7_310_000 + b * BULK_SIZE + k for k in range(BULK_SIZE)]
        bodies.append(
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instructions": [member(cid, "20.00") for cid in ids],
            }
        )
        cids.update(ids)
    return bodies, cids


def test_lost_post_answers_end_in_ibkr_status_and_are_applied_exactly_once(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(
        extra_env=FAST_LIMITS,
        speed=120.0,
        drop_response_rate=0.1,
        internal_cash_async_above=Decimal(100),
        max_requests_per_second_per_endpoint=40,
        max_requests_per_minute=5000,
    )
    bodies, cids = requests()
    pipeline.start_worker()
    pipeline.start_scheduler()
    pipeline.publish(bodies)

    statuses = pipeline.wait_final(len(cids), timeout_s=120)

    assert set(statuses) == cids
    counts = pipeline.sandbox.ledger_counts()
    assert {cid for cid, n in counts.items() if n != 1} == set(), "applied more than once"
    assert set(counts) == cids, "an instruction never reached IBKR"
    truth = pipeline.sandbox.final_transitions()
    assert {cid: truth[cid]["status"] for cid in cids} == statuses
    assert set(statuses.values()) == {"PROCESSED"}
    # The fault really happened: answers were lost (status 0) and resolved by asking.
    stats = pipeline.sandbox.stats()
    lost = sum(e["statuses"].get("0", 0) for e in stats["endpoints"].values())
    assert lost >= 5, stats["statuses"]
    [[resolved]] = pipeline.query(
        "SELECT count(DISTINCT client_instruction_pk) FROM audit_events WHERE reason LIKE :lost",
        lost="%answer to our POST was lost%",
    )
    assert resolved >= 5
