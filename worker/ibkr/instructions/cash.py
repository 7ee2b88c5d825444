"""Cash instructions and cash queries (reference §6.1, §6.3, §6.4): internal cash transfers,
deposits, withdrawals, withdrawable-funds, IRA-contribution and cash-and-equity queries."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from worker.ibkr.instructions.base import (
    AccountId,
    Amount,
    Currency,
    FieldProblem,
    Flag,
    Instruction,
    IsoDate,
    IsoDateTime,
    Model,
    Percentage,
    text,
)


class RecurringInstructionDetail(Model):
    # IBKR's long-form documentation writes `recurDetail` with snake_case fields.
    ALIASES = {
        "instruction_name": "instructionName",
        "start_date": "startDate",
        "end_date": "endDate",
    }

    instructionName: Annotated[str, text(1, 64)]
    frequency: Literal["MONTHLY", "QUARTERLY", "YEARLY"]
    startDate: IsoDate
    endDate: IsoDate | None = None


class IraDepositDetail(Model):
    fromIraType: Literal[
        "NONE",
        "TRADITIONAL",
        "ROLLOVER",
        "ROTH",
        "SEP",
        "EDUCATION",
        "TRADITIONAL_INHERITED",
        "ROTH_INHERITED",
        "SEP_INHERITED",
        "RETIREMENT_SAVING_PLAN",
        "SPOUSAL_RETIREMENT_SAVING_PLAN",
        "TAX_FREE_SAVING_ACCOUNT",
    ]
    iraContributionType: Literal[
        "ROLLOVER",
        "LATE_ROLLOVER",
        "DIRECT_ROLLOVER",
        "CONTRIBUTION",
        "SPOUSAL_CONTRIBUTION",
        "EMPLOYER_SEP_CONTRIBUTION",
    ]
    iraTaxYearType: Literal["CURRENT", "PRIOR"]


class IraWithdrawalDetail(Model):
    MAX_FIELDS = 4

    fedIncomeTaxPercentage: Percentage
    stateIncomeTaxPercentage: Percentage
    stateCd: Annotated[str, text(1, 2)]
    iraWithholdType: Literal[
        "DIRECT_ROLLOVER",
        "ROTH_DISTRIBUTION",
        "NORMAL",
        "EARLY",
        "DEATH",
        "EXCESS_CY",
        "EXCESS_PY",
        "EXCESS_SC",
    ]


class PlaidOptions(Model):
    completionRedirectUri: Annotated[str, text(0, 2048)] | None = None
    linkDisplayName: Annotated[str, text(0, 256)] | None = None
    isMobileApp: bool | None = None


class OpenBanking(Model):
    serviceProvider: Literal["PLAID"]
    plaidOptions: PlaidOptions | None = None


class InternalCashTransfer(Instruction):
    MAX_FIELDS = 7

    sourceAccountId: AccountId
    targetAccountId: AccountId
    amount: Amount
    currency: Currency
    dateTimeToOccur: IsoDateTime | None = None
    clientNote: Annotated[str, text(1, 64)] | None = None


class Deposit(Instruction):
    ALIASES = {"recurDetail": "recurringInstructionDetail"}
    MAX_FIELDS = 13

    accountId: AccountId
    amount: Amount
    currency: Currency
    bankInstructionMethod: Literal["ACH", "WIRE", "eDDA", "OPEN_BANKING"]
    bankInstructionName: Annotated[str, text(0, 150)] | None = None
    identifier: Annotated[str, text(0, 64)] | None = None
    sendingInstitution: Annotated[str, text(0, 128)] | None = None
    senderInstitutionName: Annotated[str, text(0, 128)] | None = None
    specialInstruction: Annotated[str, text(0, 128)] | None = None
    iraDepositDetail: IraDepositDetail | None = None
    recurringInstructionDetail: RecurringInstructionDetail | None = None
    openBanking: OpenBanking | None = None
    # Sent by IBKR's own DEPOSIT examples (2.13 and 2.29), though no schema lists them.
    fromAccountNumber: Annotated[str, text(1, 64)] | None = None
    isIRA: Flag | None = None
    initiatedByIb: Flag | None = None


class Withdrawal(Instruction):
    ALIASES = {"recurDetail": "recurringInstructionDetail"}
    MAX_FIELDS = 9

    accountId: AccountId
    amount: Amount
    currency: Currency
    bankInstructionMethod: Literal["ACH", "WIRE", "SEPA"]
    bankInstructionName: Annotated[str, text(1, 150)]
    dateTimeToOccur: IsoDateTime | None = None
    iraWithdrawalDetail: IraWithdrawalDetail | None = None
    recurringInstructionDetail: RecurringInstructionDetail | None = None


class QueryWithdrawableFunds(Instruction):
    # 2.13 named the bank account `bankClientAccountNumber`.
    ALIASES = {"bankClientAccountNumber": "bankAccountNumber"}

    accountId: AccountId
    currency: Currency
    bankInstructionName: Annotated[str, text(1, 150)] | None = None
    bankAccountNumber: Annotated[str, text(1, 32)] | None = None
    bankRoutingNumber: Annotated[str, text(1, 24)] | None = None

    @model_validator(mode="after")
    def _one_bank_reference(self) -> QueryWithdrawableFunds:
        has_number = self.bankAccountNumber is not None
        has_routing = self.bankRoutingNumber is not None
        if has_number != has_routing:
            missing = "bankRoutingNumber" if has_number else "bankAccountNumber"
            raise FieldProblem(missing, "is required with the other bank account field")
        if has_number and self.bankInstructionName is not None:
            raise FieldProblem(
                "bankInstructionName",
                "cannot be combined with bankAccountNumber and bankRoutingNumber; give one",
            )
        return self


class QueryIraContributions(Instruction):
    accountId: AccountId
    year: Annotated[str, Field(pattern=r"^[0-9]{4}$")]


class QueryWithdrawableCashEquity(Instruction):
    accountId: AccountId
    currency: Currency
