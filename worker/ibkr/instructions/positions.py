"""Position transfers (reference §6.2, §6.5): internal, FOP, DWAC, complex and full (ACATS /
ATON) transfers, and the v2 multi-position forms of FOP, DWAC and complex transfers.

v2 (`/gw/api/v2/external-asset-transfers`) is described by IBKR's reference only in prose:
an instruction carries `currency` and a `positions` array of `{conid}` or
`{tradingInstrumentDescription}` entries instead of one `tradingInstrument` and `quantity`.
Where the quantity of each position goes is UNCERTAIN, so both readings are accepted and sent
as the request gives them: a `quantity` on every position, or one `quantity` on the
instruction for all of its positions (never both, never neither).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from worker.ibkr.instructions.base import (
    AccountId,
    Conid,
    Currency,
    DateOrDateTime,
    FieldProblem,
    Instruction,
    IsoDate,
    Model,
    Price,
    Quantity,
    text,
)
from worker.ibkr.instructions.values import read_phone

_ASSET_TYPES = Literal["STK", "CASH", "UNKNOWN", "BILL", "BOND", "FUND", "OPT", "WAR"]


class TradingInstrumentDescription(Model):
    MAX_FIELDS = 3

    securityIdType: Literal["CUSIP", "ISIN", "CASH"]
    securityId: Annotated[str, text(1, 64)]
    assetType: _ASSET_TYPES


def _one_instrument(model: TradingInstrument | PositionV2) -> None:
    if (model.conid is None) == (model.tradingInstrumentDescription is None):
        raise FieldProblem(
            "conid/tradingInstrumentDescription",
            "needs exactly one of the two: conid or tradingInstrumentDescription",
        )


class TradingInstrument(Model):
    # IBKR's long-form documentation spells the contract id `conId`.
    ALIASES = {"conId": "conid"}
    MAX_FIELDS = 3

    currency: Currency
    conid: Conid | None = None
    tradingInstrumentDescription: TradingInstrumentDescription | None = None

    @model_validator(mode="after")
    def _conid_xor_description(self) -> TradingInstrument:
        _one_instrument(self)
        return self


class ContraBrokerInfo(Model):
    accountType: Annotated[str, text(1, 32)]
    brokerName: Annotated[str, text(1, 128)]
    brokerAccountId: Annotated[str, text(1, 64)]
    country: Annotated[str, text(1, 64)]
    contactEmail: Annotated[str, text(1, 64)]
    contactPhone: Annotated[str, BeforeValidator(read_phone), text(1, 16)]
    depositoryId: Annotated[str, text(1, 64)]
    contactName: Annotated[str, text(1, 64)] | None = None
    accountTitle: Annotated[str, text(1, 128)] | None = None


class NonDisclosedDetail(Model):
    tradeDate: DateOrDateTime
    settleDate: DateOrDateTime
    psetBic: Annotated[str, text(0, 64)] | None = None
    reagDeagBic: Annotated[str, text(0, 64)] | None = None
    buyerSellBic: Annotated[str, text(0, 64)] | None = None
    memberAccountId: Annotated[str, text(0, 64)] | None = None
    safeKeepingAccountId: Annotated[str, text(0, 64)] | None = None


class InternalPositionTransfer(Instruction):
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
            raise FieldProblem(missing, "is required when the other trade/settle date is given")
        if self.transferPrice is not None and self.tradeDate is None:
            raise FieldProblem("tradeDate", "and settleDate are required with transferPrice")
        if self.tradeDate and self.settleDate and self.settleDate < self.tradeDate:
            raise FieldProblem("settleDate", "must not be before tradeDate")
        return self


class _Fop(Instruction):
    accountId: AccountId
    direction: Literal["IN", "OUT"]
    contraBrokerAccountId: Annotated[str, text(1, 20)]
    contraBrokerDtcCode: Annotated[str, text(1, 20)]


class _Dwac(Instruction):
    # 2.13 spelled the field `refrenceId`.
    ALIASES = {"refrenceId": "referenceId"}

    accountId: AccountId
    direction: Literal["IN"]
    contraBrokerAccountId: Annotated[str, text(1, 20)]
    contraBrokerTaxId: Annotated[str, text(1, 25)]
    accountTitle: Annotated[str, text(0, 140)] | None = None
    referenceId: Annotated[str, text(0, 20)] | None = None


class _Complex(Instruction):
    accountId: AccountId
    direction: Literal["IN", "OUT"]
    contraBrokerInfo: ContraBrokerInfo
    accountIdAtCurrentBroker: Annotated[str, text(1, 64)] | None = None
    nonDisclosedDetail: NonDisclosedDetail | None = None

    def _check_internal_broker(self) -> None:
        # [DOC]: a transfer from/to IB itself needs the account title and the account there.
        if self.contraBrokerInfo.brokerName.upper() in {"IB", "INTERNAL"}:
            if self.contraBrokerInfo.accountTitle is None:
                raise FieldProblem(
                    "contraBrokerInfo.accountTitle", "is required when brokerName is IB/INTERNAL"
                )
            if self.accountIdAtCurrentBroker is None:
                raise FieldProblem(
                    "accountIdAtCurrentBroker", "is required when brokerName is IB/INTERNAL"
                )


class Fop(_Fop):
    MAX_FIELDS = 7

    quantity: Quantity
    tradingInstrument: TradingInstrument


class Dwac(_Dwac):
    MAX_FIELDS = 9

    quantity: Quantity
    tradingInstrument: TradingInstrument


class ComplexAssetTransfer(_Complex):
    MAX_FIELDS = 8

    quantity: Quantity
    tradingInstrument: TradingInstrument

    @model_validator(mode="after")
    def _internal_broker_details(self) -> ComplexAssetTransfer:
        self._check_internal_broker()
        return self


class ExternalPositionTransfer(Instruction):
    # 2.13 spelled the field `subtype`.
    ALIASES = {"subtype": "subType"}
    MAX_FIELDS = 9

    accountId: AccountId
    type: Literal["FULL"]
    subType: Literal["ACATS", "ATON"]
    brokerId: Annotated[str, text(1, 20)]
    brokerName: Annotated[str, text(1, 256)]
    accountAtBroker: Annotated[str, text(1, 34)]
    signature: Annotated[str, text(1, 140)]
    sourceIRAType: Literal["RO", "RI", "RT", "SP", "ED", "TH", "RH", "SH"] | None = None


# --- v2: several positions per instruction ----------------------------------------------------


class PositionV2(Model):
    """One entry of `positions` (TradingInstrumentV2), with its quantity when the request puts
    quantities on the positions."""

    ALIASES = {"conId": "conid"}

    conid: Conid | None = None
    tradingInstrumentDescription: TradingInstrumentDescription | None = None
    quantity: Quantity | None = None

    @model_validator(mode="after")
    def _conid_xor_description(self) -> PositionV2:
        _one_instrument(self)
        return self


class _PositionsV2(Instruction):
    currency: Currency
    positions: Annotated[list[PositionV2], Field(min_length=1)]
    quantity: Quantity | None = None

    def _check_quantities(self) -> None:
        with_quantity = [position.quantity is not None for position in self.positions]
        if self.quantity is not None and any(with_quantity):
            index = with_quantity.index(True)
            raise FieldProblem(
                f"positions.{index}.quantity",
                "cannot be given together with the instruction's quantity; put the quantity on "
                "every position or once on the instruction",
            )
        if self.quantity is None and not all(with_quantity):
            index = with_quantity.index(False)
            raise FieldProblem(
                f"positions.{index}.quantity",
                "is required (or one quantity on the instruction for all positions)",
            )


class FopV2(_Fop, _PositionsV2):
    @model_validator(mode="after")
    def _quantities(self) -> FopV2:
        self._check_quantities()
        return self


class DwacV2(_Dwac, _PositionsV2):
    @model_validator(mode="after")
    def _quantities(self) -> DwacV2:
        self._check_quantities()
        return self


class ComplexAssetTransferV2(_Complex, _PositionsV2):
    @model_validator(mode="after")
    def _checks(self) -> ComplexAssetTransferV2:
        self._check_quantities()
        self._check_internal_broker()
        return self
