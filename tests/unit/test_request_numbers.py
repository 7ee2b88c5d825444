"""Numbers in requests are bounded before they are built (issue 14): no amount finer than the
amount column, no exponent that expands, nothing but finite numbers, every number field with
its own bound, and nothing but RequestValidationError ever escapes `parse_request`."""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builders import MINIMAL, single
from tests.unit.request_checks import refusal
from worker import jsontext
from worker.ibkr.requests import RequestValidationError, build_body, parse_request


def amount_of(given: Any) -> Decimal:
    amount = parse_request(single("INTERNAL_CASH_TRANSFER", amount=given)).members[0]["amount"]
    assert isinstance(amount, Decimal)
    return amount


# --- amounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("1e-999999999", "at most 10 decimal places"),
        (Decimal("1e-999999999"), "at most 10 decimal places"),
        ("1E-200000", "at most 10 decimal places"),
        ("1e-20", "at most 10 decimal places"),
        ("0.00000000001", "at most 10 decimal places"),
        ("12.00000000001", "at most 10 decimal places"),
        (1e-11, "at most 10 decimal places"),
        ("1e999999999", "below 10^18"),
        (Decimal("1e999999999"), "below 10^18"),
        ("1e18", "below 10^18"),
        (10**18, "below 10^18"),
        (10**400, "at most 64 digits"),
        (1e300, "below 10^18"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("-inf", "finite"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("-Infinity"), "finite"),
        (True, "not true or false"),
        ("1" * 65, "at most 64 characters"),
        ("12,50", "must be a number"),
        ("0x10", "must be a number"),
        ("1_000", "must be a number"),
        (0, "greater than 0"),
        ("-0.01", "greater than 0"),
    ],
)
def test_amount_out_of_bounds_is_refused_naming_field_and_reason(given: Any, reason: str) -> None:
    """(Drop the decimals check in values.read_number to see 1e-20 pass and a 1e-200000
    amount become a 200 KB body.)"""
    error = refusal(single("INTERNAL_CASH_TRANSFER", amount=given))
    assert error.field == "instruction.amount"
    assert reason in error.message


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("123.45", "123.45"),
        ("100.00", "100.00"),
        ("1E+2", "100"),
        (1e-05, "0.00001"),
        ("0.0000000001", "0.0000000001"),
        # Zeros past the tenth decimal carry no value: dropped, not refused.
        ("12.500000000000000000", "12.5000000000"),
        (Decimal("5.00000000000000000000"), "5.0000000000"),
        ("999999999999999999.9999999999", "999999999999999999.9999999999"),
        (123.45, "123.45"),
    ],
)
def test_amount_is_sent_as_written_within_its_bounds(given: Any, sent: str) -> None:
    assert jsontext.decimal_text(amount_of(given)) == sent


def test_amount_fits_the_column_it_is_stored_in() -> None:
    """What we send is what the database stores: Numeric(28, 10) holds every accepted amount
    exactly, so the stored value never differs from the sent one by rounding."""
    from models import ClientInstruction

    column = ClientInstruction.__table__.c.amount.type
    assert (column.precision, column.scale) == (28, 10)
    largest = amount_of("999999999999999999.9999999999")
    assert len(largest.as_tuple().digits) == column.precision
    assert -largest.as_tuple().exponent == column.scale  # type: ignore[operator]


# --- every other number field has its own bound -----------------------------------------------

NUMBER_FIELDS: list[tuple[str, str, Any, str]] = [
    # (instructionType, field path, value, reason)
    ("INTERNAL_POSITION_TRANSFER", "transferQuantity", "1e-11", "at most 10 decimal places"),
    ("INTERNAL_POSITION_TRANSFER", "transferQuantity", "1e15", "below 10^15"),
    ("FOP", "quantity", "NaN", "finite"),
    ("DWAC", "quantity", 10**30, "below 10^15"),
    ("COMPLEX_ASSET_TRANSFER", "quantity", 0, "greater than 0"),
    ("TRADITIONAL_BANK_INSTRUCTION_VERIFICATION", "creditAmount1", "1e-30", "decimal places"),
    ("TRADITIONAL_BANK_INSTRUCTION_VERIFICATION", "creditAmount2", "Infinity", "finite"),
    ("CANCEL_INSTRUCTION", "instructionId", 2**53, "between"),
    ("CANCEL_INSTRUCTION", "instructionId", 0, "names no instruction"),
    ("TRADITIONAL_BANK_INSTRUCTION_VERIFICATION", "pendingInstructionId", 1.5, "whole number"),
    ("QUERY_RECENT_RECURRING_EVENTS", "ibReferenceId", -1, "negative"),
    ("QUERY_RECENT_RECURRING_EVENTS", "numberOfTransactions", 2**31, "from 1 to 2147483647"),
    ("QUERY_RECENT_RECURRING_EVENTS", "numberOfTransactions", "1e3", "whole number"),
]


