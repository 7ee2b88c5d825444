"""Request models, one per instructionType (and per v2 form), built from IBKR's documents.

`INSTRUCTION_MODELS` maps each request instructionType to the model of its instruction object
(`/gw/api/v1`); `V2_INSTRUCTION_MODELS` the types that also have a v2 multi-position form
(`/gw/api/v2/external-asset-transfers`). `worker.ibkr.requests` validates with them.
"""

from __future__ import annotations

from worker.ibkr.instructions.banking import (
    AchInstruction,
    CancelInstruction,
    DeleteBankInstruction,
    EddaInstruction,
    OpenBankingInstruction,
    PredefinedDestinationInstruction,
    QueryBankInstruction,
    QueryRecentInstructions,
    QueryRecentRecurringEvents,
    QueryRecurringInstructions,
    TraditionalBankInstructionVerification,
    WithdrawalInstruction,
)
from worker.ibkr.instructions.base import FieldProblem, Instruction, Model
from worker.ibkr.instructions.cash import (
    Deposit,
    InternalCashTransfer,
    QueryIraContributions,
    QueryWithdrawableCashEquity,
    QueryWithdrawableFunds,
    Withdrawal,
)
from worker.ibkr.instructions.positions import (
    ComplexAssetTransfer,
    ComplexAssetTransferV2,
    Dwac,
    DwacV2,
    ExternalPositionTransfer,
    Fop,
    FopV2,
    InternalPositionTransfer,
)

INSTRUCTION_MODELS: dict[str, type[Instruction]] = {
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

V2_INSTRUCTION_MODELS: dict[str, type[Instruction]] = {
    "FOP": FopV2,
    "DWAC": DwacV2,
    "COMPLEX_ASSET_TRANSFER": ComplexAssetTransferV2,
}

__all__ = ["INSTRUCTION_MODELS", "V2_INSTRUCTION_MODELS", "FieldProblem", "Instruction", "Model"]
