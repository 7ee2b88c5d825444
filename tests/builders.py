"""Request builders: one place that writes the requests the tests send.

Every builder returns a new dict the caller may change. Keyword overrides use IBKR's field names
(`amount=`, `targetAccountId=`, `clientNote=`); `DROP` as a value removes the field. Amounts go
through as given (a string, a `Decimal` or a number): some tests choose the JSON form on
purpose, and a sandbox configured with `internal_cash_async_above` answers the internal cash
transfers above it with 202 (then polled) and the others with 201, so a test's amounts choose
which it gets.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

#: The contract's example accounts (an internal cash transfer moves from the first to the second).
SOURCE_ACCOUNT = "U46377"
TARGET_ACCOUNT = "U15667"
#: A value that removes a field from the built instruction.
DROP: Any = object()

INSTRUMENT_CONID = {"conid": 12123, "currency": "USD"}
INSTRUMENT_DESCRIPTION = {
    "currency": "USD",
    "tradingInstrumentDescription": {
        "assetType": "STK",
        "securityId": "459200101",
        "securityIdType": "ISIN",
    },
}
CONTRA_BROKER = {
    "accountType": "ORG",
    "brokerAccountId": "as3456567678578N",
    "brokerName": "JP MORGAN",
    "contactEmail": "a@gmail.com",
    "contactPhone": "2039126155",
    "country": "United States",
    "depositoryId": "1234",
}

# One minimal valid instruction per supported type (clientInstructionId left for the worker).
MINIMAL: dict[str, dict[str, Any]] = {
    "INTERNAL_CASH_TRANSFER": {
        "sourceAccountId": "U46377",
        "targetAccountId": "U15667",
        "amount": Decimal("123.45"),
        "currency": "USD",
    },
    "INTERNAL_POSITION_TRANSFER": {
        "sourceAccountId": "U399192",
        "targetAccountId": "U87440",
        "transferQuantity": 6,
        "tradingInstrument": INSTRUMENT_CONID,
    },
    "DEPOSIT": {
        "accountId": "U46377",
        "amount": 100,
        "currency": "USD",
        "bankInstructionMethod": "WIRE",
    },
    "WITHDRAWAL": {
        "accountId": "U46377",
        "amount": Decimal("123.45"),
        "currency": "GBP",
        "bankInstructionMethod": "WIRE",
        "bankInstructionName": "Test Withdrawal",
    },
    "QUERY_WITHDRAWABLE_FUNDS": {"accountId": "U87440", "currency": "USD"},
    "QUERY_IRA_CONTRIBUTIONS": {"accountId": "U68903", "year": "2025"},
    "QUERY_WITHDRAWABLE_CASH_EQUITY": {"accountId": "U87440", "currency": "USD"},
    "FOP": {
        "accountId": "U46377",
        "direction": "IN",
        "contraBrokerAccountId": "12345678A",
        "contraBrokerDtcCode": "534",
        "quantity": 1000,
        "tradingInstrument": INSTRUMENT_CONID,
    },
    "DWAC": {
        "accountId": "U1001095",
        "direction": "IN",
        "contraBrokerAccountId": "12345678A",
        "contraBrokerTaxId": "123456789",
        "quantity": 1000,
        "tradingInstrument": INSTRUMENT_DESCRIPTION,
    },
    "COMPLEX_ASSET_TRANSFER": {
        "accountId": "U399192",
        "direction": "OUT",
        "quantity": 10,
        "tradingInstrument": INSTRUMENT_CONID,
        "contraBrokerInfo": CONTRA_BROKER,
    },
    "EXTERNAL_POSITION_TRANSFER": {
        "accountId": "U1225448",
        "type": "FULL",
        "subType": "ACATS",
        "brokerId": "0226",
        "brokerName": "Wall Street Financial Group",
        "accountAtBroker": "SOL12345",
        "signature": "sample signature",
    },
    "ACH_INSTRUCTION": {
        "accountId": "U223454",
        "bankInstructionCode": "USACH",
        "achType": "DEBIT_CREDIT",
        "bankInstructionName": "TestInstr",
        "currency": "USD",
        "clientAccountInfo": {
            "bankRoutingNumber": "202012983",
            "bankAccountNumber": "101267576983",
            "bankName": "JPM Chase",
            "bankAccountTypeCode": 1,
        },
    },
    "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION": {
        "accountId": "U117717",
        "bankInstructionCode": "USACH",
        "bankInstructionName": "ACH-Tst1",
        "pendingInstructionId": 43086786,
        "creditAmount1": Decimal("0.32"),
        "creditAmount2": Decimal("0.46"),
    },
    "DELETE_BANK_INSTRUCTION": {
        "accountId": "U46377",
        "bankInstructionName": "Test Delete",
        "bankInstructionMethod": "WIRE",
        "currency": "USD",
    },
    "PREDEFINED_DESTINATION_INSTRUCTION": {
        "accountId": "U399192",
        "bankInstructionName": "Test-ACH-Instr",
        "bankInstructionMethod": "ACH",
        "currency": "USD",
        "financialInstitution": {
            "name": "SBI Bank",
            "identifier": "SBIN001000",
            "identifierType": "IFSC",
            "clientAccountId": "132456789",
        },
    },
    "EDDA_INSTRUCTION": {
        "accountId": "U8072517",
        "bankInstructionName": "Test Instruction",
        "currency": "CNH",
        "bankBranchCode": "003",
        "bankAccountNumber": "132456",
        "bankClearingCode": "003",
        "debtorIdentificationDocumentType": "hkId",
    },
    "OPEN_BANKING_INSTRUCTION": {
        "accountId": "U46377",
        "currency": "GBP",
        "serviceProvider": "PLAID",
        "plaidOptions": {"linkDisplayName": "WonderWallet", "isMobileApp": False},
    },
    "WITHDRAWAL_INSTRUCTION": {
        "accountId": "U46377",
        "currency": "GBP",
        "sourceDepositInstruction": {"type": "OPEN_BANKING", "name": "My bank"},
    },
    "QUERY_BANK_INSTRUCTION": {"accountId": "U46377", "bankInstructionMethod": "ACH"},
    "QUERY_RECURRING_INSTRUCTIONS": {"accountId": "U399192"},
    "QUERY_RECENT_RECURRING_EVENTS": {"ibReferenceId": 206603050, "numberOfTransactions": 100},
    "CANCEL_INSTRUCTION": {"instructionId": 43085477, "reason": "Testing"},
    "QUERY_RECENT_INSTRUCTIONS": {
        "accountId": "U139838",
        "transactionHistory": {"daysToGoBack": 3, "transactionType": "ACH_INSTRUCTION"},
    },
}


def _with(instruction: dict[str, Any], cid: int | None, changes: dict[str, Any]) -> dict[str, Any]:
    """`instruction` with clientInstructionId `cid` first (when given) and `changes` applied."""
    built: dict[str, Any] = {} if cid is None else {"clientInstructionId": cid}
    built.update(instruction)
    for key, value in changes.items():
        if value is DROP:
            built.pop(key, None)
        else:
            built[key] = value
    return built


def member(instruction_type: str, cid: int | None = None, **changes: Any) -> dict[str, Any]:
    """One instruction of `instruction_type` (the minimal valid one of `MINIMAL`, changed)."""
    return _with(copy.deepcopy(MINIMAL[instruction_type]), cid, changes)


def single(instruction_type: str, cid: int | None = None, **changes: Any) -> dict[str, Any]:
    """A single request of `instruction_type`: `member(...)` under `instruction`."""
    return {
        "instructionType": instruction_type,
        "instruction": member(instruction_type, cid, **changes),
    }


def bulk(instruction_type: str, members: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A bulk request of `instruction_type` with `members` under `instructions`."""
    return {"instructionType": instruction_type, "instructions": list(members)}


