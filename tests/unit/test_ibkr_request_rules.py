"""Request validation per instructionType: each field rule is enforced and the error names the
field without echoing the value."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import CONTRA_BROKER, DROP, INSTRUMENT_DESCRIPTION, MINIMAL, single
from tests.unit.request_checks import refusal

# --- per-type field rules ---------------------------------------------------------------------

RULES: list[tuple[str, dict[str, Any], str]] = [
    # (instructionType, changes, field named in the error)
    ("INTERNAL_CASH_TRANSFER", {"sourceAccountId": ""}, "instruction.sourceAccountId"),
    ("INTERNAL_CASH_TRANSFER", {"targetAccountId": "U" * 33}, "instruction.targetAccountId"),
    ("INTERNAL_CASH_TRANSFER", {"targetAccountId": DROP}, "instruction.targetAccountId"),
    ("INTERNAL_CASH_TRANSFER", {"currency": "usd"}, "instruction.currency"),
    ("INTERNAL_CASH_TRANSFER", {"currency": "USDX"}, "instruction.currency"),
    ("INTERNAL_CASH_TRANSFER", {"currency": 840}, "instruction.currency"),
    ("INTERNAL_CASH_TRANSFER", {"clientNote": "x" * 65}, "instruction.clientNote"),
    ("INTERNAL_CASH_TRANSFER", {"clientNote": ""}, "instruction.clientNote"),
    ("INTERNAL_CASH_TRANSFER", {"dateTimeToOccur": "2026-11-24"}, "instruction.dateTimeToOccur"),
    (
        "INTERNAL_CASH_TRANSFER",
        {"dateTimeToOccur": "2026-11-24T10:00:00"},
        "instruction.dateTimeToOccur",
    ),
    ("INTERNAL_CASH_TRANSFER", {"amout": 5}, "instruction.amout"),
    ("INTERNAL_POSITION_TRANSFER", {"transferQuantity": 0}, "instruction.transferQuantity"),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradingInstrument": {"currency": "USD"}},
        "instruction.tradingInstrument.conid/tradingInstrumentDescription",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradingInstrument": dict(INSTRUMENT_DESCRIPTION, conid=5)},
        "instruction.tradingInstrument.conid/tradingInstrumentDescription",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradingInstrument": {"conid": 5}},
        "instruction.tradingInstrument.currency",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {
            "tradingInstrument": {
                "currency": "USD",
                "tradingInstrumentDescription": {
                    "securityIdType": "TICKER",
                    "securityId": "X",
                    "assetType": "STK",
                },
            }
        },
        "instruction.tradingInstrument.tradingInstrumentDescription.securityIdType",
    ),
    ("INTERNAL_POSITION_TRANSFER", {"tradeDate": "2025-02-17"}, "instruction.settleDate"),
    ("INTERNAL_POSITION_TRANSFER", {"transferPrice": 100}, "instruction.tradeDate"),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradeDate": "2025-02-17", "settleDate": "2025-02-31"},
        "instruction.settleDate",
    ),
    (
        "INTERNAL_POSITION_TRANSFER",
        {"tradeDate": "2025-02-17", "settleDate": "2025-02-25", "transferPrice": "1.0000000001"},
        "instruction.transferPrice",
    ),
    ("DEPOSIT", {"bankInstructionMethod": "CHEQUE"}, "instruction.bankInstructionMethod"),
    ("DEPOSIT", {"identifier": "x" * 65}, "instruction.identifier"),
    ("DEPOSIT", {"bankInstructionName": "x" * 151}, "instruction.bankInstructionName"),
    (
        "DEPOSIT",
        {"iraDepositDetail": {"fromIraType": "ROTH", "iraTaxYearType": "CURRENT"}},
        "instruction.iraDepositDetail.iraContributionType",
    ),
    (
        "DEPOSIT",
        {
            "recurringInstructionDetail": {
                "instructionName": "x",
                "frequency": "WEEKLY",
                "startDate": "2025-01-01",
            }
        },
        "instruction.recurringInstructionDetail.frequency",
    ),
    (
        "DEPOSIT",
        {
            "recurringInstructionDetail": {
                "instructionName": "x",
                "frequency": "MONTHLY",
                "startDate": "01/02/2025",
            }
        },
        "instruction.recurringInstructionDetail.startDate",
    ),
    (
        "DEPOSIT",
        {"openBanking": {"serviceProvider": "TINK"}},
        "instruction.openBanking.serviceProvider",
    ),
    ("DEPOSIT", {"accountId": 46377}, "instruction.accountId"),
    ("WITHDRAWAL", {"bankInstructionName": DROP}, "instruction.bankInstructionName"),
    ("WITHDRAWAL", {"bankInstructionMethod": "eDDA"}, "instruction.bankInstructionMethod"),
    (
        "WITHDRAWAL",
        {
            "iraWithdrawalDetail": {
                "fedIncomeTaxPercentage": 101,
                "stateIncomeTaxPercentage": 1,
                "stateCd": "NY",
                "iraWithholdType": "NORMAL",
            }
        },
        "instruction.iraWithdrawalDetail.fedIncomeTaxPercentage",
    ),
    (
        "WITHDRAWAL",
        {
            "iraWithdrawalDetail": {
                "fedIncomeTaxPercentage": 1,
                "stateIncomeTaxPercentage": 1,
                "stateCd": "NYC",
                "iraWithholdType": "NORMAL",
            }
        },
        "instruction.iraWithdrawalDetail.stateCd",
    ),
    ("QUERY_WITHDRAWABLE_FUNDS", {"bankAccountNumber": "123"}, "instruction.bankRoutingNumber"),
    (
        "QUERY_WITHDRAWABLE_FUNDS",
        {"bankAccountNumber": "1", "bankRoutingNumber": "2", "bankInstructionName": "n"},
        "instruction.bankInstructionName",
    ),
    ("QUERY_IRA_CONTRIBUTIONS", {"year": "25"}, "instruction.year"),
    ("QUERY_IRA_CONTRIBUTIONS", {"year": 2025}, "instruction.year"),
    ("QUERY_WITHDRAWABLE_CASH_EQUITY", {"currency": DROP}, "instruction.currency"),
    ("FOP", {"direction": "SIDEWAYS"}, "instruction.direction"),
    ("FOP", {"contraBrokerDtcCode": "x" * 21}, "instruction.contraBrokerDtcCode"),
    ("FOP", {"quantity": -3}, "instruction.quantity"),
    ("DWAC", {"direction": "OUT"}, "instruction.direction"),
    ("DWAC", {"contraBrokerTaxId": "x" * 26}, "instruction.contraBrokerTaxId"),
    ("DWAC", {"accountTitle": "x" * 141}, "instruction.accountTitle"),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"contraBrokerInfo": dict(CONTRA_BROKER, contactPhone="1" * 17)},
        "instruction.contraBrokerInfo.contactPhone",
    ),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"contraBrokerInfo": {k: v for k, v in CONTRA_BROKER.items() if k != "depositoryId"}},
        "instruction.contraBrokerInfo.depositoryId",
    ),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"contraBrokerInfo": dict(CONTRA_BROKER, brokerName="IB")},
        "instruction.contraBrokerInfo.accountTitle",
    ),
    (
        "COMPLEX_ASSET_TRANSFER",
        {"nonDisclosedDetail": {"tradeDate": "2025-01-01"}},
        "instruction.nonDisclosedDetail.settleDate",
    ),
    ("EXTERNAL_POSITION_TRANSFER", {"type": "PARTIAL"}, "instruction.type"),
    ("EXTERNAL_POSITION_TRANSFER", {"subType": "DTC"}, "instruction.subType"),
    ("EXTERNAL_POSITION_TRANSFER", {"accountAtBroker": "x" * 35}, "instruction.accountAtBroker"),
    ("EXTERNAL_POSITION_TRANSFER", {"sourceIRAType": "XX"}, "instruction.sourceIRAType"),
    ("EXTERNAL_POSITION_TRANSFER", {"signature": DROP}, "instruction.signature"),
    ("ACH_INSTRUCTION", {"bankInstructionCode": "ACHUS"}, "instruction.bankInstructionCode"),
    ("ACH_INSTRUCTION", {"achType": "PUSH"}, "instruction.achType"),
    ("ACH_INSTRUCTION", {"bankInstructionName": "x" * 101}, "instruction.bankInstructionName"),
    (
        "ACH_INSTRUCTION",
        {
            "clientAccountInfo": {
                "bankRoutingNumber": "202012983",
                "bankAccountNumber": "101267576983",
                "bankName": "JPM Chase",
                "bankAccountTypeCode": 3,
            }
        },
        "instruction.clientAccountInfo.bankAccountTypeCode",
    ),
    (
        "ACH_INSTRUCTION",
        {
            "clientAccountInfo": {
                "bankRoutingNumber": "202012983",
                "bankName": "JPM Chase",
                "bankAccountTypeCode": 1,
            }
        },
        "instruction.clientAccountInfo.bankAccountNumber",
    ),
    (
        "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
        {"pendingInstructionId": 0},
        "instruction.pendingInstructionId",
    ),
    (
        "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
        {"creditAmount2": 0},
        "instruction.creditAmount2",
    ),
    (
        "DELETE_BANK_INSTRUCTION",
        {"bankInstructionMethod": "SEPA"},
        "instruction.bankInstructionMethod",
    ),
    ("PREDEFINED_DESTINATION_INSTRUCTION", {"accountId": "U" * 11}, "instruction.accountId"),
    (
        "PREDEFINED_DESTINATION_INSTRUCTION",
        {
            "financialInstitution": {
                "name": "SBI",
                "identifier": "SBIN001000",
                "identifierType": "IBAN",
                "clientAccountId": "1",
            }
        },
        "instruction.financialInstitution.identifierType",
    ),
    ("EDDA_INSTRUCTION", {"bankBranchCode": "0003"}, "instruction.bankBranchCode"),
    (
        "EDDA_INSTRUCTION",
        {"debtorIdentificationDocumentType": "licence"},
        "instruction.debtorIdentificationDocumentType",
    ),
    ("OPEN_BANKING_INSTRUCTION", {"serviceProvider": "TINK"}, "instruction.serviceProvider"),
    (
        "WITHDRAWAL_INSTRUCTION",
        {"sourceDepositInstruction": {"type": "ACH"}},
        "instruction.sourceDepositInstruction.type",
    ),
    (
        "QUERY_BANK_INSTRUCTION",
        {"bankInstructionMethod": "CHEQUE"},
        "instruction.bankInstructionMethod",
    ),
    ("QUERY_RECURRING_INSTRUCTIONS", {"accountId": DROP}, "instruction.accountId"),
    ("QUERY_RECENT_RECURRING_EVENTS", {"ibReferenceId": -1}, "instruction.ibReferenceId"),
    (
        "QUERY_RECENT_RECURRING_EVENTS",
        {"numberOfTransactions": 0},
        "instruction.numberOfTransactions",
    ),
    ("CANCEL_INSTRUCTION", {"reason": ""}, "instruction.reason"),
    ("CANCEL_INSTRUCTION", {"reason": "x" * 257}, "instruction.reason"),
    ("CANCEL_INSTRUCTION", {"instructionId": 0}, "instruction.instructionId"),
    (
        "QUERY_RECENT_INSTRUCTIONS",
        {"transactionHistory": {"daysToGoBack": 0}},
        "instruction.transactionHistory.daysToGoBack",
    ),
    (
        "QUERY_RECENT_INSTRUCTIONS",
        {"transactionHistory": {"daysToGoBack": 3, "transactionType": "EVERYTHING"}},
        "instruction.transactionHistory.transactionType",
    ),
]


@pytest.mark.parametrize(
    ("instruction_type", "changes", "field"),
    RULES,
    ids=[f"{t}-{f.rsplit('.', 1)[-1]}" for t, _, f in RULES],
)
def test_field_rule_is_enforced_and_names_the_field(
    instruction_type: str, changes: dict[str, Any], field: str
) -> None:
    error = refusal(single(instruction_type, **changes))
    assert error.field == field
    assert str(error).startswith(field + " ")
    assert str(error).endswith(".")


def test_error_message_does_not_echo_the_rejected_value() -> None:
    info = dict(MINIMAL["ACH_INSTRUCTION"]["clientAccountInfo"], bankAccountNumber="9" * 40)
    error = refusal(single("ACH_INSTRUCTION", clientAccountInfo=info))
    assert "9999" not in str(error)
