"""The sandbox's books: accounts and their cash per currency, the bank instructions saved on
them, and the recurring instructions. Plain data and bookkeeping with no decisions in it: the
rules decide, the lifecycle moves money through here. The ledger's lock guards it (see
`ibkr_sandbox.ledger.ledger`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ibkr_sandbox import fixtures
from ibkr_sandbox.ledger.records import PENDING, REJECTED, Instruction


class Books:
    """Accounts, saved bank instructions and recurring instructions, seeded from the
    fixtures."""

    def __init__(self) -> None:
        self.accounts = fixtures.seed_accounts()
        self.bank_instructions = fixtures.seed_bank_instructions()
        self.recurring = {
            key: list(value) for key, value in fixtures.RECURRING_INSTRUCTIONS.items()
        }

    # --- cash -----------------------------------------------------------------------------

    def balance(self, account_id: str, currency: str) -> Decimal:
        return self.accounts[account_id].balances.get(currency, Decimal(0))

    def credit(self, account_id: str, currency: str, amount: Decimal) -> None:
        """Add `amount` (negative: a debit) to an account's cash in `currency`."""
        balances = self.accounts[account_id].balances
        balances[currency] = balances.get(currency, Decimal(0)) + amount

    def transfer(self, source: str, target: str, currency: str, amount: Decimal) -> None:
        self.credit(source, currency, -amount)
        self.credit(target, currency, amount)

    def balances(self) -> dict[str, dict[str, Decimal]]:
        """Every account's cash per currency (a copy)."""
        return {key: dict(account.balances) for key, account in self.accounts.items()}

    # --- saved bank instructions ----------------------------------------------------------

    def saved(
        self, account_id: str, name: str, method: str | None = None
    ) -> fixtures.SavedBankInstruction | None:
        """The bank instruction `name` saved on an account (of `method`, when given: an exact
        method or one it is part of, "ACH" in "USACH")."""
        for saved in self.bank_instructions:
            if saved.account_id == account_id and saved.name == name:
                if method is None or saved.method == method or method in saved.method:
                    return saved
        return None

    def saved_by(self, instruction: Instruction) -> fixtures.SavedBankInstruction | None:
        """The bank instruction `instruction` (an ACH instruction) created, if still saved."""
        for saved in self.bank_instructions:
            if saved.instruction_id == instruction.instruction_id:
                return saved
        return None

    def active_bank_instructions(self, account_id: str) -> int:
        return sum(
            1
            for saved in self.bank_instructions
            if saved.account_id == account_id and saved.status != REJECTED
        )

    def save(self, saved: fixtures.SavedBankInstruction) -> None:
        self.bank_instructions.append(saved)

    def save_ach(self, instruction: Instruction) -> None:
        """Save the bank instruction an ACH instruction creates, PENDING its verification."""
        item = instruction.request
        self.save(
            fixtures.SavedBankInstruction(
                account_id=str(item["accountId"]),
                name=str(item["bankInstructionName"]),
                method="ACH",
                currency=str(item["currency"]),
                status=PENDING,
                routing_number=str(item["clientAccountInfo"]["bankRoutingNumber"]),
                account_number=str(item["clientAccountInfo"]["bankAccountNumber"]),
                instruction_id=instruction.instruction_id,
            )
        )

    def save_destination(self, instruction: Instruction) -> None:
        """Save the bank instruction a predefined-destination or eDDA instruction creates."""
        item = instruction.request
        self.save(
            fixtures.SavedBankInstruction(
                account_id=str(item["accountId"]),
                name=str(item["bankInstructionName"]),
                method=str(item.get("bankInstructionMethod", "eDDA")),
                currency=str(item["currency"]),
                account_number=str(
                    item.get("bankAccountNumber")
                    or item.get("financialInstitution", {}).get("clientAccountId", "")
                ),
                instruction_id=instruction.instruction_id,
            )
        )

    def forget(self, saved: fixtures.SavedBankInstruction | None) -> None:
        """Remove a saved bank instruction (nothing when None)."""
        if saved is not None:
            self.bank_instructions.remove(saved)

    def set_saved_status(self, saved: fixtures.SavedBankInstruction | None, status: str) -> None:
        if saved is not None:
            saved.status = status

    # --- recurring instructions -----------------------------------------------------------

    def remember_recurring(self, instruction: Instruction) -> None:
        """Record a deposit or withdrawal that carries a recurring schedule (it must have its
        ibReferenceId already)."""
        detail = instruction.request.get("recurringInstructionDetail")
        if not isinstance(detail, dict):
            return
        item = instruction.request
        self.recurring.setdefault(str(item["accountId"]), []).append(
            {
                "requestId": instruction.ib_reference_id,
                "bankInstructionName": detail["instructionName"],
                "transactionType": instruction.instruction_type,
                "bankInstructionMethod": item.get("bankInstructionMethod"),
                "amount": item["amount"],
                "currency": item["currency"],
                "frequency": detail["frequency"],
                "startDate": f"{detail['startDate']} 00:00:00.0",
                "endDate": f"{detail['endDate']} 00:00:00.0" if "endDate" in detail else None,
            }
        )

    def recurring_of(self, account_id: str) -> list[dict[str, Any]]:
        """An account's recurring instructions as IBKR lists them (no `endDate` when open)."""
        rows = [dict(row) for row in self.recurring.get(account_id, [])]
        for row in rows:
            if row.get("endDate") is None:
                row.pop("endDate", None)
        return rows
