"""How an accepted instruction moves through its statuses on the virtual clock (reference §7):
what acceptance answers (201 done at once, or 202 PENDING and an event scheduled), the events
that later process it (batches of internal cash, position windows, ACH verification, deposits
arriving, micro-deposit checks, cancels), downtime holds (accepted now, worked on when the
window ends), and the final transition itself. The ledger's lock guards it (see
`ibkr_sandbox.ledger.ledger`)."""

from __future__ import annotations

import heapq
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ibkr_sandbox import fixtures
from ibkr_sandbox.clock import VirtualClock
from ibkr_sandbox.config import SandboxConfig
from ibkr_sandbox.ledger import rendering
from ibkr_sandbox.ledger.books import Books
from ibkr_sandbox.ledger.records import (
    ACH_VERIFICATION_FAILED,
    INSTRUCTION_CANCELLED,
    INVALID_PENDING_INSTRUCTION,
    MICRO_AMOUNTS_MISMATCH,
    PENDING_VERIFICATION,
    PROCESSED,
    REJECTED,
    VERIFICATION_ATTEMPTS_EXCEEDED,
    Error,
    Instruction,
    Records,
)
from ibkr_sandbox.ledger.rules import QueryThrottle, Rules

#: Types processed some fixed (virtual) time after acceptance, and the `Timings` field naming it.
_FIXED_DELAY = {
    "FOP": "external_asset_s",
    "DWAC": "external_asset_s",
    "COMPLEX_ASSET_TRANSFER": "external_asset_s",
    "EXTERNAL_POSITION_TRANSFER": "full_transfer_s",
    "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION": "verification_s",
    "DELETE_BANK_INSTRUCTION": "bank_instruction_s",
    "PREDEFINED_DESTINATION_INSTRUCTION": "bank_instruction_s",
    "EDDA_INSTRUCTION": "edda_s",
    # [REF]: 202 PENDING; an open-banking link waits for the user at the provider.
    "OPEN_BANKING_INSTRUCTION": "bank_instruction_s",
    "WITHDRAWAL_INSTRUCTION": "bank_instruction_s",
    "QUERY_RECENT_INSTRUCTIONS": "query_s",
    "QUERY_IRA_CONTRIBUTIONS": "query_s",
}
#: Types whose scheduled event just gives them an ibReferenceId and PROCESSED.
_PROCESSED_WITH_REFERENCE = frozenset(
    {
        "INTERNAL_POSITION_TRANSFER",
        "WITHDRAWAL",
        "FOP",
        "DWAC",
        "COMPLEX_ASSET_TRANSFER",
        "EXTERNAL_POSITION_TRANSFER",
    }
)


@dataclass
class _Event:
    due: float
    seq: int
    instruction_id: int
    token: int
    action: str

    def __lt__(self, other: _Event) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


def _scheduled_time(item: dict[str, Any]) -> float | None:
    when = item.get("dateTimeToOccur")
    if not isinstance(when, str):
        return None
    # IBKR honours only the date part today (reference §6.1): start of that day, UTC.
    day = datetime.fromisoformat(when).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


