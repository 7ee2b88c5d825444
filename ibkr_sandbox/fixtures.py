"""Deterministic seed data: the accounts of the reference's examples, their balances, saved bank
instructions, IRA data, participating banks and broker lists, plus the documented rules that make
scenario outcomes predictable (ACH verification outcome, micro-deposit amounts).

Account roles follow IBKR's own examples: U463756, U345 and U39 "do not exist"; U223454 is "not
related to counterparty"; U46377 "is not IRA"; U68903, U1032333 and U399192 are IRA accounts.
Everything marked SIMULATOR-ONLY is invented here and not IBKR behaviour.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

#: The counterparty every registered client acts for (IBKR authenticates at master level).
DEFAULT_COUNTERPARTY = "default"
MASTER_ACCOUNT = "U46377"

_BIG = Decimal("1000000000")
_CURRENCIES = ("USD", "EUR", "GBP", "CHF", "CAD", "HKD", "CNH", "JPY", "AUD")


@dataclass
class Account:
    """One IBKR account as the sandbox knows it."""

    account_id: str
    counterparty: str = DEFAULT_COUNTERPARTY
    is_open: bool = True
    #: None for ordinary accounts; otherwise IBKR's iraType text ("ROTH NEW", "SEP", ...).
    ira_type: str | None = None
    balances: dict[str, Decimal] = field(default_factory=dict)
    title: str = ""


@dataclass
class SavedBankInstruction:
    """A bank instruction saved on an account (usable by deposits and withdrawals)."""

    account_id: str
    name: str
    method: str  # ACH, WIRE, SEPA, LVP, eDDA, ...
    currency: str
    type: str = "LOCAL_BANK"
    status: str = "PROCESSED"
    routing_number: str = ""
    account_number: str = ""
    #: instructionId of the ACH instruction that created it (None for seeded ones).
    instruction_id: int | None = None


def _balances(amount: Decimal) -> dict[str, Decimal]:
    return dict.fromkeys(_CURRENCIES, amount)


def seed_accounts() -> dict[str, Account]:
    """The accounts of the reference's examples, with generous balances in common currencies."""
    ordinary = (
        "U15667",
        "U87440",
        "U139838",
        "U117717",
        "U1234567",
        "U1225448",
        "U2323232",
        "U1001095",
        "U8072517",
        "U32343",
        "U453454",
    )
    accounts = {
        MASTER_ACCOUNT: Account(MASTER_ACCOUNT, balances=_balances(_BIG), title="Master account"),
        "U399192": Account("U399192", ira_type="TRADITIONAL", balances=_balances(Decimal(250_000))),
        "U68903": Account("U68903", ira_type="ROTH NEW", balances=_balances(Decimal(50_000))),
        "U1032333": Account("U1032333", ira_type="SEP", balances=_balances(Decimal(50_000))),
        # IBKR's 422 example: "Account U223454 not related to counterparty".
        "U223454": Account("U223454", counterparty="other", balances=_balances(Decimal(10_000))),
        # SIMULATOR-ONLY account id: a closed account for NOT_OPEN_ACCOUNT.
        "U5550001": Account("U5550001", is_open=False, balances=_balances(Decimal(0))),
    }
    for account_id in ordinary:
        accounts[account_id] = Account(account_id, balances=_balances(Decimal(1_000_000)))
    return accounts


def seed_bank_instructions() -> list[SavedBankInstruction]:
    """Saved bank instructions named in the reference's examples."""
    rows = [
        ("U46377", "testChase1", "ACH", "USD", "LOCAL_BANK", "202012983", "101267577042"),
        ("U46377", "testCitadele", "WIRE", "USD", "FOREIGN_BANK", "", "LV80BANK000043519"),
        ("U46377", "Instruction", "WIRE", "USD", "LOCAL_BANK", "021000021", "000123457042"),
        ("U46377", "Test Withdrawal", "WIRE", "USD", "LOCAL_BANK", "021000021", "000123459911"),
        ("U46377", "Test Delete", "WIRE", "USD", "LOCAL_BANK", "021000021", "000123450001"),
        ("U399192", "Instruction", "WIRE", "USD", "LOCAL_BANK", "021000021", "000987657042"),
        ("U399192", "Test Withdrawal", "WIRE", "USD", "LOCAL_BANK", "021000021", "000987651234"),
        ("U139838", "Test Instruction", "ACH", "USD", "LOCAL_BANK", "122199983", "9876543210"),
        ("U15667", "Test Withdrawal", "ACH", "USD", "LOCAL_BANK", "122199983", "1111222233"),
        ("U87440", "Test Withdrawal", "WIRE", "USD", "LOCAL_BANK", "021000021", "5555666677"),
    ]
    return [
        SavedBankInstruction(
            account_id=account,
            name=name,
            method=method,
            currency=currency,
            type=kind,
            routing_number=routing,
            account_number=number,
        )
        for account, name, method, currency, kind, routing, number in rows
    ]


