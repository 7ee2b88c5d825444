"""The id domain (worker.ibkr.ids), stated once and read the same everywhere ids flow."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import jsontext
from worker.ibkr import ids
from worker.ibkr.responses import parse_response
from worker.tracking import checks


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (-1988905739, -1988905739),
        (0, 0),
        (ids.MAX_ID, ids.MAX_ID),
        (ids.MIN_ID, ids.MIN_ID),
        (1012983.0, 1012983),
        (Decimal("1012983.000"), 1012983),
        ("1012983", 1012983),
        ("-5", -5),
        (" 42 ", 42),
    ],
)
def test_ids_of_the_domain_are_read(value: Any, number: int) -> None:
    assert ids.read_id(value) == number
    assert ids.as_id(value) == number


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        ids.MAX_ID + 1,
        ids.MIN_ID - 1,
        10**400,
        1.5,
        float("nan"),
        float("inf"),
        2.0**53,
        Decimal("1e999999999"),
        Decimal("-1e-999999999"),
        Decimal("NaN"),
        "1.0",
        "1e3",
        "+5",
        "1_000",
        "9" * 40,
        "",
        [1],
        {"id": 1},
    ],
)
def test_values_outside_the_domain_are_none(value: Any) -> None:
    assert ids.as_id(value) is None
    with pytest.raises(ids.IdError):
        ids.read_id(value)


@given(st.integers(min_value=ids.MIN_ID, max_value=ids.MAX_ID))
def test_every_id_of_the_domain_survives_json_as_a_double(number: int) -> None:
    # The reason for the bound: a JSON reader that uses doubles keeps every such id exact.
    assert int(float(number)) == number
    assert ids.as_id(float(number)) == number
    assert ids.as_id(str(number)) == number


def test_the_domain_is_the_widest_that_doubles_keep_exact() -> None:
    assert float(ids.MAX_ID + 2) == float(ids.MAX_ID + 1)  # past it, two ids become one


def test_0_is_no_client_instruction_id() -> None:
    assert ids.as_client_instruction_id(0) is None
    assert ids.as_client_instruction_id("-7") == -7


def test_intake_reads_client_instruction_ids_with_the_shared_reader() -> None:
    """The intake of invalid requests tracks them by the same domain (the shared reader): a
    negative id is tracked, 0 and out-of-range ids are not (the request is unprocessable)."""

    def tracked_ids(value: Any) -> tuple[int | None, ...] | None:
        member = {"clientInstructionId": value, "amount": "not a number"}
        request = {"instructionType": "INTERNAL_CASH_TRANSFER", "instruction": member}
        checked = checks.check(checks.Inbound(request, None, "m-1"))
        assert checked.parsed is None  # invalid: identified only
        return checked.ids if checked.unprocessable is None else None

    assert tracked_ids(-1988905739) == (-1988905739,)
    assert tracked_ids(1012983.0) == (1012983,)
    assert tracked_ids(0) is None
    assert tracked_ids(2**53) is None


def _answer(result: dict[str, Any], **envelope: Any) -> Any:
    body = {"status": 200, "instructionSetId": -1988905739, "instructionResult": result}
    body.update(envelope)
    return parse_response("GET", "/p", 200, jsontext.dumps(body).encode(), 1.0)


def test_answers_keep_negative_ids() -> None:
    result = _answer(
        {
            "clientInstructionId": -1012983,
            "instructionType": "DEPOSIT",
            "instructionStatus": "PENDING",
            "instructionId": -43091814,
            "ibReferenceId": -343872793,
        }
    )
    assert result.instruction_set_id == -1988905739
    item = result.results[0]
    assert (item.client_instruction_id, item.instruction_id, item.ib_reference_id) == (
        -1012983,
        -43091814,
        -343872793,
    )


def test_answers_read_ibkr_s_0_as_no_client_instruction_or_set_id() -> None:
    """IBKR reports 0 for instructions created outside the API (reference §6.9)."""
    result = _answer(
        {
            "clientInstructionId": 0,
            "instructionType": "DEPOSIT",
            "instructionStatus": "PENDING",
            "instructionId": 5,
        },
        instructionSetId=0,
    )
    assert result.instruction_set_id is None
    assert result.results[0].client_instruction_id is None
    assert result.results[0].instruction_id == 5


@pytest.mark.parametrize("value", [2**53, "1e400", 1e300, "NaN", True])
def test_answers_with_ids_outside_the_domain_read_them_as_none(value: Any) -> None:
    result = _answer(
        {
            "clientInstructionId": value,
            "instructionType": "DEPOSIT",
            "instructionStatus": "PENDING",
            "instructionId": value,
        },
        instructionSetId=value,
    )
    assert result.instruction_set_id is None
    assert result.results[0].client_instruction_id is None
    assert result.results[0].instruction_id is None