def transfer_member(
    cid: int | None = None, amount: Any = "10.00", **changes: Any
) -> dict[str, Any]:
    """One internal cash transfer of `amount` USD from SOURCE_ACCOUNT to TARGET_ACCOUNT."""
    return member("INTERNAL_CASH_TRANSFER", cid, amount=amount, **changes)


def transfer(cid: int | None = None, amount: Any = "10.00", **changes: Any) -> dict[str, Any]:
    """A single internal cash transfer request (`transfer_member` under `instruction`); without
    `cid` the worker assigns the clientInstructionId."""
    return single("INTERNAL_CASH_TRANSFER", cid, amount=amount, **changes)


def transfer_bulk(
    cids: Iterable[int | None], amount: Any = "10.00", **changes: Any
) -> dict[str, Any]:
    """A bulk internal cash transfer request: one member of `amount` per id of `cids`."""
    return bulk("INTERNAL_CASH_TRANSFER", (transfer_member(cid, amount, **changes) for cid in cids))


def polled_every(
    n: int, polled: str, immediate: str, *, remainder: int = 0
) -> Callable[[int], str]:
    """An amount chooser for `transfers`: `polled` (above the sandbox's 202 threshold) for the
    ids with `cid % n == remainder`, `immediate` (answered 201) for the others."""
    return lambda cid: polled if cid % n == remainder else immediate