#: An ACH instruction created outside the API, waiting for micro-deposit confirmation: IBKR's
#: TRADITIONAL_BANK_INSTRUCTION_VERIFICATION example (U117717, pendingInstructionId 43086786,
#: amounts 0.32 and 0.46) works against the sandbox as printed.
SEEDED_PENDING_ACH = {
    "instructionId": 43086786,
    "accountId": "U117717",
    "bankInstructionName": "ACH-Tst1Random172",
    "microAmounts": (Decimal("0.32"), Decimal("0.46")),
}

#: IRA contribution room per account (IBKR's QUERY_IRA_CONTRIBUTIONS examples).
IRA_CONTRIBUTIONS: dict[str, list[dict[str, Any]]] = {
    "U68903": [
        {
            "maximumContributionLimit": 4000,
            "yearToDateContribution": 3500,
            "allowedContributionLimit": 500,
        }
    ],
    "U1032333": [
        {"type": "EMPLOYEE", "maximumContributionLimit": 7000, "yearToDateContribution": 0},
        {"type": "EMPLOYER", "maximumContributionLimit": 58000, "yearToDateContribution": 0},
    ],
    "U399192": [
        {
            "maximumContributionLimit": 7000,
            "yearToDateContribution": 0,
            "allowedContributionLimit": 7000,
        }
    ],
}

#: Recurring instructions (QUERY_RECURRING_INSTRUCTIONS example), per account.
RECURRING_INSTRUCTIONS: dict[str, list[dict[str, Any]]] = {
    "U399192": [
        {
            "requestId": 206611807,
            "bankInstructionName": "Recurring Test- cpereira",
            "transactionType": "DEPOSIT",
            "bankInstructionMethod": "ACH",
            "amount": Decimal("1.0"),
            "currency": "USD",
            "frequency": "MONTHLY",
            "startDate": "2024-06-12 00:00:00.0",
            "endDate": "2024-12-12 00:00:00.0",
        }
    ]
}

#: Recent events of recurring instructions, by the recurring instruction's ibReferenceId.
RECURRING_EVENTS: dict[int, dict[str, Any]] = {
    206603050: {
        "recurringInstructionName": "test",
        "recurringTransactionType": "DEPOSIT",
        "recurringTransactionStatus": "NOTACTIVATED",
        "amount": 1,
        "currency": "CNH",
        "method": "206603051",
        "transactionHistory": {
            "maxNumberOfTransactions": 100,
            "result": [
                {"ibRequestId": 206586288, "status": "ACKNOWLEDGED"},
                {"ibRequestId": 206582418, "status": "CANCELED"},
            ],
        },
    }
}

#: `GET /participating-banks?type=eDDA` (IBKR's example list).
PARTICIPATING_BANKS: dict[str, list[dict[str, str]]] = {
    "eDDA": [
        {"institutionName": "WELAB BANK LIMITED", "clearingCode": "390", "BIC": "WEDIHKHHXXX"},
        {
            "institutionName": "INDUSTRIAL AND COMMERCIAL BANK OF CHINA (ASIA) LIMITED",
            "clearingCode": "072",
            "BIC": "UBHKHKHHXXX",
        },
        {"institutionName": "FUSION BANK LIMITED", "clearingCode": "391", "BIC": "IFFUHKHHXXX"},
        {
            "institutionName": "CITIBANK (HONG KONG) LIMITED",
            "clearingCode": "250",
            "BIC": "CITIHKAXXXX",
        },
    ]
}

