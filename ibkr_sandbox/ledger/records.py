"""The instructions the sandbox knows: what one is (`Instruction`), the statuses and error codes
it can carry, and `Records`, where they are kept and found (by instructionId, by
(client, clientInstructionId) with every transaction a reused id registered, by set and by
account). Plain data: the ledger's lock guards it (see `ibkr_sandbox.ledger.ledger`).

Error codes marked SIMULATOR-ONLY are invented here because IBKR publishes none for the case.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ibkr_sandbox.auth import RegisteredClient

PENDING, PENDING_VERIFICATION = "PENDING", "PENDING_VERIFICATION"
PROCESSED, REJECTED = "PROCESSED", "REJECTED"
#: Statuses after which nothing changes (a configured cancel status is final too).
NOT_FINAL = frozenset({PENDING, PENDING_VERIFICATION})

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

#: (errorCode, errorMessage).
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
    #: Accepted during a downtime window and answered 202 PENDING; worked on when it ends.
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

    @property
    def rejected_at_once(self) -> bool:
        """True when it was refused on arrival (403 or 422, a problem answer)."""
        return self.http_status in (403, 422)

    def account_ids(self) -> tuple[str, ...]:
        """Accounts the instruction debits, credits or acts on."""
        ids = [self.request.get(name) for name in ("accountId", "sourceAccountId")]
        ids.append(self.request.get("targetAccountId"))
        return tuple(str(value) for value in ids if value)


class Records:
    """Every instruction and instruction set, and the clientInstructionId registry: which
    transactions each (client, clientInstructionId) registered, first first, and how many of
    them were applied (a duplicate accepted as a second transaction counts twice)."""

    def __init__(self) -> None:
        self.instructions: dict[int, Instruction] = {}
        self.sets: dict[int, list[int]] = {}
        self.set_owner: dict[int, str] = {}
        #: (client id, clientInstructionId) -> instruction ids, first transaction first.
        self.registry: dict[tuple[str, int], list[int]] = {}
        self.by_account: dict[str, list[int]] = defaultdict(list)
        self.applied: dict[tuple[str, int], int] = defaultdict(int)
        self._next_instruction_id = itertools.count(43_100_001)
        self._next_set_id = itertools.count(9_101)
        self._next_reference_id = itertools.count(132_200_001)

    def new_set(self, client_id: str) -> int:
        """Allocate an instruction set owned by `client_id`; returns its id."""
        set_id = next(self._next_set_id)
        self.sets[set_id] = []
        self.set_owner[set_id] = client_id
        return set_id

    def next_instruction_id(self) -> int:
        return next(self._next_instruction_id)

    def add(self, instruction: Instruction) -> bool:
        """Keep `instruction` (in its set, under its clientInstructionId and its accounts);
        True when its (client, clientInstructionId) had registered a transaction before."""
        key = (instruction.client_id, instruction.client_instruction_id)
        earlier = bool(self.registry.get(key))
        iid = instruction.instruction_id
        self.registry.setdefault(key, []).append(iid)
        self.instructions[iid] = instruction
        self.sets[instruction.instruction_set_id].append(iid)
        for account_id in instruction.account_ids():
            self.by_account[account_id].append(iid)
        return earlier

    def add_outside(self, instruction: Instruction, account_id: str) -> None:
        """Keep an instruction created outside the API (no set, no clientInstructionId)."""
        self.instructions[instruction.instruction_id] = instruction
        self.by_account[account_id].append(instruction.instruction_id)

    def mark_applied(self, instruction: Instruction) -> None:
        instruction.applied = True
        self.applied[(instruction.client_id, instruction.client_instruction_id)] += 1

    def give_reference(self, instruction: Instruction) -> None:
        """Give `instruction` its ibReferenceId (once)."""
        if instruction.ib_reference_id is None:
            instruction.ib_reference_id = next(self._next_reference_id)

    def transactions(self, client_id: str, client_instruction_id: int) -> list[Instruction]:
        """The transactions registered under a clientInstructionId, first first."""
        ids = self.registry.get((client_id, client_instruction_id), [])
        return [self.instructions[iid] for iid in ids]

    @staticmethod
    def visible(client: RegisteredClient, instruction: Instruction) -> bool:
        """Whether `client` may see `instruction` (its own, or a seeded one of its
        counterparty)."""
        if instruction.client_id:
            return instruction.client_id == client.client_id
        return instruction.counterparty == client.counterparty

    def find(
        self, client_or_instruction_id: int, *, prefer_applied: bool = False
    ) -> Instruction | None:
        """An instruction by instructionId, or else by clientInstructionId (its first
        transaction; with `prefer_applied`, its first applied one when there is one)."""
        found = self.instructions.get(client_or_instruction_id)
        if found is not None:
            return found
        for (_, cid), ids in self.registry.items():
            if cid == client_or_instruction_id:
                members = [self.instructions[iid] for iid in ids]
                if prefer_applied:
                    return next((m for m in members if m.applied), members[0])
                return members[0]
        return None

    def counts(self) -> dict[int, int]:
        """clientInstructionId -> times an instruction under it was applied (accepted)."""
        merged: dict[int, int] = defaultdict(int)
        for (_, cid), count in self.applied.items():
            merged[cid] += count
        return dict(merged)