def transfers(cids: Iterable[int], amount_of: Callable[[int], Any]) -> list[dict[str, Any]]:
    """One single transfer request per id of `cids` (in order), of `amount_of(cid)`."""
    return [transfer(cid, amount_of(cid)) for cid in cids]


def position_transfer(cid: int | None = None, **changes: Any) -> dict[str, Any]:
    """A single internal position transfer request (6 of conid 12123 by default)."""
    return single("INTERNAL_POSITION_TRANSFER", cid, **changes)


def deposit(cid: int | None = None, **changes: Any) -> dict[str, Any]:
    """A single deposit request (100 USD by wire by default)."""
    return single("DEPOSIT", cid, **changes)


def withdrawal(cid: int | None = None, **changes: Any) -> dict[str, Any]:
    """A single withdrawal request (123.45 GBP by wire by default)."""
    return single("WITHDRAWAL", cid, **changes)


def bank_instruction(cid: int | None = None, **changes: Any) -> dict[str, Any]:
    """A single ACH bank instruction request (its bank account number is a test value)."""
    return single("ACH_INSTRUCTION", cid, **changes)


# --- v2: multi-position external asset transfers -----------------------------------------------

V2_FOP = {
    "accountId": "U46377",
    "direction": "IN",
    "contraBrokerAccountId": "12345678A",
    "contraBrokerDtcCode": "534",
    "currency": "USD",
    "positions": [
        {"conid": 12123, "quantity": 10},
        {
            "tradingInstrumentDescription": {
                "securityIdType": "ISIN",
                "securityId": "459200101",
                "assetType": "STK",
            },
            "quantity": "2.5",
        },
    ],
}


def v2(instruction_type: str = "FOP", **changes: Any) -> dict[str, Any]:
    """A single v2 external asset transfer (`FOP`, `DWAC` or `COMPLEX_ASSET_TRANSFER`) of two
    positions."""
    instruction = copy.deepcopy(V2_FOP)
    if instruction_type == "DWAC":
        instruction.pop("contraBrokerDtcCode")
        instruction["contraBrokerTaxId"] = "123456789"
    if instruction_type == "COMPLEX_ASSET_TRANSFER":
        for name in ("contraBrokerAccountId", "contraBrokerDtcCode"):
            instruction.pop(name)
        instruction["contraBrokerInfo"] = dict(CONTRA_BROKER)
    instruction.update(changes)
    return {"instructionType": instruction_type, "instruction": instruction}