class Lifecycle:
    """The state machines: acceptance, the scheduled events, status changes."""

    def __init__(
        self,
        config: SandboxConfig,
        clock: VirtualClock,
        books: Books,
        records: Records,
        rules: Rules,
        throttle: QueryThrottle,
        *,
        on_change: Callable[[Instruction], None] | None = None,
        real_time: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.books = books
        self.records = records
        self.rules = rules
        self.throttle = throttle
        self._on_change = on_change
        self._real_time = real_time
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._position_windows: dict[int, int] = defaultdict(int)

    # --- scheduling -----------------------------------------------------------------------

    def schedule(self, instruction: Instruction, due: float, action: str = "process") -> None:
        event = _Event(
            due, next(self._seq), instruction.instruction_id, instruction.event_token, action
        )
        heapq.heappush(self._heap, event)

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def run_due(self, now: float) -> int:
        """Apply every event due by `now` (virtual); returns how many ran."""
        ran = 0
        while self._heap and self._heap[0].due <= now:
            event = heapq.heappop(self._heap)
            instruction = self.records.instructions.get(event.instruction_id)
            if instruction is None or instruction.event_token != event.token:
                continue
            ran += 1
            if event.action == "accept":
                instruction.held = False
                self.accept(instruction, event.due, held=True)
            elif event.action == "arrive":
                self.arrive(instruction, event.due)
            else:
                self._process(instruction, event.due)
        return ran

    # --- status changes -------------------------------------------------------------------

    def set_status(
        self, instruction: Instruction, status: str, at: float, error: Error | None = None
    ) -> None:
        instruction.status = status
        if error is not None:
            instruction.error = error
        if instruction.final and instruction.final_at is None:
            instruction.final_at = at
            instruction.final_real = self._real_time()
            instruction.event_token += 1
            self.throttle.finished(instruction)
        self.announce(instruction)

    def announce(self, instruction: Instruction) -> None:
        """Tell the status-change listener (API-created instructions only)."""
        if self._on_change is not None and instruction.client_id:
            self._on_change(instruction)

    def reject(self, instruction: Instruction, http_status: int, error: Error) -> None:
        """Refuse `instruction` on arrival: answered `http_status`, REJECTED."""
        instruction.http_status = http_status
        self.set_status(instruction, REJECTED, instruction.created_at, error)

    def _done(self, instruction: Instruction, now: float, *, reference: bool = True) -> None:
        if reference:
            self.records.give_reference(instruction)
        self.set_status(instruction, PROCESSED, now)

    # --- acceptance: the first state ------------------------------------------------------

    def hold(self, instruction: Instruction, until: float) -> None:
        """Downtime "hold": accepted, answered 202 PENDING, worked on when the window ends."""
        instruction.held = True
        instruction.http_status = 202
        rendering.describe_pending(instruction)
        self.schedule(instruction, until, "accept")
        self.announce(instruction)

    def accept(self, instruction: Instruction, now: float, *, held: bool = False) -> None:
        """Start `instruction`'s state machine at `now`. `held`: its acceptance was deferred by
        a downtime hold, so it already answered 202 and must not become synchronous."""
        kind, item, timings = instruction.instruction_type, instruction.request, self.config.timings
        rendering.describe_pending(instruction)
        instruction.http_status = 202
        if kind == "INTERNAL_CASH_TRANSFER":
            self._accept_internal_cash(instruction, now, held=held)
        elif kind == "INTERNAL_POSITION_TRANSFER":
            self.schedule(instruction, self._position_time(now))
        elif kind in _FIXED_DELAY:
            self.schedule(instruction, now + getattr(timings, _FIXED_DELAY[kind]))
        elif kind == "DEPOSIT":
            self._remember_recurring(instruction)
            if timings.deposit_auto_arrival_s is not None:
                self.schedule(instruction, now + timings.deposit_auto_arrival_s, "arrive")
        elif kind == "WITHDRAWAL":
            amount = Decimal(item["amount"])
            instruction.reserved = amount
            self.books.credit(str(item["accountId"]), str(item["currency"]), -amount)
            self._remember_recurring(instruction)
            scheduled = _scheduled_time(item)
            if timings.withdrawal_s <= 0 and scheduled is None:
                self._done(instruction, now)
            else:
                self.schedule(instruction, max(now + timings.withdrawal_s, scheduled or now))
        elif kind == "ACH_INSTRUCTION":
            self.books.save_ach(instruction)
            delay = fixtures.ach_delay_s(
                self.config.seed, instruction.instruction_id, timings.ach_min_s, timings.ach_max_s
            )
            self.schedule(instruction, now + delay)
        elif kind == "CANCEL_INSTRUCTION":
            instruction.http_status = 202 if instruction.bulk or held else 201
            self._cancel_target(instruction, now)
            self._done(instruction, now, reference=False)
        else:  # the synchronous queries
            instruction.http_status = 202 if held else 201
            instruction.ib_reference_id = 0
            instruction.extra.update(self._query_result(instruction))
            self._done(instruction, now, reference=False)
        if not held and not instruction.final:
            self.announce(instruction)

    def _accept_internal_cash(self, instruction: Instruction, now: float, *, held: bool) -> None:
        item = instruction.request
        scheduled = _scheduled_time(item)
        above = self.config.internal_cash_async_above
        slow = self.config.internal_cash_always_async or (
            above is not None and Decimal(item["amount"]) > above
        )
        if instruction.bulk or scheduled is not None or slow or held:
            due = self._internal_cash_due(instruction, now)
            self.schedule(instruction, max(due, scheduled or due))
        else:
            instruction.http_status = 201
            self._move_cash(instruction, now)

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

    def _position_time(self, now: float) -> float:
        window = self.config.timings.position_window_s
        size = max(self.config.timings.position_batch_size, 1)
        index = int(now // window) + 1 if window > 0 else 0
        while self._position_windows[index] >= size:
            index += 1
        self._position_windows[index] += 1
        return index * window if window > 0 else now

    def _remember_recurring(self, instruction: Instruction) -> None:
        if isinstance(instruction.request.get("recurringInstructionDetail"), dict):
            self.records.give_reference(instruction)
            self.books.remember_recurring(instruction)

    def _query_result(self, instruction: Instruction) -> dict[str, Any]:
        return rendering.query_result(instruction, self.books, self.records, self.clock.timestamp())

    def _move_cash(self, instruction: Instruction, now: float) -> None:
        item = instruction.request
        amount, currency = Decimal(item["amount"]), str(item["currency"])
        source, target = str(item["sourceAccountId"]), str(item["targetAccountId"])
        error = self.rules.funds_error(source, currency, amount)
        if error is not None:
            self.set_status(instruction, REJECTED, now, error)
            return
        self.books.transfer(source, target, currency, amount)
        self._done(instruction, now)

    # --- later states ---------------------------------------------------------------------

    def _process(self, instruction: Instruction, now: float) -> None:
        if instruction.final:
            return
        kind, item = instruction.instruction_type, instruction.request
        if kind == "INTERNAL_CASH_TRANSFER":
            self._move_cash(instruction, now)
        elif kind in _PROCESSED_WITH_REFERENCE:
            self._done(instruction, now)
        elif kind in ("OPEN_BANKING_INSTRUCTION", "WITHDRAWAL_INSTRUCTION"):
            self._done(instruction, now, reference=False)
        elif kind == "ACH_INSTRUCTION":
            self._finish_ach(instruction, now)
        elif kind == "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION":
            self._verify_micro_amounts(instruction, now)
        elif kind == "DELETE_BANK_INSTRUCTION":
            account_id, name = str(item["accountId"]), str(item["bankInstructionName"])
            self.books.forget(self.books.saved(account_id, name, item["bankInstructionMethod"]))
            self._done(instruction, now, reference=False)
        elif kind in ("PREDEFINED_DESTINATION_INSTRUCTION", "EDDA_INSTRUCTION"):
            self.books.save_destination(instruction)
            self._done(instruction, now, reference=False)
        elif kind in ("QUERY_RECENT_INSTRUCTIONS", "QUERY_IRA_CONTRIBUTIONS"):
            instruction.extra.pop("code", None)
            instruction.description = None
            instruction.extra.update(self._query_result(instruction))
            self._done(instruction, now, reference=False)

    def arrive(self, instruction: Instruction, now: float) -> None:
        """A deposit's funds arrived: credit the account, PROCESSED."""
        if instruction.final or instruction.instruction_type != "DEPOSIT":
            return
        item = instruction.request
        self.books.credit(str(item["accountId"]), str(item["currency"]), Decimal(item["amount"]))
        self._done(instruction, now)

    def _finish_ach(self, instruction: Instruction, now: float) -> None:
        outcome: str = self.config.ach_outcome
        if outcome == "auto":
            outcome = fixtures.ach_outcome(str(instruction.request["bankInstructionName"]))
        saved = self.books.saved_by(instruction)
        if outcome == PENDING_VERIFICATION:
            instruction.micro = fixtures.micro_amounts(self.config.seed, instruction.instruction_id)
            self.books.set_saved_status(saved, PENDING_VERIFICATION)
            self.set_status(instruction, PENDING_VERIFICATION, now)
        elif outcome == REJECTED:
            self.books.forget(saved)
            error = (
                ACH_VERIFICATION_FAILED,
                "Bank account ownership could not be verified; add the instruction in the "
                "IBKR portal or use another method",
            )
            self.set_status(instruction, REJECTED, now, error)
        else:
            self.books.set_saved_status(saved, PROCESSED)
            self.set_status(instruction, PROCESSED, now)

    def _verify_micro_amounts(self, instruction: Instruction, now: float) -> None:
        item = instruction.request
        target = self.records.instructions.get(int(item["pendingInstructionId"]))
        if target is None or target.status != PENDING_VERIFICATION or target.micro is None:
            error = (
                INVALID_PENDING_INSTRUCTION,
                "The ACH instruction is no longer awaiting verification",
            )
            self.set_status(instruction, REJECTED, now, error)
            return
        given = sorted((Decimal(item["creditAmount1"]), Decimal(item["creditAmount2"])))
        if given == sorted(target.micro):
            self.books.set_saved_status(self.books.saved_by(target), PROCESSED)
            self.set_status(instruction, PROCESSED, now)
            self.set_status(target, PROCESSED, now)
            return
        target.failed_attempts += 1
        left = self.config.verification_attempts - target.failed_attempts
        mismatch = (
            MICRO_AMOUNTS_MISMATCH,
            f"The micro-deposit amounts do not match; {max(left, 0)} attempts left",
        )
        self.set_status(instruction, REJECTED, now, mismatch)
        if left <= 0:
            self.books.forget(self.books.saved_by(target))
            exceeded = (VERIFICATION_ATTEMPTS_EXCEEDED, "Micro-deposit verification failed 3 times")
            self.set_status(target, REJECTED, now, exceeded)

    def _cancel_target(self, cancel: Instruction, now: float) -> None:
        target = self.records.instructions[int(cancel.request["instructionId"])]
        if target.instruction_type == "WITHDRAWAL" and target.reserved:
            item = target.request
            self.books.credit(str(item["accountId"]), str(item["currency"]), target.reserved)
            target.reserved = Decimal(0)
        if target.instruction_type == "ACH_INSTRUCTION":
            self.books.forget(self.books.saved_by(target))
        reason = str(cancel.request.get("reason", ""))
        error = (
            INSTRUCTION_CANCELLED,
            f"Cancelled by instruction {cancel.instruction_id}: {reason}",
        )
        self.set_status(target, self.config.cancel_final_status, now, error)
