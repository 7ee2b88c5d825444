"""`Ledger`: the one door to the sandbox's books (reference §6, §7). A POST registers here
(`submit`), status reads and the admin operations read here, and the ticker applies what fell
due here.

The lock: `Ledger.lock` (re-entrant) guards everything below it: the books (`Books`), the
instructions and the clientInstructionId registry (`Records`), the query throttle and the
scheduled events (`Lifecycle`). Every public method of `Ledger` takes it for its whole run, and
nothing else touches those parts; `rules`, `lifecycle` and `rendering` take no lock of their
own. The status-change listener is called under it. State machines advance lazily (every call
first runs what fell due) and from the server's ticker, so a final status is reached at its
virtual due time whether or not anyone is polling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ibkr_sandbox import fixtures
from ibkr_sandbox.auth import RegisteredClient
from ibkr_sandbox.clock import VirtualClock
from ibkr_sandbox.config import DuplicateBehaviour, SandboxConfig
from ibkr_sandbox.ledger import rendering
from ibkr_sandbox.ledger.books import Books
from ibkr_sandbox.ledger.lifecycle import Lifecycle
from ibkr_sandbox.ledger.records import PENDING_VERIFICATION, Instruction, Records
from ibkr_sandbox.ledger.rendering import iso
from ibkr_sandbox.ledger.rules import QueryThrottle, Rules
from ibkr_sandbox.schemas import ValidatedRequest


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
        self._real_time = real_time
        self.books = Books()
        self.records = Records()
        self._throttle = QueryThrottle(config)
        self._rules = Rules(config, self.books, self.records, self._throttle)
        self._lifecycle = Lifecycle(
            config,
            clock,
            self.books,
            self.records,
            self._rules,
            self._throttle,
            on_change=on_change,
            real_time=real_time,
        )
        self._seed_outside_instructions()

    def _seed_outside_instructions(self) -> None:
        seeded = fixtures.SEEDED_PENDING_ACH
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
            created_at=self.clock.timestamp() - 86_400,
            created_real=self._real_time(),
            status=PENDING_VERIFICATION,
            micro=seeded["microAmounts"],  # type: ignore[arg-type]
        )
        self.records.add_outside(instruction, account_id)
        self.books.save(
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

    # --- time -----------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """Virtual time of the next scheduled event, or None."""
        with self.lock:
            return self._lifecycle.next_due()

    def run_due(self) -> int:
        """Apply every state change whose virtual time has come; returns how many ran."""
        with self.lock:
            return self._lifecycle.run_due(self.clock.timestamp())

    def _now(self) -> float:
        """Virtual now, after applying what fell due (call under the lock)."""
        now = self.clock.timestamp()
        self._lifecycle.run_due(now)
        return now

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
            now = self._now()
            if request.instruction_type == "QUERY_RECENT_INSTRUCTIONS":
                self._throttle.check_before_ids(client, now)
            set_id = self.records.new_set(client.client_id)
            items = [
                self._submit_one(client, request, item, set_id, now, hold_until)
                for item in request.instructions
            ]
            if not request.bulk:
                instruction = items[0]
                if instruction.rejected_at_once:
                    return instruction.http_status, rendering.problem_envelope(instruction)
                return instruction.http_status, rendering.envelope(
                    instruction, instruction.http_status
                )
            status = 207 if any(item.rejected_at_once for item in items) else 202
            return status, rendering.bulk_body(status, set_id, items)

    def _submit_one(
        self,
        client: RegisteredClient,
        request: ValidatedRequest,
        item: dict[str, Any],
        set_id: int,
        now: float,
        hold_until: float | None,
    ) -> Instruction:
        instruction = Instruction(
            instruction_id=self.records.next_instruction_id(),
            instruction_set_id=set_id,
            client_id=client.client_id,
            counterparty=client.counterparty,
            client_instruction_id=int(item["clientInstructionId"]),
            instruction_type=request.instruction_type,
            request=item,
            created_at=now,
            created_real=self._real_time(),
            bulk=request.bulk,
        )
        duplicate = self.records.add(instruction)
        refused = self._rules.refusal(
            client, instruction, duplicate=duplicate, duplicate_post=self.duplicate_post
        )
        if refused is not None:
            self._lifecycle.reject(instruction, *refused)
            return instruction
        error = self._rules.business_error(client, instruction, now)
        if error is not None:
            self._lifecycle.reject(instruction, 422, error)
            return instruction
        self.records.mark_applied(instruction)
        if request.instruction_type == "QUERY_RECENT_INSTRUCTIONS":
            self._throttle.started(instruction, now)
        if hold_until is not None and hold_until > now:
            self._lifecycle.hold(instruction, hold_until)
        else:
            self._lifecycle.accept(instruction, now)
        return instruction

    def set_duplicate_post(self, policy: str) -> DuplicateBehaviour:
        """Switch the duplicate-POST policy ("reject" or "accept") for POSTs registered from
        now on; returns it."""
        if policy not in ("reject", "accept"):
            raise ValueError(f'the duplicate-POST policy is "reject" or "accept", not {policy!r}')
        with self.lock:
            self.duplicate_post = "accept" if policy == "accept" else "reject"
            return self.duplicate_post

    # --- status reads ---------------------------------------------------------------------

    def by_client_instruction_id(
        self, client: RegisteredClient, client_instruction_id: int
    ) -> tuple[int, dict[str, Any]] | None:
        """(200 or 208, envelope) for a status GET by clientInstructionId, or None (404)."""
        with self.lock:
            self._now()
            members = self.records.transactions(client.client_id, client_instruction_id)
            if not members:
                return None
            status = 208 if len(members) > 1 else 200
            return status, rendering.envelope(members[0], status)

    def by_instruction_id(
        self, client: RegisteredClient, instruction_id: int
    ) -> tuple[int, dict[str, Any]] | None:
        """(200 or 208, envelope) for a status GET by instructionId, or None (404). A reused
        clientInstructionId answers 208 with its first transaction, as the GET by id does."""
        with self.lock:
            self._now()
            instruction = self.records.instructions.get(instruction_id)
            if instruction is None or not self.records.visible(client, instruction):
                return None
            members = self.records.transactions(
                instruction.client_id, instruction.client_instruction_id
            )
            if len(members) > 1:
                return 208, rendering.envelope(members[0], 208)
            return 200, rendering.envelope(instruction, 200)

    def instruction_set(
        self, client: RegisteredClient, instruction_set_id: int
    ) -> dict[str, Any] | None:
        """The instruction-set body, or None (404)."""
        with self.lock:
            self._now()
            if self.records.set_owner.get(instruction_set_id) != client.client_id:
                return None
            members = [self.records.instructions[i] for i in self.records.sets[instruction_set_id]]
            return rendering.bulk_body(200, instruction_set_id, members)

    @staticmethod
    def result(instruction: Instruction) -> dict[str, Any]:
        """The canonical `instructionResult` of `instruction` (call under the lock)."""
        return rendering.result(instruction)

    # --- test hooks and inspection --------------------------------------------------------

    def find(self, client_or_instruction_id: int) -> Instruction | None:
        """An instruction by instructionId, or else by clientInstructionId (first transaction)."""
        with self.lock:
            return self.records.find(client_or_instruction_id)

    def result_of(self, client_or_instruction_id: int) -> dict[str, Any]:
        """The current instructionResult of an instruction (by either id); KeyError if none."""
        with self.lock:
            found = self.records.find(client_or_instruction_id)
            if found is None:
                raise KeyError(f"no instruction with id {client_or_instruction_id}")
            return rendering.result(found)

    def deposit_arrived(self, client_or_instruction_id: int) -> dict[str, Any]:
        """The funds of a PENDING deposit arrived: credit and mark it PROCESSED."""
        with self.lock:
            self._now()
            instruction = self._find_applied(client_or_instruction_id, "DEPOSIT")
            if instruction.final:
                raise ValueError(
                    f"deposit {instruction.instruction_id} is already {instruction.status}"
                )
            if instruction.held:
                raise ValueError(f"deposit {instruction.instruction_id} is held by downtime")
            self._lifecycle.arrive(instruction, self.clock.timestamp())
            return rendering.result(instruction)

    def _find_applied(self, client_or_instruction_id: int, kind: str) -> Instruction:
        instruction = self.records.find(client_or_instruction_id, prefer_applied=True)
        if instruction is None or instruction.instruction_type != kind:
            raise KeyError(f"no {kind} instruction with id {client_or_instruction_id}")
        return instruction

    def micro_amounts(self, instruction_id: int) -> tuple[Decimal, Decimal]:
        """The two micro-deposit credits of an ACH instruction in PENDING_VERIFICATION."""
        with self.lock:
            self._now()
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
            return self.records.counts()

    def final_transitions(self) -> dict[int, dict[str, Any]]:
        """Per clientInstructionId (its first applied transaction): the final status and when
        it was reached, in virtual ISO time and real POSIX seconds."""
        with self.lock:
            self._now()
            out: dict[int, dict[str, Any]] = {}
            for (client_id, cid), ids in self.records.registry.items():
                members = [self.records.instructions[iid] for iid in ids]
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
            return self.books.balances()
