"""Request bodies: validation per instructionType and the body to sign (reference §4.1, §4.2, §6).

`parse_request` checks a request (single `{"instructionType", "instruction"}` or bulk
`{"instructionType", "instructions": [...]}`) against the field rules of IBKR's 2.29 request
schemas and returns the instructions as plain dicts in the request's own field names and key
order, amounts as Decimal and ids as int. `build_body` then fills in the clientInstructionIds.
Anything IBKR would refuse is refused here, before a single byte is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from worker.ibkr.endpoints import ENDPOINTS, Endpoint, UnknownInstructionType, endpoint_for
from worker.ibkr.signing import non_ascii_path

# clientInstructionId must stay exact as a JSON double (reference §4.2).
MAX_CLIENT_INSTRUCTION_ID = 2**53 - 1
_MAX_ID_DIGITS = 20
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class RequestValidationError(ValueError):
    """A request IBKR would refuse. `.field` is the JSON path (`instruction.amount`,
    `instructions[2].sourceAccountId`, `instructionType`); `.message` says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field} {message.rstrip('.')}.")


class _FieldProblem(ValueError):
    """Raised inside model validators to name the offending sub-field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


# --- field types ------------------------------------------------------------------------------


def _to_int(value: Any) -> Any:
    # Ids are whole numbers; numeric strings are accepted ([SPEC-2.13] typed some as strings),
    # booleans and fractions are not (pydantic's lax mode would turn True into 1).
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, str):
        raise ValueError("must be a whole number (digits only)")
    raise ValueError("must be a whole number")


def _to_decimal(value: Any) -> Any:
    # Amounts become Decimal without passing through binary floating point where avoidable;
    # a float (from a producer that parsed JSON with floats) is taken by its shortest repr.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("must be a number") from None
    else:
        raise ValueError("must be a number")
    if not result.is_finite():
        raise ValueError("must be a finite number")
    return result


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative_pct(value: Decimal) -> Decimal:
    if value < 0 or value > 100:
        raise ValueError("must be a percentage between 0 and 100")
    return value


def _nano_places(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -9:
        raise ValueError("must have at most 9 decimal places")
    return value


def _client_instruction_id(value: int) -> int:
    if value <= 0:
        raise ValueError("must be a positive whole number")
    if len(str(value)) > _MAX_ID_DIGITS or value > MAX_CLIENT_INSTRUCTION_ID:
        raise ValueError(f"must be below 2**53 ({MAX_CLIENT_INSTRUCTION_ID + 1}) to stay exact")
    return value


def _positive_int(value: int) -> int:
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_int(value: int) -> int:
    if value < 0:
        raise ValueError("must be zero or a positive whole number")
    return value


def _iso_date(value: str) -> str:
    if not _DATE.fullmatch(value):
        raise ValueError("must be a date in the form YYYY-MM-DD")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a real calendar date in the form YYYY-MM-DD") from None
    return value


def _iso_datetime(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            "must be an ISO 8601 date-time with an offset, e.g. 2026-11-24T09:12:13Z"
        ) from None
    if parsed.tzinfo is None or len(value) <= len("YYYY-MM-DD"):
        raise ValueError("must be an ISO 8601 date-time with an offset, e.g. 2026-11-24T09:12:13Z")
    return value


def _date_or_datetime(value: str) -> str:
    # nonDisclosedDetail dates: IBKR's own examples send date-times where the schema says date.
    if _DATE.fullmatch(value):
        return _iso_date(value)
    return _iso_datetime(value)


def _text(min_length: int, max_length: int | None = None) -> Any:
    return Field(min_length=min_length, max_length=max_length)


ClientInstructionId = Annotated[
    int, BeforeValidator(_to_int), AfterValidator(_client_instruction_id)
]
PositiveId = Annotated[int, BeforeValidator(_to_int), AfterValidator(_positive_int)]
NonNegativeId = Annotated[int, BeforeValidator(_to_int), AfterValidator(_non_negative_int)]
Amount = Annotated[Decimal, BeforeValidator(_to_decimal), AfterValidator(_positive)]
Quantity = Amount
Percentage = Annotated[Decimal, BeforeValidator(_to_decimal), AfterValidator(_non_negative_pct)]
Price = Annotated[
    Decimal, BeforeValidator(_to_decimal), AfterValidator(_positive), AfterValidator(_nano_places)
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
AccountId = Annotated[str, Field(min_length=1, max_length=32)]
IsoDate = Annotated[str, AfterValidator(_iso_date)]
IsoDateTime = Annotated[str, AfterValidator(_iso_datetime)]
LooseDate = Annotated[str, AfterValidator(_date_or_datetime)]


class _Model(BaseModel):
    # Unknown fields are refused: a misspelt optional field (dateTimeToOccur) would otherwise
    # vanish silently and change what IBKR does.
    model_config = ConfigDict(extra="forbid", strict=False, str_strip_whitespace=False)


class _Instruction(_Model):
    clientInstructionId: ClientInstructionId | None = None


# --- nested objects ---------------------------------------------------------------------------


class TradingInstrumentDescription(_Model):
    securityIdType: Literal["CUSIP", "ISIN", "CASH"]
    securityId: Annotated[str, _text(1, 64)]
    assetType: Literal["STK", "CASH", "UNKNOWN", "BILL", "BOND", "FUND", "OPT", "WAR"]


class TradingInstrument(_Model):
    currency: Currency
    conid: PositiveId | None = None
    tradingInstrumentDescription: TradingInstrumentDescription | None = None

    @model_validator(mode="after")
    def _conid_xor_description(self) -> TradingInstrument:
        if (self.conid is None) == (self.tradingInstrumentDescription is None):
            raise _FieldProblem(
                "conid/tradingInstrumentDescription",
                "needs exactly one of the two: conid or tradingInstrumentDescription",
            )
        return self


class RecurringInstructionDetail(_Model):
    instructionName: Annotated[str, _text(1, 64)]
    frequency: Literal["MONTHLY", "QUARTERLY", "YEARLY"]
    startDate: IsoDate
    endDate: IsoDate | None = None


class IraDepositDetail(_Model):
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


class IraWithdrawalDetail(_Model):
    fedIncomeTaxPercentage: Percentage
    stateIncomeTaxPercentage: Percentage
    stateCd: Annotated[str, _text(1, 2)]
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


class PlaidOptions(_Model):
    completionRedirectUri: str | None = None
    linkDisplayName: str | None = None
    isMobileApp: bool | None = None


class OpenBanking(_Model):
    serviceProvider: Literal["PLAID"]
    plaidOptions: PlaidOptions | None = None


class ClientAccountInfo(_Model):
    bankRoutingNumber: Annotated[str, _text(1, 24)]
    bankAccountNumber: Annotated[str, _text(1, 32)]
    bankName: Annotated[str, _text(1, 100)]
    bankAccountTypeCode: Annotated[Literal[0, 1, 2], BeforeValidator(_to_int)]


class FinancialInstitution(_Model):
    name: Annotated[str, _text(1, 100)]
    identifier: Annotated[str, _text(1, 24)]
    identifierType: Literal["BIC", "IFSC"]
    clientAccountId: Annotated[str, _text(1, 32)]
    branchCode: Annotated[str, _text(0, 32)] | None = None
    branchCodeType: Literal["BSB_AUD", "BANK_CODE_CAD", "NONE"] | None = None


class ContraBrokerInfo(_Model):
    accountType: Annotated[str, _text(1, 32)]
    brokerName: Annotated[str, _text(1, 128)]
    brokerAccountId: Annotated[str, _text(1, 64)]
    country: Annotated[str, _text(1, 64)]
    contactEmail: Annotated[str, _text(1, 64)]
    contactPhone: Annotated[str, _text(1, 16)]
    depositoryId: Annotated[str, _text(1, 64)]
    contactName: Annotated[str, _text(1, 64)] | None = None
    accountTitle: Annotated[str, _text(1, 128)] | None = None


class NonDisclosedDetail(_Model):
    tradeDate: LooseDate
    settleDate: LooseDate
    psetBic: Annotated[str, _text(0, 64)] | None = None
    reagDeagBic: Annotated[str, _text(0, 64)] | None = None
    buyerSellBic: Annotated[str, _text(0, 64)] | None = None
    memberAccountId: Annotated[str, _text(0, 64)] | None = None
    safeKeepingAccountId: Annotated[str, _text(0, 64)] | None = None


class SourceDepositInstruction(_Model):
    type: Literal["OPEN_BANKING"]
    name: Annotated[str, _text(1, 100)] | None = None
    ibReferenceId: NonNegativeId | None = None


class TransactionHistory(_Model):
    daysToGoBack: PositiveId
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


# --- one model per instructionType ------------------------------------------------------------


class InternalCashTransfer(_Instruction):
    sourceAccountId: AccountId
    targetAccountId: AccountId
    amount: Amount
    currency: Currency
    dateTimeToOccur: IsoDateTime | None = None
    clientNote: Annotated[str, _text(1, 64)] | None = None


class InternalPositionTransfer(_Instruction):
    sourceAccountId: AccountId
    targetAccountId: AccountId
    transferQuantity: Quantity
    tradingInstrument: TradingInstrument
    tradeDate: IsoDate | None = None
    settleDate: IsoDate | None = None
    transferPrice: Price | None = None

    @model_validator(mode="after")
    def _dates_together(self) -> InternalPositionTransfer:
        if (self.tradeDate is None) != (self.settleDate is None):
            missing = "settleDate" if self.settleDate is None else "tradeDate"
            raise _FieldProblem(missing, "is required when the other trade/settle date is given")
        if self.transferPrice is not None and self.tradeDate is None:
            raise _FieldProblem("tradeDate", "and settleDate are required with transferPrice")
        if self.tradeDate and self.settleDate and self.settleDate < self.tradeDate:
            raise _FieldProblem("settleDate", "must not be before tradeDate")
        return self


class Deposit(_Instruction):
    accountId: AccountId
    amount: Amount
    currency: Currency
    bankInstructionMethod: Literal["ACH", "WIRE", "eDDA", "OPEN_BANKING"]
    bankInstructionName: Annotated[str, _text(0, 150)] | None = None
    identifier: Annotated[str, _text(0, 64)] | None = None
    sendingInstitution: Annotated[str, _text(0, 128)] | None = None
    senderInstitutionName: Annotated[str, _text(0, 128)] | None = None
    specialInstruction: Annotated[str, _text(0, 128)] | None = None
    iraDepositDetail: IraDepositDetail | None = None
    recurringInstructionDetail: RecurringInstructionDetail | None = None
    openBanking: OpenBanking | None = None


class Withdrawal(_Instruction):
    accountId: AccountId
    amount: Amount
    currency: Currency
    bankInstructionMethod: Literal["ACH", "WIRE", "SEPA"]
    bankInstructionName: Annotated[str, _text(1, 150)]
    dateTimeToOccur: IsoDateTime | None = None
    iraWithdrawalDetail: IraWithdrawalDetail | None = None
    recurringInstructionDetail: RecurringInstructionDetail | None = None


class QueryWithdrawableFunds(_Instruction):
    accountId: AccountId
    currency: Currency
    bankInstructionName: Annotated[str, _text(1, 150)] | None = None
    bankAccountNumber: Annotated[str, _text(1, 32)] | None = None
    bankRoutingNumber: Annotated[str, _text(1, 24)] | None = None

    @model_validator(mode="after")
    def _one_bank_reference(self) -> QueryWithdrawableFunds:
        has_number = self.bankAccountNumber is not None
        has_routing = self.bankRoutingNumber is not None
        if has_number != has_routing:
            missing = "bankRoutingNumber" if has_number else "bankAccountNumber"
            raise _FieldProblem(missing, "is required with the other bank account field")
        if has_number and self.bankInstructionName is not None:
            raise _FieldProblem(
                "bankInstructionName",
                "cannot be combined with bankAccountNumber and bankRoutingNumber; give one",
            )
        return self


class QueryIraContributions(_Instruction):
    accountId: AccountId
    year: Annotated[str, Field(pattern=r"^[0-9]{4}$")]


class QueryWithdrawableCashEquity(_Instruction):
    accountId: AccountId
    currency: Currency


class Fop(_Instruction):
    accountId: AccountId
    direction: Literal["IN", "OUT"]
    contraBrokerAccountId: Annotated[str, _text(1, 20)]
    contraBrokerDtcCode: Annotated[str, _text(1, 20)]
    quantity: Quantity
    tradingInstrument: TradingInstrument


class Dwac(_Instruction):
    accountId: AccountId
    direction: Literal["IN"]
    contraBrokerAccountId: Annotated[str, _text(1, 20)]
    contraBrokerTaxId: Annotated[str, _text(1, 25)]
    quantity: Quantity
    tradingInstrument: TradingInstrument
    accountTitle: Annotated[str, _text(0, 140)] | None = None
    referenceId: Annotated[str, _text(0, 20)] | None = None


class ComplexAssetTransfer(_Instruction):
    accountId: AccountId
    direction: Literal["IN", "OUT"]
    quantity: Quantity
    tradingInstrument: TradingInstrument
    contraBrokerInfo: ContraBrokerInfo
    accountIdAtCurrentBroker: Annotated[str, _text(1, 64)] | None = None
    nonDisclosedDetail: NonDisclosedDetail | None = None

    @model_validator(mode="after")
    def _internal_broker_details(self) -> ComplexAssetTransfer:
        # [DOC]: a transfer from/to IB itself needs the account title and the account there.
        if self.contraBrokerInfo.brokerName.upper() in {"IB", "INTERNAL"}:
            if self.contraBrokerInfo.accountTitle is None:
                raise _FieldProblem(
                    "contraBrokerInfo.accountTitle", "is required when brokerName is IB/INTERNAL"
                )
            if self.accountIdAtCurrentBroker is None:
                raise _FieldProblem(
                    "accountIdAtCurrentBroker", "is required when brokerName is IB/INTERNAL"
                )
        return self


class ExternalPositionTransfer(_Instruction):
    accountId: AccountId
    type: Literal["FULL"]
    subType: Literal["ACATS", "ATON"]
    brokerId: Annotated[str, _text(1, 20)]
    brokerName: Annotated[str, _text(1, 256)]
    accountAtBroker: Annotated[str, _text(1, 34)]
    signature: Annotated[str, _text(1, 140)]
    sourceIRAType: Literal["RO", "RI", "RT", "SP", "ED", "TH", "RH", "SH"] | None = None


class AchInstruction(_Instruction):
    accountId: AccountId
    bankInstructionCode: Literal["USACH", "CAACH"]
    achType: Literal["DEBIT", "CREDIT", "DEBIT_CREDIT"]
    bankInstructionName: Annotated[str, _text(1, 100)]
    currency: Currency
    clientAccountInfo: ClientAccountInfo


class TraditionalBankInstructionVerification(_Instruction):
    accountId: AccountId
    bankInstructionCode: Literal["USACH", "CAACH", "ACHUS", "WIRE"]
    bankInstructionName: Annotated[str, _text(1, 100)]
    pendingInstructionId: PositiveId
    creditAmount1: Amount
    creditAmount2: Amount


class DeleteBankInstruction(_Instruction):
    accountId: AccountId
    bankInstructionName: Annotated[str, _text(1, 150)]
    bankInstructionMethod: Literal["WIRE", "ACH"]
    currency: Currency


class PredefinedDestinationInstruction(_Instruction):
    accountId: Annotated[str, _text(1, 10)]
    bankInstructionName: Annotated[str, _text(1, 100)]
    bankInstructionMethod: Literal["LVP", "SEPA", "WIRE", "ACH", "CPA"]
    currency: Currency
    financialInstitution: FinancialInstitution


class EddaInstruction(_Instruction):
    accountId: AccountId
    bankInstructionName: Annotated[str, _text(1, 100)]
    currency: Currency
    bankBranchCode: Annotated[str, _text(1, 3)]
    bankAccountNumber: Annotated[str, _text(1, 32)]
    bankClearingCode: Annotated[str, _text(1, 3)]
    debtorIdentificationDocumentType: Literal["hkId", "passport", "chinaId", "hkMacaoEntryPermit"]


class OpenBankingInstruction(_Instruction):
    accountId: AccountId
    currency: Currency
    serviceProvider: Literal["PLAID"]
    plaidOptions: PlaidOptions | None = None


class WithdrawalInstruction(_Instruction):
    accountId: AccountId
    currency: Currency
    sourceDepositInstruction: SourceDepositInstruction


class QueryBankInstruction(_Instruction):
    accountId: AccountId
    bankInstructionMethod: Literal[
        "ACH", "WIRE", "USACH", "CAACH", "SEPA", "eDDA", "eGIRO", "OPEN_BANKING"
    ]


class QueryRecurringInstructions(_Instruction):
    accountId: AccountId


class QueryRecentRecurringEvents(_Instruction):
    ibReferenceId: NonNegativeId
    numberOfTransactions: PositiveId | None = None


class CancelInstruction(_Instruction):
    instructionId: PositiveId
    reason: Annotated[str, _text(1, 256)]


class QueryRecentInstructions(_Instruction):
    accountId: AccountId
    transactionHistory: TransactionHistory


INSTRUCTION_MODELS: dict[str, type[_Instruction]] = {
    "INTERNAL_CASH_TRANSFER": InternalCashTransfer,
    "INTERNAL_POSITION_TRANSFER": InternalPositionTransfer,
    "DEPOSIT": Deposit,
    "WITHDRAWAL": Withdrawal,
    "QUERY_WITHDRAWABLE_FUNDS": QueryWithdrawableFunds,
    "QUERY_IRA_CONTRIBUTIONS": QueryIraContributions,
    "QUERY_WITHDRAWABLE_CASH_EQUITY": QueryWithdrawableCashEquity,
    "FOP": Fop,
    "DWAC": Dwac,
    "COMPLEX_ASSET_TRANSFER": ComplexAssetTransfer,
    "EXTERNAL_POSITION_TRANSFER": ExternalPositionTransfer,
    "ACH_INSTRUCTION": AchInstruction,
    "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION": TraditionalBankInstructionVerification,
    "DELETE_BANK_INSTRUCTION": DeleteBankInstruction,
    "PREDEFINED_DESTINATION_INSTRUCTION": PredefinedDestinationInstruction,
    "EDDA_INSTRUCTION": EddaInstruction,
    "OPEN_BANKING_INSTRUCTION": OpenBankingInstruction,
    "WITHDRAWAL_INSTRUCTION": WithdrawalInstruction,
    "QUERY_BANK_INSTRUCTION": QueryBankInstruction,
    "QUERY_RECURRING_INSTRUCTIONS": QueryRecurringInstructions,
    "QUERY_RECENT_RECURRING_EVENTS": QueryRecentRecurringEvents,
    "CANCEL_INSTRUCTION": CancelInstruction,
    "QUERY_RECENT_INSTRUCTIONS": QueryRecentInstructions,
}
assert set(INSTRUCTION_MODELS) == set(ENDPOINTS), "every endpoint type needs a model"


# --- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request: its type, form, endpoint and the instruction objects (`members`, one
    for a single request), each a plain dict in the request's field names and key order."""

    instruction_type: str
    bulk: bool
    endpoint: Endpoint
    members: tuple[dict[str, Any], ...]


