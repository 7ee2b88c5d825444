"""Bank instructions, their queries, cancels and the transaction-history query (reference §6.6
to §6.9)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator

from worker.ibkr.instructions.base import (
    AccountId,
    Amount,
    Count,
    Currency,
    Instruction,
    InstructionId,
    Model,
    ReferenceId,
    text,
)
from worker.ibkr.instructions.cash import PlaidOptions
from worker.ibkr.instructions.values import read_whole


class ClientAccountInfo(Model):
    MAX_FIELDS = 4

    bankRoutingNumber: Annotated[str, text(1, 24)]
    bankAccountNumber: Annotated[str, text(1, 32)]
    bankName: Annotated[str, text(1, 100)]
    # 2.29 enumerates 0.0/1.0/2.0, 2.13 "0"/"1"/"2": any of them is the whole number sent.
    bankAccountTypeCode: Annotated[
        Literal[0, 1, 2], BeforeValidator(lambda value: read_whole(value, 0, 2))
    ]


class FinancialInstitution(Model):
    MAX_FIELDS = 6

    name: Annotated[str, text(1, 100)]
    identifier: Annotated[str, text(1, 24)]
    identifierType: Literal["BIC", "IFSC"]
    clientAccountId: Annotated[str, text(1, 32)]
    branchCode: Annotated[str, text(0, 32)] | None = None
    branchCodeType: Literal["BSB_AUD", "BANK_CODE_CAD", "NONE"] | None = None


class SourceDepositInstruction(Model):
    type: Literal["OPEN_BANKING"]
    name: Annotated[str, text(1, 100)] | None = None
    ibReferenceId: ReferenceId | None = None


class TransactionHistory(Model):
    daysToGoBack: Count
    transactionType: (
        Literal[
            "ALL",
            "ACH_INSTRUCTION",
            "PREDEFINED_DESTINATION_INSTRUCTION",
            "WITHDRAWAL",
            "DEPOSIT",
            "DWAC",
            "FOP",
            "EDDA_INSTRUCTION",
            "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
            "CANCEL_INSTRUCTION",
            "DELETE_BANK_INSTRUCTION",
            "EXTERNAL_POSITION_TRANSFER",
            "INTERNAL_CASH_TRANSFER",
            "INTERNAL_POSITION_TRANSFER",
            "COMPLEX_ASSET_TRANSFER",
        ]
        | None
    ) = None


class AchInstruction(Instruction):
    MAX_FIELDS = 7

    accountId: AccountId
    bankInstructionCode: Literal["USACH", "CAACH"]
    achType: Literal["DEBIT", "CREDIT", "DEBIT_CREDIT"]
    bankInstructionName: Annotated[str, text(1, 100)]
    currency: Currency
    clientAccountInfo: ClientAccountInfo


class TraditionalBankInstructionVerification(Instruction):
    MAX_FIELDS = 7

    accountId: AccountId
    bankInstructionCode: Literal["USACH", "CAACH", "ACHUS", "WIRE"]
    bankInstructionName: Annotated[str, text(1, 100)]
    pendingInstructionId: InstructionId
    creditAmount1: Amount
    creditAmount2: Amount


class DeleteBankInstruction(Instruction):
    MAX_FIELDS = 5

    accountId: AccountId
    bankInstructionName: Annotated[str, text(1, 150)]
    bankInstructionMethod: Literal["WIRE", "ACH"]
    currency: Currency


class PredefinedDestinationInstruction(Instruction):
    MAX_FIELDS = 6

    accountId: Annotated[str, text(1, 10)]
    bankInstructionName: Annotated[str, text(1, 100)]
    bankInstructionMethod: Literal["LVP", "SEPA", "WIRE", "ACH", "CPA"]
    currency: Currency
    financialInstitution: FinancialInstitution


class EddaInstruction(Instruction):
    MAX_FIELDS = 8

    accountId: AccountId
    bankInstructionName: Annotated[str, text(1, 100)]
    currency: Currency
    bankBranchCode: Annotated[str, text(1, 3)]
    bankAccountNumber: Annotated[str, text(1, 32)]
    bankClearingCode: Annotated[str, text(1, 3)]
    debtorIdentificationDocumentType: Literal["hkId", "passport", "chinaId", "hkMacaoEntryPermit"]


class OpenBankingInstruction(Instruction):
    accountId: AccountId
    currency: Currency
    serviceProvider: Literal["PLAID"]
    plaidOptions: PlaidOptions | None = None


class WithdrawalInstruction(Instruction):
    accountId: AccountId
    currency: Currency
    sourceDepositInstruction: SourceDepositInstruction


class QueryBankInstruction(Instruction):
    MAX_FIELDS = 3

    accountId: AccountId
    bankInstructionMethod: Literal[
        "ACH", "WIRE", "USACH", "CAACH", "SEPA", "eDDA", "eGIRO", "OPEN_BANKING"
    ]


class QueryRecurringInstructions(Instruction):
    accountId: AccountId
    # Required by the 2.13 schema, gone from 2.29: accepted and sent when given.
    currency: Currency | None = None


class QueryRecentRecurringEvents(Instruction):
    MAX_FIELDS = 3

    ibReferenceId: ReferenceId
    numberOfTransactions: Count | None = None


class CancelInstruction(Instruction):
    MAX_FIELDS = 3

    instructionId: InstructionId
    reason: Annotated[str, text(1, 256)]


class QueryRecentInstructions(Instruction):
    accountId: AccountId
    transactionHistory: TransactionHistory