#: `GET /enumerations/complex-asset-transfer` (IBKR's example list, plus the example's
#: "JP MORGAN" so the documented COMPLEX_ASSET_TRANSFER request is accepted).
COMPLEX_ASSET_BROKERS: tuple[str, ...] = (
    "DONNER & REUSCHEL",
    "IBROKER GLOBAL MARKETS SOCIEDAD DE VALORES, S.A",
    "EQUATEX 4500",
    "IMAGI  BROKERAGE LIMITED",
    "V-BANK",
    "ADMIRAL MARKETS UK LTD",
    "ALFA BANK",
    "YICKO SECURITIES LIMITED",
    "BLACKWELL GLOBAL SECURITIES LIMITED",
    "EQUINITI",
    "KAISA FINANCIAL GROUP COMPANY LIMITED",
    "JP MORGAN",
    "IB",
    "INTERNAL",
)

#: SIMULATOR-ONLY broker lists for `/enumerations/acats` and `/enumerations/aton`.
FULL_TRANSFER_BROKERS: dict[str, list[dict[str, str]]] = {
    "acats": [
        {"brokerId": "0226", "brokerName": "Wall Street Financial Group"},
        {"brokerId": "0164", "brokerName": "Charles Schwab & Co., Inc."},
        {"brokerId": "0062", "brokerName": "E*TRADE Securities LLC"},
    ],
    "aton": [
        {"brokerId": "T001", "brokerName": "Questrade Inc."},
        {"brokerId": "T002", "brokerName": "RBC Direct Investing"},
    ],
}

#: SIMULATOR-ONLY approximate USD value of one unit, for the 100,000 USD withdrawal cap.
USD_RATES: dict[str, Decimal] = {
    "USD": Decimal("1"),
    "EUR": Decimal("1.08"),
    "GBP": Decimal("1.27"),
    "CHF": Decimal("1.12"),
    "CAD": Decimal("0.73"),
    "HKD": Decimal("0.128"),
    "CNH": Decimal("0.14"),
    "JPY": Decimal("0.0067"),
    "AUD": Decimal("0.66"),
}


def wire_instructions(account_id: str, currency: str) -> dict[str, Any]:
    """SIMULATOR-ONLY IBKR wire details for `/enumerations/wire-instructions`."""
    return {
        "enumerationsType": "wire-instructions",
        "jsonData": [
            {
                "currency": currency,
                "accountNameAndBeneficiary": "Interactive Brokers LLC",
                "accountNumber": "000000000",
                "routingNumber": "021000021",
                "bankSWIFTCode": "CHASUS33",
                "bankTitleAndAddress": "JPMorgan Chase Bank, N.A., New York, NY",
                "alternateAccountInfo": "",
                "paymentReference": f"{account_id} / Sandbox",
            }
        ],
    }


def ach_outcome(bank_instruction_name: str) -> str:
    """The documented rule for how an ACH_INSTRUCTION ends (SIMULATOR-ONLY scenario rule):
    a bankInstructionName containing "reject" ends REJECTED, one containing "verif" or "micro"
    ends PENDING_VERIFICATION (micro-deposits sent), anything else PROCESSED. Case-insensitive."""
    name = bank_instruction_name.lower()
    if "reject" in name:
        return "REJECTED"
    if "verif" in name or "micro" in name:
        return "PENDING_VERIFICATION"
    return "PROCESSED"


def _rng(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def ach_delay_s(seed: int, instruction_id: int, low_s: float, high_s: float) -> float:
    """How long the ACH verification of `instruction_id` takes: a whole number of seconds in
    [low_s, high_s], fixed by the seed and the id."""
    return float(_rng(seed, "ach", instruction_id).randint(int(low_s), int(high_s)))


def internal_cash_delay_s(seed: int, instruction_id: int, low_s: float, high_s: float) -> float:
    """How long a 202 internal cash transfer takes to finish when the sandbox draws a delay
    per transfer: uniform in [low_s, high_s] seconds, fixed by the seed and the id."""
    return _rng(seed, "internal-cash", instruction_id).uniform(low_s, high_s)


def micro_amounts(seed: int, instruction_id: int) -> tuple[Decimal, Decimal]:
    """The two micro-deposit credits (each below one dollar, distinct) for `instruction_id`."""
    rng = _rng(seed, "micro", instruction_id)
    first = rng.randint(1, 99)
    second = rng.randint(1, 98)
    if second >= first:
        second += 1
    return Decimal(first) / 100, Decimal(second) / 100