def _join(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


_LITERAL_OPTIONS = re.compile(r"'([^']*)'")


def _describe(error: Mapping[str, Any], instruction_type: str) -> tuple[list[int | str], str]:
    """(extra location, message) for one pydantic error, in words an operator acts on."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _FieldProblem):
        parts: list[int | str] = [*cause.field.split(".")]
        return parts, cause.message
    if kind == "missing":
        return [], "is required but missing"
    if kind == "extra_forbidden":
        return [], f"is not a field IBKR accepts for {instruction_type}; remove it"
    if kind == "string_too_long":
        return [], f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_too_short":
        minimum = ctx.get("min_length")
        return [], "must not be empty" if minimum == 1 else f"must be at least {minimum} long"
    if kind == "string_type":
        return [], "must be a string"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if "A-Z" in pattern:
            return [], "must be a three-letter upper-case ISO 4217 currency code"
        if "0-9]{4}" in pattern:
            return [], "must be a four-digit year"
        return [], f"must match {pattern}"
    if kind == "literal_error":
        options = _LITERAL_OPTIONS.findall(str(ctx.get("expected", ""))) or [
            str(ctx.get("expected", ""))
        ]
        return [], f"must be one of {', '.join(options)}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return [], "must be a JSON object"
    if kind == "bool_type" or kind == "bool_parsing":
        return [], "must be true or false"
    if kind == "value_error":
        text = str(error.get("msg", "is invalid"))
        return [], text.removeprefix("Value error, ")
    return [], str(error.get("msg", "is invalid")).lower()


def _validation_error(
    error: ValidationError, prefix: str, instruction_type: str
) -> RequestValidationError:
    first = error.errors()[0]
    loc = list(first.get("loc", ()))
    extra_loc, message = _describe(first, instruction_type)
    # `Literal[0, 1, 2]` behind a BeforeValidator reports a sub-location; keep the field only.
    loc = [part for part in loc if not (isinstance(part, str) and part.startswith("literal["))]
    return RequestValidationError(_join(prefix, [*loc, *extra_loc]), message)


def _ordered(validated: Any, raw: Any) -> Any:
    """`validated` re-keyed in the order of `raw` (the request's own order), None dropped."""
    if isinstance(validated, dict) and isinstance(raw, Mapping):
        result: dict[str, Any] = {}
        for key in raw:
            if key in validated and validated[key] is not None:
                result[key] = _ordered(validated[key], raw[key])
        return result
    if isinstance(validated, list) and isinstance(raw, list):
        return [_ordered(item, raw_item) for item, raw_item in zip(validated, raw, strict=True)]
    return validated


def _parse_member(instruction_type: str, raw: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise RequestValidationError(prefix, "must be a JSON object")
    model = INSTRUCTION_MODELS[instruction_type]
    try:
        parsed = model.model_validate(dict(raw))
    except ValidationError as error:
        raise _validation_error(error, prefix, instruction_type) from None
    member: dict[str, Any] = _ordered(parsed.model_dump(exclude_none=True), raw)
    return member


def parse_request(raw: object) -> ParsedRequest:
    """Validate an IBKR request body (single or bulk form) and return it normalised.

    Raises RequestValidationError naming the first offending field.
    """
    if not isinstance(raw, Mapping):
        raise RequestValidationError(
            "request", "must be a JSON object with instructionType and instruction(s)"
        )
    bad_path = non_ascii_path(raw)
    if bad_path is not None:
        raise RequestValidationError(
            bad_path or "request",
            "contains non-ASCII characters, which a signed IBKR body cannot carry; use ASCII only",
        )
    for key in raw:
        if key not in {"instructionType", "instruction", "instructions"}:
            raise RequestValidationError(
                str(key),
                "is not allowed at the top level; a request has instructionType and "
                "instruction (or instructions for bulk)",
            )
    instruction_type = raw.get("instructionType")
    if instruction_type is None:
        raise RequestValidationError("instructionType", "is required but missing")
    if not isinstance(instruction_type, str):
        raise RequestValidationError("instructionType", "must be a string")
    has_single, has_bulk = "instruction" in raw, "instructions" in raw
    if has_single and has_bulk:
        raise RequestValidationError(
            "instructions", "cannot be combined with instruction; send one or the other"
        )
    if not has_single and not has_bulk:
        raise RequestValidationError(
            "instruction", "is required (or instructions, a list, for a bulk request)"
        )
    try:
        endpoint = endpoint_for(instruction_type, bulk=has_bulk)
    except UnknownInstructionType as error:
        raise RequestValidationError("instructionType", _strip_field(str(error))) from None
    if has_single:
        member = _parse_member(instruction_type, raw["instruction"], "instruction")
        return ParsedRequest(instruction_type, False, endpoint, (member,))
    items = raw["instructions"]
    if not isinstance(items, list):
        raise RequestValidationError("instructions", "must be a list of instruction objects")
    if not items:
        raise RequestValidationError("instructions", "must hold at least one instruction")
    members = tuple(
        _parse_member(instruction_type, item, f"instructions[{index}]")
        for index, item in enumerate(items)
    )
    seen: dict[int, int] = {}
    for index, member in enumerate(members):
        client_id = member.get("clientInstructionId")
        if client_id is None:
            continue
        if client_id in seen:
            raise RequestValidationError(
                f"instructions[{index}].clientInstructionId",
                f"repeats the clientInstructionId {client_id} of instructions[{seen[client_id]}];"
                " each instruction needs its own",
            )
        seen[client_id] = index
    return ParsedRequest(instruction_type, True, endpoint, members)


def _strip_field(text: str) -> str:
    # endpoint_for's message starts with "instructionType 'X' ..."; the error adds the field.
    return text.removeprefix("instructionType ")


# --- bodies and member accessors --------------------------------------------------------------


def build_body(parsed: ParsedRequest, client_instruction_ids: Sequence[int]) -> dict[str, Any]:
    """The body to sign: the request with every member's clientInstructionId filled in.

    `client_instruction_ids` holds one id per member, in member order; a member that already
    carries an id must be given that same id. Raises ValueError otherwise.
    """
    if len(client_instruction_ids) != len(parsed.members):
        raise ValueError(
            f"build_body needs {len(parsed.members)} clientInstructionIds for this "
            f"{parsed.instruction_type} request, got {len(client_instruction_ids)}"
        )
    filled: list[dict[str, Any]] = []
    for index, (member, client_id) in enumerate(
        zip(parsed.members, client_instruction_ids, strict=True)
    ):
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            raise ValueError(f"clientInstructionId for member {index} must be an int")
        _client_instruction_id(client_id)
        existing = member.get("clientInstructionId")
        if existing is not None and existing != client_id:
            raise ValueError(
                f"member {index} already has clientInstructionId {existing}; "
                f"cannot send it as {client_id}"
            )
        if existing is not None:
            filled.append(dict(member))
        else:
            filled.append({"clientInstructionId": client_id, **member})
    if parsed.bulk:
        return {"instructionType": parsed.instruction_type, "instructions": filled}
    return {"instructionType": parsed.instruction_type, "instruction": filled[0]}


def member_account_id(member: Mapping[str, Any]) -> str | None:
    """The account debited or acted on: `sourceAccountId`, else `accountId` (None for
    types without one, such as CANCEL_INSTRUCTION)."""
    value = member.get("sourceAccountId", member.get("accountId"))
    return value if isinstance(value, str) else None


def member_target_account_id(member: Mapping[str, Any]) -> str | None:
    """The account credited by an internal transfer (`targetAccountId`), or None."""
    value = member.get("targetAccountId")
    return value if isinstance(value, str) else None


def member_amount(member: Mapping[str, Any]) -> Decimal | None:
    """The cash amount (`amount`) of a cash instruction, or None."""
    value = member.get("amount")
    return value if isinstance(value, Decimal) else None


def member_currency(member: Mapping[str, Any]) -> str | None:
    """The currency of the instruction (`currency`, else the traded instrument's), or None."""
    value = member.get("currency")
    if isinstance(value, str):
        return value
    instrument = member.get("tradingInstrument")
    if isinstance(instrument, Mapping) and isinstance(instrument.get("currency"), str):
        return str(instrument["currency"])
    return None