@pytest.mark.parametrize(
    ("instruction_type", "field", "value", "reason"),
    NUMBER_FIELDS,
    ids=[f"{t}-{f}-{v!r}"[:60] for t, f, v, _ in NUMBER_FIELDS],
)
def test_number_field_out_of_its_bounds_is_refused(
    instruction_type: str, field: str, value: Any, reason: str
) -> None:
    error = refusal(single(instruction_type, **{field: value}))
    assert error.field == f"instruction.{field}"
    assert reason in error.message


def _price_request(price: Any) -> dict[str, Any]:
    return single(
        "INTERNAL_POSITION_TRANSFER",
        tradeDate="2025-02-17",
        settleDate="2025-02-25",
        transferPrice=price,
    )


def test_transfer_price_keeps_the_schema_s_multiple_of_1e_9() -> None:
    parsed = parse_request(_price_request(100.3456789))
    assert parsed.members[0]["transferPrice"] == Decimal("100.3456789")
    error = refusal(_price_request("1.0000000001"))
    assert error.field == "instruction.transferPrice"
    assert "at most 9 decimal places" in error.message


@pytest.mark.parametrize(
    ("value", "reason"),
    [(101, "between 0 and 100"), (-1, "between 0 and 100"), ("1e-7", "6 decimal places")],
)
def test_percentages_are_bounded(value: Any, reason: str) -> None:
    detail = {
        "fedIncomeTaxPercentage": value,
        "stateIncomeTaxPercentage": 1,
        "stateCd": "NY",
        "iraWithholdType": "NORMAL",
    }
    error = refusal(single("WITHDRAWAL", iraWithdrawalDetail=detail))
    assert error.field == "instruction.iraWithdrawalDetail.fedIncomeTaxPercentage"
    assert reason in error.message


@pytest.mark.parametrize(
    ("instruction_type", "changes", "path", "kept"),
    [
        (
            "QUERY_RECENT_INSTRUCTIONS",
            {"transactionHistory": {"daysToGoBack": 3.0}},
            "daysToGoBack",
            3,
        ),
        (
            "QUERY_RECENT_RECURRING_EVENTS",
            {"numberOfTransactions": 100.0},
            "numberOfTransactions",
            100,
        ),
        ("FOP", {"tradingInstrument": {"conid": 12123.0, "currency": "USD"}}, "conid", 12123),
        ("CANCEL_INSTRUCTION", {"instructionId": Decimal("43085477.0")}, "instructionId", 43085477),
    ],
)
def test_whole_number_floats_are_accepted_for_integer_fields(
    instruction_type: str, changes: dict[str, Any], path: str, kept: int
) -> None:
    """JSON producers in many languages write 3.0 for 3; IBKR's schemas type these as numbers."""
    member = parse_request(single(instruction_type, **changes)).members[0]
    found = jsontext.dumps(member)
    assert re.search(rf'"{path}":{kept}[,}}]', found), found


def test_bank_account_type_code_reads_every_documented_form() -> None:
    info = dict(MINIMAL["ACH_INSTRUCTION"]["clientAccountInfo"])
    for code_given in (1, 1.0, "1", Decimal("1.0")):
        info["bankAccountTypeCode"] = code_given
        member = parse_request(single("ACH_INSTRUCTION", clientAccountInfo=dict(info))).members[0]
        code = member["clientAccountInfo"]["bankAccountTypeCode"]
        assert code == 1 and type(code) is int


# --- nothing but RequestValidationError escapes, and no accepted number expands ------------------

