"""The sandbox's books: accounts, instructions, instruction sets, the clientInstructionId
registry, and the state machines that move instructions on the virtual clock (reference §6, §7).

One lock guards everything here; requests run concurrently around it. State machines advance
lazily (every call first runs what fell due) and from the server's ticker thread, so a final
status is reached at its virtual due time whether or not anyone is polling.

Error codes marked SIMULATOR-ONLY are invented here because IBKR publishes none for the case.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ibkr_sandbox import fixtures
from ibkr_sandbox.auth import RegisteredClient
from ibkr_sandbox.clock import VirtualClock
from ibkr_sandbox.config import DuplicateBehaviour, SandboxConfig
from ibkr_sandbox.schemas import ValidatedRequest
from worker.ibkr.calendar import EASTERN

PENDING, PENDING_VERIFICATION = "PENDING", "PENDING_VERIFICATION"
PROCESSED, REJECTED = "PROCESSED", "REJECTED"
#: Statuses after which nothing changes (a configured cancel status is final too).
NOT_FINAL = frozenset({PENDING, PENDING_VERIFICATION})

QUERY_DESCRIPTION = (
    "Query is being processed. Please poll for status 1 minutes later using FB status endpoint. "
    "No new queries will be allowed before this one is processed"
)
BUSINESS_DETAIL = (
    "Funds and Banking server cannot process your request because it contains invalid data"
)
PERMISSION_DETAIL = "Permission denied- Insufficient rights for using resource"

# SIMULATOR-ONLY error codes (IBKR publishes none for these cases).
INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
BANK_INSTRUCTION_NOT_FOUND = "BANK_INSTRUCTION_NOT_FOUND"
WITHDRAWAL_LIMIT_EXCEEDED = "WITHDRAWAL_LIMIT_EXCEEDED"
MAX_BANK_INSTRUCTIONS_EXCEEDED = "MAX_BANK_INSTRUCTIONS_EXCEEDED"
INSTRUCTION_NOT_CANCELLABLE = "INSTRUCTION_NOT_CANCELLABLE"
INSTRUCTION_CANCELLED = "INSTRUCTION_CANCELLED"
INVALID_PENDING_INSTRUCTION = "INVALID_PENDING_INSTRUCTION"
MICRO_AMOUNTS_MISMATCH = "MICRO_AMOUNTS_MISMATCH"
VERIFICATION_ATTEMPTS_EXCEEDED = "VERIFICATION_ATTEMPTS_EXCEEDED"
ACH_VERIFICATION_FAILED = "ACH_VERIFICATION_FAILED"
QUERY_THROTTLED = "QUERY_THROTTLED"
RECURRING_INSTRUCTION_NOT_FOUND = "RECURRING_INSTRUCTION_NOT_FOUND"
SIMULATOR_ONLY_CODES = frozenset(
    {
        INSUFFICIENT_FUNDS,
        BANK_INSTRUCTION_NOT_FOUND,
        WITHDRAWAL_LIMIT_EXCEEDED,
        MAX_BANK_INSTRUCTIONS_EXCEEDED,
        INSTRUCTION_NOT_CANCELLABLE,
        INSTRUCTION_CANCELLED,
        INVALID_PENDING_INSTRUCTION,
        MICRO_AMOUNTS_MISMATCH,
        VERIFICATION_ATTEMPTS_EXCEEDED,
        ACH_VERIFICATION_FAILED,
        QUERY_THROTTLED,
        RECURRING_INSTRUCTION_NOT_FOUND,
    }
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

Error = tuple[str, str]


class QueryThrottled(Exception):
    """`instructions/query` over its limit, answered 429 (no ids allocated)."""

    def __init__(self, retry_after_s: float, detail: str) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.detail = detail


@dataclass
class Instruction:
    """One instruction as the sandbox tracks it."""

    instruction_id: int
    instruction_set_id: int
    client_id: str  # "" for instructions created outside the API (seeded)
    counterparty: str
    client_instruction_id: int
    instruction_type: str
    request: dict[str, Any]
    created_at: float  # virtual POSIX seconds
    created_real: float
    http_status: int = 202
    status: str = PENDING
    ib_reference_id: int | None = None
    error: Error | None = None
    description: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    final_at: float | None = None
    final_real: float | None = None
    #: Bumped to invalidate a scheduled event (after a cancel, for instance).
    event_token: int = 0
    applied: bool = False
    bulk: bool = False
    held: bool = False
    #: ACH: failed micro-deposit confirmations so far, and the expected amounts.
    failed_attempts: int = 0
    micro: tuple[Decimal, Decimal] | None = None
    #: Cash debited at acceptance (withdrawals), given back if cancelled.
    reserved: Decimal = Decimal(0)

    @property
    def final(self) -> bool:
        """True once the status can no longer change."""
        return self.status not in NOT_FINAL

    def account_ids(self) -> tuple[str, ...]:
        """Accounts the instruction debits, credits or acts on."""
        ids = [self.request.get(name) for name in ("accountId", "sourceAccountId")]
        ids.append(self.request.get("targetAccountId"))
        return tuple(str(value) for value in ids if value)


@dataclass
class _Event:
    due: float
    seq: int
    instruction_id: int
    token: int
    action: str

    def __lt__(self, other: _Event) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


def iso(ts: float) -> str:
    """POSIX seconds as ISO 8601 UTC (`2026-11-24T15:00:00Z`)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _eastern_request_date(ts: float) -> str:
    # IBKR's instructionHistory writes requestDate in Eastern time with an hour offset
    # ("2025-11-05T00:20:06-05").
    local = datetime.fromtimestamp(ts, UTC).astimezone(EASTERN)
    offset = local.utcoffset() or timedelta(0)
    hours = int(offset.total_seconds() // 3600)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f"{hours:+03d}"


def _masked(number: str) -> str:
    return "*****" + number[-4:] if number else ""


def _non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, dict):
        return any(_non_ascii(key) or _non_ascii(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_non_ascii(item) for item in value)
    return False


class Ledger:
    """Accounts, instructions and their state machines. Every public method takes the lock."""

    def __init__(
        self,
        config: SandboxConfig,
        clock: VirtualClock,
        *,
        on_change: Callable[[Instruction], None] | None = None,
        real_time: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        #: The duplicate-POST policy in force (starts as configured; `set_duplicate_post`).
        self.duplicate_post: DuplicateBehaviour = config.duplicate_post
        self._on_change = on_change
        self._real_time = real_time
        self.accounts = fixtures.seed_accounts()
        self.bank_instructions = fixtures.seed_bank_instructions()
        self.recurring = {
            key: list(value) for key, value in fixtures.RECURRING_INSTRUCTIONS.items()
        }
        self.instructions: dict[int, Instruction] = {}
        self.sets: dict[int, list[int]] = {}
        self.set_owner: dict[int, str] = {}
        #: (client id, clientInstructionId) -> instruction ids, first transaction first.
        self.registry: dict[tuple[str, int], list[int]] = {}
        self._by_account: dict[str, list[int]] = defaultdict(list)
        self._applied: dict[tuple[str, int], int] = defaultdict(int)
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._next_instruction_id = itertools.count(43_100_001)
        self._next_set_id = itertools.count(9_101)
        self._next_reference_id = itertools.count(132_200_001)
        self._position_windows: dict[int, int] = defaultdict(int)
        self._last_query_at: dict[str, float] = {}
        self._open_query: dict[str, int] = {}
        self._seed_outside_instructions()

    # --- seeding --------------------------------------------------------------------------

    def _seed_outside_instructions(self) -> None:
        seeded = fixtures.SEEDED_PENDING_ACH
        now = self.clock.timestamp()
        iid = int(str(seeded["instructionId"]))
        account_id = str(seeded["accountId"])
        name = str(seeded["bankInstructionName"])
        instruction = Instruction(
            instruction_id=iid,
            instruction_set_id=0,
            client_id="",
            counterparty=fixtures.DEFAULT_COUNTERPARTY,
            client_instruction_id=0,
            instruction_type="ACH_INSTRUCTION",
            request={"accountId": account_id, "bankInstructionName": name, "currency": "USD"},
            created_at=now - 86_400,
            created_real=self._real_time(),
            status=PENDING_VERIFICATION,
            micro=seeded["microAmounts"],  # type: ignore[arg-type]
        )
        self.instructions[iid] = instruction
        self._by_account[account_id].append(iid)
        self.bank_instructions.append(
            fixtures.SavedBankInstruction(
                account_id=account_id,
                name=name,
                method="ACH",
                currency="USD",
                status=PENDING_VERIFICATION,
                routing_number="202012983",
                account_number="101267576983",
                instruction_id=iid,
            )
        )

    # --- scheduling -----------------------------------------------------------------------

    def _schedule(self, instruction: Instruction, due: float, action: str = "process") -> None:
        heapq.heappush(
            self._heap,
            _Event(
                due, next(self._seq), instruction.instruction_id, instruction.event_token, action
            ),
        )

    def next_due(self) -> float | None:
        """Virtual time of the next scheduled event, or None."""
        with self.lock:
            return self._heap[0].due if self._heap else None

    def run_due(self) -> int:
        """Apply every state change whose virtual time has come; returns how many ran."""
        with self.lock:
            return self._run_due(self.clock.timestamp())

    def _run_due(self, now: float) -> int:
        ran = 0
        while self._heap and self._heap[0].due <= now:
            event = heapq.heappop(self._heap)
            instruction = self.instructions.get(event.instruction_id)
            if instruction is None or instruction.event_token != event.token:
                continue
            ran += 1
            if event.action == "accept":
                instruction.held = False
                self._accept(instruction, event.due, held=True)
            elif event.action == "arrive":
                self._arrive(instruction, event.due)
            else:
                self._process(instruction, event.due)
        return ran

    # --- status changes -------------------------------------------------------------------

    def _set_status(
        self,
        instruction: Instruction,
        status: str,
        at: float,
        error: Error | None = None,
    ) -> None:
        instruction.status = status
        if error is not None:
            instruction.error = error
        if instruction.final and instruction.final_at is None:
            instruction.final_at = at
            instruction.final_real = self._real_time()
            instruction.event_token += 1
            if self._open_query.get(instruction.client_id) == instruction.instruction_id:
                del self._open_query[instruction.client_id]
        if self._on_change is not None and instruction.client_id:
            self._on_change(instruction)

    def _reference(self, instruction: Instruction) -> None:
        if instruction.ib_reference_id is None:
            instruction.ib_reference_id = next(self._next_reference_id)

    # --- submission -----------------------------------------------------------------------

    def submit(
        self,
        client: RegisteredClient,
        request: ValidatedRequest,
        *,
        hold_until: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Apply a validated POST: allocate the set and instruction ids, run the business
        checks, start the state machines. Returns (HTTP status, canonical body). Raises
        QueryThrottled for an `instructions/query` over its limit when that answers 429."""
        with self.lock:
            now = self.clock.timestamp()
            self._run_due(now)
            if request.instruction_type == "QUERY_RECENT_INSTRUCTIONS":
                self._check_query_throttle(client, now)
            set_id = next(self._next_set_id)
            self.sets[set_id] = []
            self.set_owner[set_id] = client.client_id
            items = [
                self._submit_one(client, request, item, set_id, now, hold_until)
                for item in request.instructions
            ]
            if not request.bulk:
                instruction = items[0]
                if instruction.http_status in (403, 422):
                    return instruction.http_status, self.problem_envelope(instruction)
                return instruction.http_status, self.envelope(instruction, instruction.http_status)
            rejected = any(item.http_status in (403, 422) for item in items)
            status = 207 if rejected else 202
            return status, {
                "status": status,
                "instructionSetId": set_id,
                "instructionResults": [self.item_envelope(item) for item in items],
            }

    def _check_query_throttle(self, client: RegisteredClient, now: float) -> None:
        if self.config.query_throttle_status != 429:
            return
        problem = self._query_throttle_problem(client, now)
        if problem is not None:
            retry_after, detail = problem
            raise QueryThrottled(retry_after, detail)

    def _query_throttle_problem(
        self, client: RegisteredClient, now: float
    ) -> tuple[float, str] | None:
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

    def _submit_one(
        self,
        client: RegisteredClient,
        request: ValidatedRequest,
        item: dict[str, Any],
        set_id: int,
        now: float,
        hold_until: float | None,
    ) -> Instruction:
        cid = int(item["clientInstructionId"])
        instruction = Instruction(
            instruction_id=next(self._next_instruction_id),
            instruction_set_id=set_id,
            client_id=client.client_id,
            counterparty=client.counterparty,
            client_instruction_id=cid,
            instruction_type=request.instruction_type,
            request=item,
            created_at=now,
            created_real=self._real_time(),
            bulk=request.bulk,
        )
        key = (client.client_id, cid)
        earlier = self.registry.get(key)
        self.registry.setdefault(key, []).append(instruction.instruction_id)
        self.instructions[instruction.instruction_id] = instruction
        self.sets[set_id].append(instruction.instruction_id)
        for account_id in instruction.account_ids():
            self._by_account[account_id].append(instruction.instruction_id)

        kind = request.instruction_type
        if kind in client.denied_instruction_types:
            what = _PERMISSION_CLASS.get(kind, f"ibgroup.ibcust.fbfb.instructions.{kind}")
            self._reject(
                instruction, 403, ("ERROR_PERMISSION_DENIED", f"Permission denied for {what}")
            )
            return instruction
        if earlier and self.duplicate_post == "reject":
            message = f"counterPartyTranId {cid} already exists for counterparty {client.client_id}"
            self._reject(instruction, 422, ("CORRUPT_DATA_DUBPLICATE_CP", message))
            return instruction
        if _non_ascii(item):
            self._reject(
                instruction, 422, ("UNSUPPORTED_CHARACTERS_ERROR", "Unsupported characters")
            )
            return instruction
        error = self._business_error(client, instruction, now)
        if error is not None:
            self._reject(instruction, 422, error)
            return instruction
        instruction.applied = True
        self._applied[key] += 1
        if kind == "QUERY_RECENT_INSTRUCTIONS":
            self._last_query_at[client.client_id] = now
            self._open_query[client.client_id] = instruction.instruction_id
        if hold_until is not None and hold_until > now:
            # Downtime "hold": accepted, answered 202 PENDING, worked on when the window ends.
            instruction.held = True
            instruction.http_status = 202
            self._describe_pending(instruction)
            self._schedule(instruction, hold_until, "accept")
            if self._on_change is not None:
                self._on_change(instruction)
            return instruction
        self._accept(instruction, now)
        if not instruction.final and self._on_change is not None:
            self._on_change(instruction)
        return instruction

    def _reject(self, instruction: Instruction, http_status: int, error: Error) -> None:
        instruction.http_status = http_status
        self._set_status(instruction, REJECTED, instruction.created_at, error)

    # --- business checks ------------------------------------------------------------------

    def _account_error(self, client: RegisteredClient, account_id: Any) -> Error | None:
        account = self.accounts.get(str(account_id))
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

    def _balance(self, account_id: str, currency: str) -> Decimal:
        return self.accounts[account_id].balances.get(currency, Decimal(0))

    def _credit(self, account_id: str, currency: str, amount: Decimal) -> None:
        balances = self.accounts[account_id].balances
        balances[currency] = balances.get(currency, Decimal(0)) + amount

    def _saved(self, account_id: str, name: str, method: str | None = None) -> Any:
        for saved in self.bank_instructions:
            if saved.account_id == account_id and saved.name == name:
                if method is None or saved.method == method or method in saved.method:
                    return saved
        return None

    def _active_bank_instructions(self, account_id: str) -> int:
        return sum(
            1
            for saved in self.bank_instructions
            if saved.account_id == account_id and saved.status != REJECTED
        )

    def _business_error(
        self, client: RegisteredClient, instruction: Instruction, now: float
    ) -> Error | None:
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
        account = self.accounts[account_id]
        if kind == "INTERNAL_CASH_TRANSFER":
            return self._funds_error(account_id, item["currency"], Decimal(item["amount"]))
        if kind in ("DEPOSIT", "WITHDRAWAL"):
            ira_detail = "iraDepositDetail" if kind == "DEPOSIT" else "iraWithdrawalDetail"
            if ira_detail in item and account.ira_type is None:
                return "NOT_IRA_ACCOUNT", f"Account {account_id} is not IRA"
        if kind == "DEPOSIT":
            deposit_from = item.get("bankInstructionName")
            if item["bankInstructionMethod"] == "ACH" and deposit_from:
                saved = self._saved(account_id, str(deposit_from), "ACH")
                if saved is None or saved.status != PROCESSED:
                    return self._no_bank_instruction(account_id, str(deposit_from))
            return None
        if kind == "WITHDRAWAL":
            name = item["bankInstructionName"]
            saved = self._saved(account_id, name, item["bankInstructionMethod"])
            if saved is None or saved.status != PROCESSED:
                return self._no_bank_instruction(account_id, name)
            amount, currency = Decimal(item["amount"]), str(item["currency"])
            usd = amount * fixtures.USD_RATES.get(currency, Decimal(1))
            if usd > self.config.max_withdrawal_usd:
                return (
                    WITHDRAWAL_LIMIT_EXCEEDED,
                    f"Withdrawals through the API are limited to "
                    f"{self.config.max_withdrawal_usd} USD",
                )
            return self._funds_error(account_id, currency, amount)
        if kind in ("ACH_INSTRUCTION", "PREDEFINED_DESTINATION_INSTRUCTION", "EDDA_INSTRUCTION"):
            if self._active_bank_instructions(account_id) >= self.config.max_bank_instructions:
                return (
                    MAX_BANK_INSTRUCTIONS_EXCEEDED,
                    f"Account {account_id} already has "
                    f"{self.config.max_bank_instructions} active bank instructions",
                )
            return None
        if kind == "DELETE_BANK_INSTRUCTION":
            name = item["bankInstructionName"]
            if self._saved(account_id, name, item["bankInstructionMethod"]) is None:
                return self._no_bank_instruction(account_id, name)
            return None
        if kind == "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION":
            target = self.instructions.get(int(item["pendingInstructionId"]))
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
        if kind == "COMPLEX_ASSET_TRANSFER":
            broker = item["contraBrokerInfo"]["brokerName"]
            if broker not in fixtures.COMPLEX_ASSET_BROKERS:
                return "ERROR_BROKER_NAME_NOT_FOUND", f"Broker name {broker} not found"
            return None
        if kind == "QUERY_IRA_CONTRIBUTIONS" and account.ira_type is None:
            return "NOT_IRA_ACCOUNT", f"Account {account_id} is not IRA"
        if kind == "QUERY_WITHDRAWABLE_FUNDS" and "bankInstructionName" in item:
            if self._saved(account_id, item["bankInstructionName"]) is None:
                return self._no_bank_instruction(account_id, item["bankInstructionName"])
        if kind == "QUERY_RECENT_INSTRUCTIONS" and self.config.query_throttle_status == 422:
            problem = self._query_throttle_problem(client, now)
            if problem is not None:
                return QUERY_THROTTLED, problem[1]
        return None

    def _no_bank_instruction(self, account_id: str, name: str) -> Error:
        return (
            BANK_INSTRUCTION_NOT_FOUND,
            f"No active bank instruction named {name!r} on account {account_id}",
        )

    def _funds_error(self, account_id: str, currency: str, amount: Decimal) -> Error | None:
        if self._balance(account_id, currency) < amount:
            return (
                INSUFFICIENT_FUNDS,
                f"Insufficient withdrawable cash in {account_id} ({currency})",
            )
        return None

    def _cancel_error(self, client: RegisteredClient, item: dict[str, Any]) -> Error | None:
        target_id = int(item["instructionId"])
        target = self.instructions.get(target_id)
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

    # --- acceptance: the first state ------------------------------------------------------

    def _describe_pending(self, instruction: Instruction) -> None:
        kind, item = instruction.instruction_type, instruction.request
        if kind in ("QUERY_RECENT_INSTRUCTIONS", "QUERY_IRA_CONTRIBUTIONS"):
            instruction.ib_reference_id = 0
            instruction.description = QUERY_DESCRIPTION
            if kind == "QUERY_RECENT_INSTRUCTIONS":
                instruction.extra["code"] = PENDING
            else:
                instruction.extra.update({"accountId": item["accountId"], "year": item["year"]})
        if kind == "DEPOSIT":
            details: dict[str, Any] = {
                "amount": item["amount"],
                "currency": item["currency"],
                "whenAvailable": datetime.fromtimestamp(instruction.created_at, UTC)
                .date()
                .isoformat(),
            }
            if "openBanking" in item:
                token = f"{instruction.instruction_id:x}"
                details["openBanking"] = {
                    "serviceProvider": item["openBanking"]["serviceProvider"],
                    "providerResponse": {
                        "paymentId": f"payment-sandbox-{token}",
                        "hostedlinkUrl": f"https://sandbox.invalid/link/{token}",
                        "linkToken": f"link-sandbox-{token}",
                    },
                }
            instruction.extra["depositDetails"] = details
        if kind == "OPEN_BANKING_INSTRUCTION":
            token = f"{instruction.instruction_id:x}"
            instruction.extra["details"] = {
                "type": "OPEN_BANKING",
                "currency": item["currency"],
                "serviceProvider": item["serviceProvider"],
                "providerResponse": {
                    "hostedlinkUrl": f"https://sandbox.invalid/link/{token}",
                    "linkToken": f"link-sandbox-{token}",
                },
            }

    def _batch_time(self, now: float) -> float:
        period = self.config.timings.internal_cash_batch_s
        if period <= 0:
            return now
        # The first batch boundary at least one period away: 30-60 s with the default.
        return (int((now + period) // period) + 1) * period

    def _internal_cash_due(self, instruction: Instruction, now: float) -> float:
        """When a 202 internal cash transfer is processed: after its own seeded delay when
        `internal_cash_async_delay_s` is set, else at the next batch."""
        delay = self.config.timings.internal_cash_async_delay_s
        if delay is None:
            return self._batch_time(now)
        low_s, high_s = delay
        return now + fixtures.internal_cash_delay_s(
            self.config.seed, instruction.instruction_id, low_s, high_s
        )

    def set_duplicate_post(self, policy: str) -> DuplicateBehaviour:
        """Switch the duplicate-POST policy ("reject" or "accept") for POSTs registered from
        now on; returns it."""
        if policy not in ("reject", "accept"):
            raise ValueError(f'the duplicate-POST policy is "reject" or "accept", not {policy!r}')
        with self.lock:
            self.duplicate_post = "accept" if policy == "accept" else "reject"
            return self.duplicate_post

    def _position_time(self, now: float) -> float:
        window = self.config.timings.position_window_s
        size = max(self.config.timings.position_batch_size, 1)
        index = int(now // window) + 1 if window > 0 else 0
        while self._position_windows[index] >= size:
            index += 1
        self._position_windows[index] += 1
        return index * window if window > 0 else now

    def _accept(self, instruction: Instruction, now: float, *, held: bool = False) -> None:
        """Start `instruction`'s state machine at `now`. `held`: its acceptance was deferred by
        a downtime hold, so it already answered 202 and must not become synchronous."""
        kind, item, timings = instruction.instruction_type, instruction.request, self.config.timings
        self._describe_pending(instruction)
        synchronous = 202 if held else 201
        if kind == "INTERNAL_CASH_TRANSFER":
            amount = Decimal(item["amount"])
            scheduled = self._scheduled_time(item)
            slow = self.config.internal_cash_always_async or (
                self.config.internal_cash_async_above is not None
                and amount > self.config.internal_cash_async_above
            )
            if instruction.bulk or scheduled is not None or slow or held:
                instruction.http_status = 202
                due = self._internal_cash_due(instruction, now)
                self._schedule(instruction, max(due, scheduled or due))
            else:
                instruction.http_status = 201
                self._move_cash(instruction, now)
        elif kind == "INTERNAL_POSITION_TRANSFER":
            instruction.http_status = 202
            self._schedule(instruction, self._position_time(now))
        elif kind in ("FOP", "DWAC", "COMPLEX_ASSET_TRANSFER"):
            instruction.http_status = 202
            self._schedule(instruction, now + timings.external_asset_s)
        elif kind == "EXTERNAL_POSITION_TRANSFER":
            instruction.http_status = 202
            self._schedule(instruction, now + timings.full_transfer_s)
        elif kind == "DEPOSIT":
            instruction.http_status = 202
            self._remember_recurring(instruction)
            if timings.deposit_auto_arrival_s is not None:
                self._schedule(instruction, now + timings.deposit_auto_arrival_s, "arrive")
        elif kind == "WITHDRAWAL":
            instruction.http_status = 202
            amount = Decimal(item["amount"])
            instruction.reserved = amount
            self._credit(str(item["accountId"]), str(item["currency"]), -amount)
            self._remember_recurring(instruction)
            scheduled = self._scheduled_time(item)
            if timings.withdrawal_s <= 0 and scheduled is None:
                self._reference(instruction)
                self._set_status(instruction, PROCESSED, now)
            else:
                self._schedule(instruction, max(now + timings.withdrawal_s, scheduled or now))
        elif kind == "ACH_INSTRUCTION":
            instruction.http_status = 202
            self.bank_instructions.append(
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
            delay = fixtures.ach_delay_s(
                self.config.seed, instruction.instruction_id, timings.ach_min_s, timings.ach_max_s
            )
            self._schedule(instruction, now + delay)
        elif kind == "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION":
            instruction.http_status = 202
            self._schedule(instruction, now + timings.verification_s)
        elif kind in ("DELETE_BANK_INSTRUCTION", "PREDEFINED_DESTINATION_INSTRUCTION"):
            instruction.http_status = 202
            self._schedule(instruction, now + timings.bank_instruction_s)
        elif kind == "EDDA_INSTRUCTION":
            instruction.http_status = 202
            self._schedule(instruction, now + timings.edda_s)
        elif kind in ("OPEN_BANKING_INSTRUCTION", "WITHDRAWAL_INSTRUCTION"):
            # [REF]: 202 PENDING; an open-banking link waits for the user at the provider.
            instruction.http_status = 202
            self._schedule(instruction, now + timings.bank_instruction_s)
        elif kind in ("QUERY_RECENT_INSTRUCTIONS", "QUERY_IRA_CONTRIBUTIONS"):
            instruction.http_status = 202
            self._schedule(instruction, now + timings.query_s)
        elif kind == "CANCEL_INSTRUCTION":
            instruction.http_status = 202 if instruction.bulk or held else 201
            self._cancel_target(instruction, now)
            self._set_status(instruction, PROCESSED, now)
        else:  # the synchronous queries
            instruction.http_status = synchronous
            instruction.ib_reference_id = 0
            instruction.extra.update(self._query_result(instruction))
            self._set_status(instruction, PROCESSED, now)

    @staticmethod
    def _scheduled_time(item: dict[str, Any]) -> float | None:
        when = item.get("dateTimeToOccur")
        if not isinstance(when, str):
            return None
        # IBKR honours only the date part today (reference §6.1): start of that day, UTC.
        day = datetime.fromisoformat(when).date()
        return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()

    def _remember_recurring(self, instruction: Instruction) -> None:
        detail = instruction.request.get("recurringInstructionDetail")
        if not isinstance(detail, dict):
            return
        self._reference(instruction)
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

    def _move_cash(self, instruction: Instruction, now: float) -> None:
        item = instruction.request
        amount, currency = Decimal(item["amount"]), str(item["currency"])
        source, target = str(item["sourceAccountId"]), str(item["targetAccountId"])
        error = self._funds_error(source, currency, amount)
        if error is not None:
            self._set_status(instruction, REJECTED, now, error)
            return
        self._credit(source, currency, -amount)
        self._credit(target, currency, amount)
        self._reference(instruction)
        self._set_status(instruction, PROCESSED, now)

    # --- later states ---------------------------------------------------------------------

    def _process(self, instruction: Instruction, now: float) -> None:
        if instruction.final:
            return
        kind, item = instruction.instruction_type, instruction.request
        if kind == "INTERNAL_CASH_TRANSFER":
            self._move_cash(instruction, now)
        elif kind in ("INTERNAL_POSITION_TRANSFER", "WITHDRAWAL"):
            self._reference(instruction)
            self._set_status(instruction, PROCESSED, now)
        elif kind in ("FOP", "DWAC", "COMPLEX_ASSET_TRANSFER", "EXTERNAL_POSITION_TRANSFER"):
            self._reference(instruction)
            self._set_status(instruction, PROCESSED, now)
        elif kind in ("OPEN_BANKING_INSTRUCTION", "WITHDRAWAL_INSTRUCTION"):
            self._set_status(instruction, PROCESSED, now)
        elif kind == "ACH_INSTRUCTION":
            self._finish_ach(instruction, now)
        elif kind == "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION":
            self._verify_micro_amounts(instruction, now)
        elif kind == "DELETE_BANK_INSTRUCTION":
            saved = self._saved(
                str(item["accountId"]),
                str(item["bankInstructionName"]),
                item["bankInstructionMethod"],
            )
            if saved is not None:
                self.bank_instructions.remove(saved)
            self._set_status(instruction, PROCESSED, now)
        elif kind in ("PREDEFINED_DESTINATION_INSTRUCTION", "EDDA_INSTRUCTION"):
            method = item.get("bankInstructionMethod", "eDDA")
            self.bank_instructions.append(
                fixtures.SavedBankInstruction(
                    account_id=str(item["accountId"]),
                    name=str(item["bankInstructionName"]),
                    method=str(method),
                    currency=str(item["currency"]),
                    account_number=str(
                        item.get("bankAccountNumber")
                        or item.get("financialInstitution", {}).get("clientAccountId", "")
                    ),
                    instruction_id=instruction.instruction_id,
                )
            )
            self._set_status(instruction, PROCESSED, now)
        elif kind in ("QUERY_RECENT_INSTRUCTIONS", "QUERY_IRA_CONTRIBUTIONS"):
            instruction.extra.pop("code", None)
            instruction.description = None
            instruction.extra.update(self._query_result(instruction))
            self._set_status(instruction, PROCESSED, now)

    def _arrive(self, instruction: Instruction, now: float) -> None:
        if instruction.final or instruction.instruction_type != "DEPOSIT":
            return
        item = instruction.request
        self._credit(str(item["accountId"]), str(item["currency"]), Decimal(item["amount"]))
        self._reference(instruction)
        self._set_status(instruction, PROCESSED, now)

    def _saved_for(self, instruction: Instruction) -> Any:
        for saved in self.bank_instructions:
            if saved.instruction_id == instruction.instruction_id:
                return saved
        return None

    def _finish_ach(self, instruction: Instruction, now: float) -> None:
        outcome: str = self.config.ach_outcome
        if outcome == "auto":
            outcome = fixtures.ach_outcome(str(instruction.request["bankInstructionName"]))
        saved = self._saved_for(instruction)
        if outcome == PENDING_VERIFICATION:
            instruction.micro = fixtures.micro_amounts(self.config.seed, instruction.instruction_id)
            if saved is not None:
                saved.status = PENDING_VERIFICATION
            self._set_status(instruction, PENDING_VERIFICATION, now)
        elif outcome == REJECTED:
            if saved is not None:
                self.bank_instructions.remove(saved)
            self._set_status(
                instruction,
                REJECTED,
                now,
                (
                    ACH_VERIFICATION_FAILED,
                    "Bank account ownership could not be verified; add the instruction in the "
                    "IBKR portal or use another method",
                ),
            )
        else:
            if saved is not None:
                saved.status = PROCESSED
            self._set_status(instruction, PROCESSED, now)

    def _verify_micro_amounts(self, instruction: Instruction, now: float) -> None:
        item = instruction.request
        target = self.instructions.get(int(item["pendingInstructionId"]))
        if target is None or target.status != PENDING_VERIFICATION or target.micro is None:
            self._set_status(
                instruction,
                REJECTED,
                now,
                (
                    INVALID_PENDING_INSTRUCTION,
                    "The ACH instruction is no longer awaiting verification",
                ),
            )
            return
        given = sorted((Decimal(item["creditAmount1"]), Decimal(item["creditAmount2"])))
        if given == sorted(target.micro):
            saved = self._saved_for(target)
            if saved is not None:
                saved.status = PROCESSED
            self._set_status(instruction, PROCESSED, now)
            self._set_status(target, PROCESSED, now)
            return
        target.failed_attempts += 1
        left = self.config.verification_attempts - target.failed_attempts
        self._set_status(
            instruction,
            REJECTED,
            now,
            (
                MICRO_AMOUNTS_MISMATCH,
                f"The micro-deposit amounts do not match; {max(left, 0)} attempts left",
            ),
        )
        if left <= 0:
            saved = self._saved_for(target)
            if saved is not None:
                self.bank_instructions.remove(saved)
            self._set_status(
                target,
                REJECTED,
                now,
                (VERIFICATION_ATTEMPTS_EXCEEDED, "Micro-deposit verification failed 3 times"),
            )

    def _cancel_target(self, cancel: Instruction, now: float) -> None:
        target = self.instructions[int(cancel.request["instructionId"])]
        if target.instruction_type == "WITHDRAWAL" and target.reserved:
            item = target.request
            self._credit(str(item["accountId"]), str(item["currency"]), target.reserved)
            target.reserved = Decimal(0)
        if target.instruction_type == "ACH_INSTRUCTION":
            saved = self._saved_for(target)
            if saved is not None:
                self.bank_instructions.remove(saved)
        reason = str(cancel.request.get("reason", ""))
        self._set_status(
            target,
            self.config.cancel_final_status,
            now,
            (INSTRUCTION_CANCELLED, f"Cancelled by instruction {cancel.instruction_id}: {reason}"),
        )

    # --- query results --------------------------------------------------------------------

    def _query_result(self, instruction: Instruction) -> dict[str, Any]:
        kind, item = instruction.instruction_type, instruction.request
        account_id = str(item.get("accountId", ""))
        if kind == "QUERY_WITHDRAWABLE_FUNDS":
            currency = str(item["currency"])
            amount = max(self._balance(account_id, currency), Decimal(0))
            if "bankAccountNumber" in item:
                return {
                    "accountId": account_id,
                    "currency": currency,
                    "withdrawableAmountWithoutOriginationHold": amount,
                    "withdrawableAmountWithoutOriginationHoldNoBorrow": amount,
                }
            return {
                "accountId": account_id,
                "currency": currency,
                "withdrawableAmount": amount,
                "withdrawableAmountNoBorrow": amount,
                "allowedTransferAmountToMaster": amount,
                "allowedTransferAmountToMasterNoBorrow": amount,
            }
        if kind == "QUERY_WITHDRAWABLE_CASH_EQUITY":
            currency = str(item["currency"])
            amount = max(self._balance(account_id, currency), Decimal(0))
            return {
                "accountId": account_id,
                "currency": currency,
                "withdrawableCashAmount": amount,
                "availableEquityValue": amount,
            }
        if kind == "QUERY_BANK_INSTRUCTION":
            method = str(item["bankInstructionMethod"])
            wanted = {method, "ACH"} if method in ("USACH", "CAACH") else {method}
            details = [
                {
                    "instructionName": saved.name,
                    "type": saved.type,
                    "currency": saved.currency,
                    "instructionStatus": saved.status,
                    "bankRoutingNumber": saved.routing_number,
                    "bankAccountNumber": _masked(saved.account_number),
                }
                for saved in self.bank_instructions
                if saved.account_id == account_id and saved.method in wanted
            ]
            return {
                "accountId": account_id,
                "bankInstructionMethod": method,
                "bankInstructionDetails": details,
            }
        if kind == "QUERY_RECURRING_INSTRUCTIONS":
            rows = [dict(row) for row in self.recurring.get(account_id, [])]
            for row in rows:
                if row.get("endDate") is None:
                    row.pop("endDate", None)
            return {"accountId": account_id, "recurringInstructions": rows}
        if kind == "QUERY_RECENT_RECURRING_EVENTS":
            events = dict(fixtures.RECURRING_EVENTS[int(item["ibReferenceId"])])
            limit = int(item.get("numberOfTransactions", 100))
            history = dict(events["transactionHistory"])
            history["result"] = list(history["result"])[:limit]
            events["transactionHistory"] = history
            return events
        if kind == "QUERY_IRA_CONTRIBUTIONS":
            account = self.accounts[account_id]
            return {
                "accountId": account_id,
                "year": item["year"],
                "iraType": account.ira_type,
                "contributions": fixtures.IRA_CONTRIBUTIONS.get(account_id, []),
            }
        if kind == "QUERY_RECENT_INSTRUCTIONS":
            return {"instructionHistory": self._history(instruction)}
        return {}

    def _history(self, query: Instruction) -> dict[str, Any]:
        max_days, max_rows = 30, 100_000
        detail = query.request["transactionHistory"]
        days = min(Decimal(detail["daysToGoBack"]), Decimal(max_days))
        wanted = detail.get("transactionType", "ALL")
        since = self.clock.timestamp() - float(days) * 86_400
        rows: list[dict[str, Any]] = []
        for iid in reversed(self._by_account.get(str(query.request["accountId"]), [])):
            other = self.instructions[iid]
            if other.counterparty != query.counterparty or other.created_at < since:
                continue
            if other.instruction_type.startswith("QUERY_"):
                continue
            if wanted != "ALL" and other.instruction_type != wanted:
                continue
            row: dict[str, Any] = {
                "clientInstructionId": other.client_instruction_id,
                "ibInstructionId": other.instruction_id,
                "instructionSetId": other.instruction_set_id,
                "instructionType": other.instruction_type,
                "requestDate": _eastern_request_date(other.created_at),
                "status": other.status,
            }
            if "amount" in other.request and "currency" in other.request:
                row["amount"] = other.request["amount"]
                row["currency"] = other.request["currency"]
            rows.append(row)
            if len(rows) >= max_rows:
                break
        return {
            "historyMaxDepthNumberOfDays": max_days,
            "historyMaxDepthNumberOfInstruction": max_rows,
            "result": rows,
        }

    # --- rendering ------------------------------------------------------------------------

    def result(self, instruction: Instruction) -> dict[str, Any]:
        """The canonical `instructionResult` of `instruction` as it stands."""
        body: dict[str, Any] = dict(instruction.extra)
        body.update(
            {
                "clientInstructionId": instruction.client_instruction_id,
                "instructionType": instruction.instruction_type,
                "instructionStatus": instruction.status,
                "instructionId": instruction.instruction_id,
            }
        )
        if instruction.ib_reference_id is not None:
            body["ibReferenceId"] = instruction.ib_reference_id
        if instruction.description:
            body["description"] = instruction.description
        if instruction.error is not None:
            body["error"] = {
                "errorCode": instruction.error[0],
                "errorMessage": instruction.error[1],
            }
        if instruction.final_at is not None and instruction.status in (PROCESSED, REJECTED):
            body["processedTimestamp"] = iso(instruction.final_at)
        return body

    def envelope(self, instruction: Instruction, status: int) -> dict[str, Any]:
        """`{status, instructionSetId, instructionResult}`."""
        return {
            "status": status,
            "instructionSetId": instruction.instruction_set_id,
            "instructionResult": self.result(instruction),
        }

    def problem_envelope(self, instruction: Instruction) -> dict[str, Any]:
        """The 403/422 problem body carrying the rejected instruction."""
        forbidden = instruction.http_status == 403
        return {
            "type": "/simple",
            "title": "Forbidden" if forbidden else "Business Error",
            "status": instruction.http_status,
            "detail": PERMISSION_DETAIL if forbidden else BUSINESS_DETAIL,
            "instructionSetId": instruction.instruction_set_id,
            "instructionResult": self.result(instruction),
        }

    def item_envelope(self, instruction: Instruction) -> dict[str, Any]:
        """One member of a bulk answer or of an instruction set."""
        if instruction.http_status in (403, 422):
            return self.problem_envelope(instruction)
        return self.envelope(instruction, instruction.http_status)

    # --- status reads ---------------------------------------------------------------------

    def _visible(self, client: RegisteredClient, instruction: Instruction) -> bool:
        if instruction.client_id:
            return instruction.client_id == client.client_id
        return instruction.counterparty == client.counterparty

    def by_client_instruction_id(
        self, client: RegisteredClient, client_instruction_id: int
    ) -> tuple[int, dict[str, Any]] | None:
        """(200 or 208, envelope) for a status GET by clientInstructionId, or None (404)."""
        with self.lock:
            self._run_due(self.clock.timestamp())
            ids = self.registry.get((client.client_id, client_instruction_id))
            if not ids:
                return None
            first = self.instructions[ids[0]]
            status = 208 if len(ids) > 1 else 200
            return status, self.envelope(first, status)

    def by_instruction_id(
        self, client: RegisteredClient, instruction_id: int
    ) -> tuple[int, dict[str, Any]] | None:
        """(200 or 208, envelope) for a status GET by instructionId, or None (404). A reused
        clientInstructionId answers 208 with its first transaction, as the GET by id does."""
        with self.lock:
            self._run_due(self.clock.timestamp())
            instruction = self.instructions.get(instruction_id)
            if instruction is None or not self._visible(client, instruction):
                return None
            ids = self.registry.get((instruction.client_id, instruction.client_instruction_id), [])
            if len(ids) > 1:
                return 208, self.envelope(self.instructions[ids[0]], 208)
            return 200, self.envelope(instruction, 200)

    def instruction_set(
        self, client: RegisteredClient, instruction_set_id: int
    ) -> dict[str, Any] | None:
        """The instruction-set body, or None (404)."""
        with self.lock:
            self._run_due(self.clock.timestamp())
            if self.set_owner.get(instruction_set_id) != client.client_id:
                return None
            members = [self.instructions[iid] for iid in self.sets[instruction_set_id]]
            return {
                "status": 200,
                "instructionSetId": instruction_set_id,
                "instructionResults": [self.item_envelope(member) for member in members],
            }

    # --- test hooks and inspection --------------------------------------------------------

    def find(self, client_or_instruction_id: int) -> Instruction | None:
        """An instruction by instructionId, or else by clientInstructionId (first transaction)."""
        with self.lock:
            found = self.instructions.get(client_or_instruction_id)
            if found is not None:
                return found
            for (_, cid), ids in self.registry.items():
                if cid == client_or_instruction_id:
                    return self.instructions[ids[0]]
            return None

    def deposit_arrived(self, client_or_instruction_id: int) -> dict[str, Any]:
        """The funds of a PENDING deposit arrived: credit and mark it PROCESSED."""
        with self.lock:
            self._run_due(self.clock.timestamp())
            instruction = self._find_applied(client_or_instruction_id, "DEPOSIT")
            if instruction.final:
                raise ValueError(
                    f"deposit {instruction.instruction_id} is already {instruction.status}"
                )
            if instruction.held:
                raise ValueError(f"deposit {instruction.instruction_id} is held by downtime")
            self._arrive(instruction, self.clock.timestamp())
            return self.result(instruction)

    def _find_applied(self, client_or_instruction_id: int, kind: str) -> Instruction:
        instruction = self.instructions.get(client_or_instruction_id)
        if instruction is None:
            for (_, cid), ids in self.registry.items():
                if cid == client_or_instruction_id:
                    applied = [self.instructions[i] for i in ids if self.instructions[i].applied]
                    instruction = applied[0] if applied else self.instructions[ids[0]]
                    break
        if instruction is None or instruction.instruction_type != kind:
            raise KeyError(f"no {kind} instruction with id {client_or_instruction_id}")
        return instruction

    def micro_amounts(self, instruction_id: int) -> tuple[Decimal, Decimal]:
        """The two micro-deposit credits of an ACH instruction in PENDING_VERIFICATION."""
        with self.lock:
            self._run_due(self.clock.timestamp())
            instruction = self._find_applied(instruction_id, "ACH_INSTRUCTION")
            if instruction.micro is None:
                raise ValueError(
                    f"ACH instruction {instruction.instruction_id} is {instruction.status}, "
                    "not PENDING_VERIFICATION"
                )
            return instruction.micro

    def counts(self) -> dict[int, int]:
        """clientInstructionId -> times an instruction under it was applied (accepted)."""
        with self.lock:
            merged: dict[int, int] = defaultdict(int)
            for (_, cid), count in self._applied.items():
                merged[cid] += count
            return dict(merged)

    def final_transitions(self) -> dict[int, dict[str, Any]]:
        """Per clientInstructionId (its first applied transaction): the final status and when
        it was reached, in virtual ISO time and real POSIX seconds."""
        with self.lock:
            self._run_due(self.clock.timestamp())
            out: dict[int, dict[str, Any]] = {}
            for (client_id, cid), ids in self.registry.items():
                members = [self.instructions[iid] for iid in ids]
                chosen = next((m for m in members if m.applied), members[0])
                if chosen.final_at is None or chosen.final_real is None:
                    continue
                out[cid] = {
                    "clientId": client_id,
                    "clientInstructionId": cid,
                    "instructionId": chosen.instruction_id,
                    "instructionType": chosen.instruction_type,
                    "status": chosen.status,
                    "acceptedAt": iso(chosen.created_at),
                    "acceptedAtReal": chosen.created_real,
                    "finalAt": iso(chosen.final_at),
                    "finalAtVirtual": chosen.final_at,
                    "finalAtReal": chosen.final_real,
                }
            return out

    def balances(self) -> dict[str, dict[str, Decimal]]:
        """Every account's cash per currency."""
        with self.lock:
            return {key: dict(account.balances) for key, account in self.accounts.items()}
