"""clientInstructionIds that another transaction already used (IBKR's 208 and
CORRUPT_DATA_DUBPLICATE_CP): ours end CONFLICT and never take the other transaction's status;
our own instruction whose first answer was lost is still recognised as ours."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.builders import transfer
from tests.integration.pipeline import CLIENT_ID, KEY_ID, Pipeline
from worker.config import Settings
from worker.ibkr.client import IbkrClient
from worker.ibkr.endpoints import endpoint_for
from worker.ibkr.responses import Outcome
from worker.ibkr.signing import load_private_key

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

THRESHOLD = Decimal(100)  # the sandbox answers 202 (pending, polled) above this amount


def use_elsewhere(pipeline: Pipeline, cids: list[int], amount: str) -> dict[int, dict[str, Any]]:
    """Another system of the firm (same IBKR client, its own process) uses `cids` first;
    returns what IBKR answered it, per clientInstructionId."""
    settings = Settings(
        ibkr_base_url=pipeline.sandbox.base_url,
        ibkr_client_id=CLIENT_ID,
        ibkr_key_id=KEY_ID,
        ibkr_private_key_file=pipeline.private_key_file,
        honor_downtime=False,
    )
    answers: dict[int, dict[str, Any]] = {}
    with IbkrClient(settings, private_key=load_private_key(pipeline.private_key_file)) as other:
        for cid in cids:
            body = transfer(cid, amount, targetAccountId="U87440")
            body["instruction"]["amount"] = Decimal(amount)
            result = other.post_instruction(
                endpoint_for("INTERNAL_CASH_TRANSFER", bulk=False), body
            )
            assert result.outcome in (Outcome.FINAL, Outcome.ACCEPTED), result
            [item] = result.results
            answers[cid] = {
                "instructionSetId": result.instruction_set_id,
                "instructionId": item.instruction_id,
                "status": item.status,
            }
    return answers


def rows(pipeline: Pipeline, cids: list[int]) -> dict[int, dict[str, Any]]:
    found = pipeline.query(
        "SELECT client_instruction_id, status, instruction_id, instruction_set_id, error_code "
        "FROM client_instructions WHERE client_instruction_id = ANY(:cids) "
        "AND duplicate_of_id IS NULL",
        cids=cids,
    )
    return {
        int(r[0]): {
            "status": r[1],
            "instructionId": r[2],
            "instructionSetId": r[3],
            "errorCode": r[4],
        }
        for r in found
    }


def assert_never_adopted(
    ours: dict[int, dict[str, Any]], theirs: dict[int, dict[str, Any]]
) -> None:
    for cid, their in theirs.items():
        mine = ours[cid]
        assert mine["status"] == "CONFLICT", (cid, mine, their)
        assert mine["instructionId"] != their["instructionId"], (cid, mine, their)
        assert mine["instructionSetId"] != their["instructionSetId"], (cid, mine, their)


@pytest.mark.parametrize("duplicate_post", ["reject", "accept"])
def test_ids_used_by_another_transaction_end_in_conflict_and_a_lost_answer_of_ours_does_not(
    make_pipeline: Callable[..., Pipeline], duplicate_post: str
) -> None:
    """`reject`: IBKR refuses a reused id (422 CORRUPT_DATA_DUBPLICATE_CP); `accept`: it takes
    a second transaction and status reads answer 208 with the first one."""
    pipeline = make_pipeline(
        speed=60.0, duplicate_post=duplicate_post, internal_cash_async_above=THRESHOLD
    )
    base = 6_400_000 if duplicate_post == "reject" else 6_500_000
    foreign_done = [base + i for i in range(3)]  # another system's, already PROCESSED
    foreign_pending = [base + 10 + i for i in range(3)]  # another system's, still PENDING
    lost_fresh = [base + 20]  # ours alone; the answer to our first POST is lost
    lost_reused = [base + 30, base + 31]  # reused and the answer to our POST is lost
    theirs = {
        **use_elsewhere(pipeline, foreign_done + lost_reused, "10.00"),
        **use_elsewhere(pipeline, foreign_pending, "900.00"),
    }
    pipeline.start_worker()
    pipeline.start_scheduler()

    # Phase 1: every POST answer is lost until ours of the lost_* ids have reached IBKR.
    pipeline.sandbox.set_faults(drop_response_rate=1.0)
    pipeline.publish([transfer(cid, "20.00") for cid in lost_fresh + lost_reused])
    pipeline.wait_for(
        lambda: pipeline.sandbox.stats()["statuses"].get("0", 0) >= 3, 60, "three lost answers"
    )
    pipeline.sandbox.set_faults(drop_response_rate=0.0)

    # Phase 2: reused ids, answered normally (our amounts differ from theirs: their status is
    # not ours to take). Some of ours are pending at IBKR so that they are polled.
    pipeline.publish([transfer(cid, "30.00") for cid in foreign_done])
    pipeline.publish([transfer(cid, "300.00") for cid in foreign_pending])

    all_ids = foreign_done + foreign_pending + lost_fresh + lost_reused
    pipeline.wait_final(len(all_ids), timeout_s=60)
    ours = rows(pipeline, all_ids)

    # Our own instruction whose answer was lost: IBKR's status of it, PROCESSED, not CONFLICT.
    [fresh] = lost_fresh
    assert ours[fresh]["status"] == "PROCESSED", ours[fresh]
    assert ours[fresh]["instructionId"] == pipeline.sandbox.instruction(fresh)["instructionId"]
    assert pipeline.sandbox.ledger_counts()[fresh] == 1

    # Reused ids: CONFLICT, never the other transaction's ids or status, whether our answer
    # came back (IBKR's 422 on our first POST, or a 208 naming their set when we poll) or was
    # lost (a 208 describing their transaction).
    conflicts = foreign_pending + lost_reused
    if duplicate_post == "reject":
        conflicts += foreign_done
    else:
        # IBKR took our POST as a second transaction and answered 201 about it, so ours was
        # processed: our own ids, not theirs, and both transactions applied once.
        for cid in foreign_done:
            assert ours[cid]["status"] == "PROCESSED", ours[cid]
            assert ours[cid]["instructionId"] != theirs[cid]["instructionId"]
            assert ours[cid]["instructionSetId"] != theirs[cid]["instructionSetId"]
            assert pipeline.sandbox.ledger_counts()[cid] == 2
    assert_never_adopted(ours, {cid: theirs[cid] for cid in conflicts})
    for cid in conflicts:
        assert ours[cid]["errorCode"] in (
            "CORRUPT_DATA_DUBPLICATE_CP",
            "CLIENT_INSTRUCTION_ID_CONFLICT",
        )
