"""The sandbox's decisions about an instruction that arrives: refused outright (permission, a
duplicate clientInstructionId, unsupported characters), rejected on its business merits (no
such account, not enough cash, no saved bank instruction, ...), or throttled (one
`instructions/query` at a time, at most one per interval). Reads the books and records, changes
nothing but the query-throttle state. The ledger's lock guards it (see
`ibkr_sandbox.ledger.ledger`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ibkr_sandbox import fixtures
from ibkr_sandbox.auth import RegisteredClient
from ibkr_sandbox.config import DuplicateBehaviour, SandboxConfig
from ibkr_sandbox.ledger.books import Books
from ibkr_sandbox.ledger.records import (
    BANK_INSTRUCTION_NOT_FOUND,
    INSTRUCTION_NOT_CANCELLABLE,
    INSUFFICIENT_FUNDS,
    INVALID_PENDING_INSTRUCTION,
    MAX_BANK_INSTRUCTIONS_EXCEEDED,
    PENDING,
    PENDING_VERIFICATION,
    PROCESSED,
    QUERY_THROTTLED,
    RECURRING_INSTRUCTION_NOT_FOUND,
    WITHDRAWAL_LIMIT_EXCEEDED,
    Error,
    Instruction,
    QueryThrottled,
    Records,
)

#: IBKR-internal class names that appear in ERROR_PERMISSION_DENIED messages.
_PERMISSION_CLASS = {
    "INTERNAL_CASH_TRANSFER": "InternalCashTransfer Instruction",
    "INTERNAL_POSITION_TRANSFER": "ibgroup.ibcust.fbfb.instructions.IntPositionTransfer",
    "DEPOSIT": "ibgroup.ibcust.fbfb.instructions.DepositFunds",
    "WITHDRAWAL": "ibgroup.ibcust.fbfb.instructions.WithdrawFunds",
    "ACH_INSTRUCTION": "ibgroup.ibcust.fbfb.instructions.AchInstruction",
    "FOP": "ibgroup.ibcust.fbfb.instructions.FOP",
    "CANCEL_INSTRUCTION": "ibgroup.ibcust.fbfb.instructions.CancelTransaction",
}


def _non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, dict):
        return any(_non_ascii(key) or _non_ascii(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_non_ascii(item) for item in value)
    return False


def _no_bank_instruction(account_id: str, name: str) -> Error:
    return (
        BANK_INSTRUCTION_NOT_FOUND,
        f"No active bank instruction named {name!r} on account {account_id}",
    )


class QueryThrottle:
    """`instructions/query` (QUERY_RECENT_INSTRUCTIONS) per client: no new one while one is
    being processed, and at most one per `query_throttle_interval_s` of virtual time."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._last_query_at: dict[str, float] = {}
        self._open_query: dict[str, int] = {}

    def problem(self, client: RegisteredClient, now: float) -> tuple[float, str] | None:
        """(virtual seconds to wait, detail) when a query now would be over the limit."""
        open_id = self._open_query.get(client.client_id)
        if open_id is not None:
            return (
                self.config.timings.query_s,
                f"Query {open_id} is still being processed; no new query is allowed until it is",
            )
        last = self._last_query_at.get(client.client_id)
        interval = self.config.query_throttle_interval_s
        if last is not None and now - last < interval:
            return (
                interval - (now - last),
                f"At most one instructions/query per {interval:g} s is allowed",
            )
        return None

    def check_before_ids(self, client: RegisteredClient, now: float) -> None:
        """Raise QueryThrottled when a query over the limit answers 429 (before any id is
        allocated); with a 422 configured the business check rejects it instead."""
        if self.config.query_throttle_status != 429:
            return
        problem = self.problem(client, now)
        if problem is not None:
            raise QueryThrottled(*problem)

    def started(self, instruction: Instruction, now: float) -> None:
        self._last_query_at[instruction.client_id] = now
        self._open_query[instruction.client_id] = instruction.instruction_id

    def finished(self, instruction: Instruction) -> None:
        if self._open_query.get(instruction.client_id) == instruction.instruction_id:
            del self._open_query[instruction.client_id]