_nasty_numbers = st.one_of(
    st.integers(min_value=-(10**70), max_value=10**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.builds(
        lambda mantissa, exponent: f"{mantissa}e{exponent}",
        st.integers(-(10**6), 10**6),
        st.integers(-(10**12), 10**12),
    ),
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "inf", "1e999999999", "-0", "0.0", "1e-999999999"]
    ),
    st.booleans(),
)
_json_leaves = st.one_of(
    st.none(),
    _nasty_numbers,
    st.text(max_size=40),
    st.text(alphabet="0123456789.-eE", max_size=80),
    st.text(min_size=1000, max_size=5000, alphabet="abc"),
)
_nasty_json = st.recursive(
    _json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_NUMBER_PATHS = [
    ("INTERNAL_CASH_TRANSFER", ("amount",)),
    ("INTERNAL_CASH_TRANSFER", ("clientInstructionId",)),
    ("INTERNAL_POSITION_TRANSFER", ("transferQuantity",)),
    ("INTERNAL_POSITION_TRANSFER", ("tradingInstrument", "conid")),
    ("WITHDRAWAL", ("iraWithdrawalDetail", "fedIncomeTaxPercentage")),
    ("ACH_INSTRUCTION", ("clientAccountInfo", "bankAccountTypeCode")),
    ("TRADITIONAL_BANK_INSTRUCTION_VERIFICATION", ("creditAmount1",)),
    ("QUERY_RECENT_INSTRUCTIONS", ("transactionHistory", "daysToGoBack")),
    ("QUERY_RECENT_RECURRING_EVENTS", ("numberOfTransactions",)),
    ("CANCEL_INSTRUCTION", ("instructionId",)),
    ("DEPOSIT", ("plaidOptions",)),
    ("DEPOSIT", ("recurringInstructionDetail",)),
    ("COMPLEX_ASSET_TRANSFER", ("contraBrokerInfo", "contactPhone")),
    ("COMPLEX_ASSET_TRANSFER", ("nonDisclosedDetail",)),
]
_IRA = {
    "fedIncomeTaxPercentage": 1,
    "stateIncomeTaxPercentage": 1,
    "stateCd": "NY",
    "iraWithholdType": "NORMAL",
}


def _with(instruction_type: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    raw = single(instruction_type)
    target = raw["instruction"]
    if instruction_type == "WITHDRAWAL":
        target["iraWithdrawalDetail"] = copy.deepcopy(_IRA)
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = value
    return raw


def _numbers_in(text: str) -> list[str]:
    return re.findall(r"(?<![\"\w])-?[0-9][0-9.eE+-]*", text)


def _check(raw: Any) -> None:
    try:
        parsed = parse_request(raw)
    except RequestValidationError as error:
        # A refusal names a field and a reason, and is no failure of the validation itself.
        assert not error.unexpected, error
        assert error.field and error.message
        assert len(str(error)) < 1000
        return
    given = [member.get("clientInstructionId") for member in parsed.members]
    body = build_body(parsed, [n if n is not None else i + 1 for i, n in enumerate(given)])
    text = jsontext.dumps(body)
    for number in _numbers_in(text):
        # No accepted number expands: at most 18 digits, a point and 10 decimals (and a sign).
        assert len(number) <= 30, number
    json.loads(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_NUMBER_PATHS), _nasty_json)
def test_nasty_values_in_known_fields_end_in_a_refusal_or_a_bounded_body(
    where: tuple[str, tuple[str, ...]], value: Any
) -> None:
    instruction_type, path = where
    _check(_with(instruction_type, path, value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_nasty_json)
def test_any_json_value_as_a_request_ends_in_a_refusal(value: Any) -> None:
    _check(value)
    _check({"instructionType": "DEPOSIT", "instruction": value})
    _check({"instructionType": "DEPOSIT", "instructions": [value]})


@pytest.mark.parametrize("depth", [15, 16, 17, 1000, 100_000])
def test_deep_nesting_is_refused_without_recursion(depth: int) -> None:
    """(Walk the request recursively again to see 100,000 levels raise RecursionError.)"""
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    error = refusal(single("DEPOSIT", plaidOptions=value))
    assert error.field.startswith("instruction.plaidOptions")


def test_keys_that_are_not_strings_are_refused() -> None:
    raw = single("DEPOSIT")
    raw["instruction"][5] = "x"
    error = refusal(raw)
    assert error.field == "instruction"
    assert "not a string" in error.message


def test_an_unexpected_failure_is_still_a_request_validation_error() -> None:
    """The last line of defence: a failure of validation itself (a bug) still ends the request
    FAILED, marked unexpected, instead of escaping into a retry loop."""

    class Exploding(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(RequestValidationError) as caught:
        parse_request(Exploding(single("DEPOSIT")))
    assert caught.value.unexpected
    assert caught.value.field == "request"