class Rules:
    """Whether an arriving instruction is refused, and why (an `Error`, or None)."""

    def __init__(
        self, config: SandboxConfig, books: Books, records: Records, throttle: QueryThrottle
    ) -> None:
        self.config = config
        self.books = books
        self.records = records
        self.throttle = throttle

    def refusal(
        self,
        client: RegisteredClient,
        instruction: Instruction,
        *,
        duplicate: bool,
        duplicate_post: DuplicateBehaviour,
    ) -> tuple[int, Error] | None:
        """(HTTP status, error) for an instruction refused before its business checks: a type
        the client may not use (403), a reused clientInstructionId under the "reject" policy
        or unsupported characters (422)."""
        kind, cid = instruction.instruction_type, instruction.client_instruction_id
        if kind in client.denied_instruction_types:
            what = _PERMISSION_CLASS.get(kind, f"ibgroup.ibcust.fbfb.instructions.{kind}")
            return 403, ("ERROR_PERMISSION_DENIED", f"Permission denied for {what}")
        if duplicate and duplicate_post == "reject":
            message = f"counterPartyTranId {cid} already exists for counterparty {client.client_id}"
            return 422, ("CORRUPT_DATA_DUBPLICATE_CP", message)
        if _non_ascii(instruction.request):
            return 422, ("UNSUPPORTED_CHARACTERS_ERROR", "Unsupported characters")
        return None

    def business_error(
        self, client: RegisteredClient, instruction: Instruction, now: float
    ) -> Error | None:
        """The 422 business error of an instruction, or None when it is accepted."""
        item, kind = instruction.request, instruction.instruction_type
        if kind == "CANCEL_INSTRUCTION":
            return self._cancel_error(client, item)
        if kind == "QUERY_RECENT_RECURRING_EVENTS":
            if int(item["ibReferenceId"]) not in fixtures.RECURRING_EVENTS:
                return (
                    RECURRING_INSTRUCTION_NOT_FOUND,
                    f"No recurring instruction {item['ibReferenceId']}",
                )
            return None
        for name in ("sourceAccountId", "targetAccountId", "accountId"):
            if name in item:
                error = self._account_error(client, item[name])
                if error is not None:
                    return error
        account_id = str(item.get("accountId") or item.get("sourceAccountId"))
        if kind == "INTERNAL_CASH_TRANSFER":
            return self.funds_error(account_id, item["currency"], Decimal(item["amount"]))
        if kind in ("DEPOSIT", "WITHDRAWAL"):
            return self._deposit_or_withdrawal_error(kind, item, account_id)
        if kind in ("ACH_INSTRUCTION", "PREDEFINED_DESTINATION_INSTRUCTION", "EDDA_INSTRUCTION"):
            if self.books.active_bank_instructions(account_id) >= self.config.max_bank_instructions:
                return (
                    MAX_BANK_INSTRUCTIONS_EXCEEDED,
                    f"Account {account_id} already has "
                    f"{self.config.max_bank_instructions} active bank instructions",
                )
            return None
        if kind == "DELETE_BANK_INSTRUCTION":
            name = item["bankInstructionName"]
            if self.books.saved(account_id, name, item["bankInstructionMethod"]) is None:
                return _no_bank_instruction(account_id, name)
            return None
        if kind == "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION":
            return self._verification_error(client, item, account_id)
        if kind == "COMPLEX_ASSET_TRANSFER":
            broker = item["contraBrokerInfo"]["brokerName"]
            if broker not in fixtures.COMPLEX_ASSET_BROKERS:
                return "ERROR_BROKER_NAME_NOT_FOUND", f"Broker name {broker} not found"
            return None
        return self._query_error(client, kind, item, account_id, now)

    def funds_error(self, account_id: str, currency: str, amount: Decimal) -> Error | None:
        """INSUFFICIENT_FUNDS when the account's cash in `currency` is below `amount`."""
        if self.books.balance(account_id, currency) < amount:
            return (
                INSUFFICIENT_FUNDS,
                f"Insufficient withdrawable cash in {account_id} ({currency})",
            )
        return None

    def _account_error(self, client: RegisteredClient, account_id: Any) -> Error | None:
        account = self.books.accounts.get(str(account_id))
        if account is None:
            return "CORRUPT_DATA_INVALID_ACCT", f"Account {account_id} does not exist"
        if account.counterparty != client.counterparty:
            return (
                "ERROR_ACCOUNT_CP_NOT_RELATED",
                f"Account {account_id} not related to counterparty {client.client_id}",
            )
        if not account.is_open:
            return "NOT_OPEN_ACCOUNT", f"Account {account_id} is not open"
        return None

    def _deposit_or_withdrawal_error(
        self, kind: str, item: dict[str, Any], account_id: str
    ) -> Error | None:
        ira_detail = "iraDepositDetail" if kind == "DEPOSIT" else "iraWithdrawalDetail"
        if ira_detail in item and self.books.accounts[account_id].ira_type is None:
            return "NOT_IRA_ACCOUNT", f"Account {account_id} is not IRA"
        if kind == "DEPOSIT":
            deposit_from = item.get("bankInstructionName")
            if item["bankInstructionMethod"] == "ACH" and deposit_from:
                saved = self.books.saved(account_id, str(deposit_from), "ACH")
                if saved is None or saved.status != PROCESSED:
                    return _no_bank_instruction(account_id, str(deposit_from))
            return None
        name = item["bankInstructionName"]
        saved = self.books.saved(account_id, name, item["bankInstructionMethod"])
        if saved is None or saved.status != PROCESSED:
            return _no_bank_instruction(account_id, name)
        amount, currency = Decimal(item["amount"]), str(item["currency"])
        usd = amount * fixtures.USD_RATES.get(currency, Decimal(1))
        if usd > self.config.max_withdrawal_usd:
            return (
                WITHDRAWAL_LIMIT_EXCEEDED,
                f"Withdrawals through the API are limited to {self.config.max_withdrawal_usd} USD",
            )
        return self.funds_error(account_id, currency, amount)

    def _verification_error(
        self, client: RegisteredClient, item: dict[str, Any], account_id: str
    ) -> Error | None:
        target = self.records.instructions.get(int(item["pendingInstructionId"]))
        if (
            target is None
            or target.instruction_type != "ACH_INSTRUCTION"
            or target.counterparty != client.counterparty
            or target.request.get("accountId") != account_id
            or target.status != PENDING_VERIFICATION
        ):
            return (
                INVALID_PENDING_INSTRUCTION,
                f"Instruction {item['pendingInstructionId']} is not an ACH instruction of "
                f"{account_id} awaiting micro-deposit verification",
            )
        return None

    def _query_error(
        self, client: RegisteredClient, kind: str, item: dict[str, Any], account_id: str, now: float
    ) -> Error | None:
        if kind == "QUERY_IRA_CONTRIBUTIONS" and self.books.accounts[account_id].ira_type is None:
            return "NOT_IRA_ACCOUNT", f"Account {account_id} is not IRA"
        if kind == "QUERY_WITHDRAWABLE_FUNDS" and "bankInstructionName" in item:
            if self.books.saved(account_id, item["bankInstructionName"]) is None:
                return _no_bank_instruction(account_id, item["bankInstructionName"])
        if kind == "QUERY_RECENT_INSTRUCTIONS" and self.config.query_throttle_status == 422:
            problem = self.throttle.problem(client, now)
            if problem is not None:
                return QUERY_THROTTLED, problem[1]
        return None

    def _cancel_error(self, client: RegisteredClient, item: dict[str, Any]) -> Error | None:
        target_id = int(item["instructionId"])
        target = self.records.instructions.get(target_id)
        if target is None or target.client_id != client.client_id:
            return (
                "ERROR_INSTR_ID_AND_CP_NOT_RELATED",
                f"Instruction Id: {target_id} not related to counterparty {client.client_id}",
            )
        if target.status != PENDING:
            return (
                INSTRUCTION_NOT_CANCELLABLE,
                f"Instruction {target_id} is {target.status}; only PENDING instructions can be "
                "cancelled",
            )
        return None
