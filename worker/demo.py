"""`ibkr-worker demo`: the whole pipeline on embedded defaults.

The bundled sandbox runs in-process on a free loopback port with its clock sped up, a fresh
SQLite database sits in a temporary directory (or `--database-url`), the broker is in-process
(RabbitMQ with `--broker-url`), and the worker threads and the scheduler run beside them. A
realistic back-office morning is submitted; the run shows live progress, prints the final table
and one instruction's audit trail, and exits 0 only if every outcome was the expected one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from worker.audit import audit_trail
from worker.broker import build_message, is_stub_url, make_broker
from worker.config import PollOverrides, Settings
from worker.events import EventPublisher, MemoryPublisher
from worker.ibkr.endpoints import endpoint_for
from worker.ibkr.keygen import generate_key_pair
from worker.ibkr.signing import load_private_key
from worker.runtime import Runtime, build_runtime
from worker.sandbox import Sandbox, SandboxConfig
from worker.scheduler import Scheduler
from worker.status import FINAL, Status
from worker.store import events, queries
from worker.store.migrate import upgrade_to_head
from worker.store.rows import ClientInstruction

DEMO_CLIENT_ID = "demo-advisor"
DEMO_KEY_ID = "demo-key-1"
SANDBOX_SPEED = 60.0  # one real second is a sandbox minute: ACH verification takes seconds
TIME_LIMIT_S = 55.0
FOREIGN_CLIENT_INSTRUCTION_ID = 424242  # used by "another system" before the morning starts


@dataclass
class Step:
    """One request of the morning and the outcome it must reach."""

    name: str
    request: dict[str, Any]
    expected: str
    correlation_id: str
    message_id: str = ""
    client_instruction_ids: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    rows: dict[int, ClientInstruction] = field(default_factory=dict)
    sent: bool = False


def _transfer(target: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {
        "sourceAccountId": "U46377",
        "targetAccountId": target,
        "amount": amount,
        "currency": "USD",
        **extra,
    }


def morning() -> dict[str, Step]:
    """The requests a back office sends on a morning (follow-ups are added as facts arrive)."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT10:00:00+00:00")
    steps = [
        Step(
            "payroll bulk (3 internal transfers)",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instructions": [
                    _transfer("U15667", "2500.00", clientNote="November payroll"),
                    _transfer("U87440", "1830.55", clientNote="November payroll"),
                    _transfer("U139838", "912.10", clientNote="November payroll"),
                ],
            },
            Status.PROCESSED,
            "payroll-2026-11",
        ),
        Step(
            "wire deposit notice",
            {
                "instructionType": "DEPOSIT",
                "instruction": {
                    "accountId": "U46377",
                    "amount": "25000.00",
                    "currency": "USD",
                    "bankInstructionMethod": "WIRE",
                    "sendingInstitution": "First Demo Bank",
                },
            },
            Status.PROCESSED,
            "treasury-deposit",
        ),
        Step(
            "withdrawal to saved instruction",
            {
                "instructionType": "WITHDRAWAL",
                "instruction": {
                    "accountId": "U46377",
                    "amount": "1200.00",
                    "currency": "USD",
                    "bankInstructionMethod": "WIRE",
                    "bankInstructionName": "Test Withdrawal",
                },
            },
            Status.PROCESSED,
            "client-withdrawal",
        ),
        Step(
            "ACH bank instruction (micro-deposits)",
            {
                "instructionType": "ACH_INSTRUCTION",
                "instruction": {
                    "accountId": "U15667",
                    "bankInstructionCode": "USACH",
                    "achType": "DEBIT_CREDIT",
                    "bankInstructionName": "Payroll verify",
                    "currency": "USD",
                    "clientAccountInfo": {
                        "bankRoutingNumber": "122199983",
                        "bankAccountNumber": "004455667788",
                        "bankName": "Demo Credit Union",
                        "bankAccountTypeCode": 1,
                    },
                },
            },
            Status.PROCESSED,
            "onboarding-ach",
        ),
        Step(
            "scheduled transfer (to be cancelled)",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instruction": _transfer("U15667", "50.00", dateTimeToOccur=tomorrow),
            },
            Status.REJECTED,
            "cancel-me",
        ),
        Step(
            "recent instructions query",
            {
                "instructionType": "QUERY_RECENT_INSTRUCTIONS",
                "instruction": {
                    "accountId": "U46377",
                    "transactionHistory": {"daysToGoBack": 7, "transactionType": "ALL"},
                },
            },
            Status.PROCESSED,
            "eod-reconciliation",
        ),
        Step(
            "bank instruction query",
            {
                "instructionType": "QUERY_BANK_INSTRUCTION",
                "instruction": {"accountId": "U46377", "bankInstructionMethod": "WIRE"},
            },
            Status.PROCESSED,
            "eod-reconciliation",
        ),
        Step(
            "id already used by another system",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instruction": {
                    "clientInstructionId": FOREIGN_CLIENT_INSTRUCTION_ID,
                    **_transfer("U15667", "75.00"),
                },
            },
            Status.CONFLICT,
            "reused-id",
        ),
        Step(
            "invalid request (negative amount)",
            {
                "instructionType": "INTERNAL_CASH_TRANSFER",
                "instruction": _transfer("U15667", "-10.00"),
            },
            Status.FAILED,
            "bad-input",
        ),
    ]
    return {step.name: step for step in steps}


class Demo:
    """Runs the morning against the embedded pipeline."""

    def __init__(self, console: Console, database_url: str | None, broker_url: str | None) -> None:
        self.console = console
        self.workdir = Path(tempfile.mkdtemp(prefix="ibkr-worker-demo-"))
        self.database_url = database_url or f"sqlite:///{self.workdir / 'demo.db'}"
        self.broker_url = broker_url or "stub://"
        self.steps = morning()
        self.sandbox: Sandbox | None = None
        self.runtimes: list[Runtime] = []
        self.publisher: EventPublisher = MemoryPublisher()
        self.started = time.monotonic()
        self.notes: list[str] = []

    # --- set-up -----------------------------------------------------------------------------
    def start(self) -> None:
        private_path, public_path = generate_key_pair(self.workdir / "keys", bits=3072)
        self.sandbox = Sandbox(SandboxConfig(host="127.0.0.1", port=0, speed=SANDBOX_SPEED, seed=7))
        self.sandbox.register_client(
            client_id=DEMO_CLIENT_ID, key_id=DEMO_KEY_ID, public_key_pem=public_path.read_bytes()
        )
        self.sandbox.start()
        upgrade_to_head(self.database_url)
        settings = Settings(
            database_url=self.database_url,
            broker_url=self.broker_url,
            ibkr_base_url=self.sandbox.base_url,
            ibkr_client_id=DEMO_CLIENT_ID,
            ibkr_key_id=DEMO_KEY_ID,
            ibkr_private_key_file=private_path,
            honor_downtime=False,  # the sandbox keeps no calendar
            poll=PollOverrides(initial_delay_s=0.5, max_delay_s=2.0, backoff_factor=1.5),
            client_instruction_id_start=1_000_000_000,
            log_level="WARNING",
        )
        self.settings = settings
        key = load_private_key(private_path)
        worker_runtime = build_runtime(settings, actor="worker", private_key=key)
        scheduler_runtime = build_runtime(settings, actor="scheduler", private_key=key)
        self.runtimes = [worker_runtime, scheduler_runtime]
        self._use_foreign_id(worker_runtime)

        from dramatiq import Worker

        from worker.actors import declare_actors
        from worker.store.group import GroupCommit

        self.broker = make_broker(self.broker_url)
        self.group = GroupCommit(worker_runtime.writer_store())
        declare_actors(self.broker, worker_runtime.ctx, self.group)
        self.consumer = Worker(self.broker, worker_threads=4, worker_timeout=100)
        self.consumer.start()
        if not is_stub_url(self.broker_url):
            from worker.broker import AmqpEventPublisher

            self.publisher = AmqpEventPublisher(self.broker_url)
        self.scheduler = Scheduler(scheduler_runtime.ctx, self.publisher, None, idle_poll_s=0.2)
        self.scheduler.start()

    def _use_foreign_id(self, runtime: Runtime) -> None:
        """Another system of the firm uses a clientInstructionId before our morning starts."""
        body = {
            "instructionType": "INTERNAL_CASH_TRANSFER",
            "instruction": {
                "clientInstructionId": FOREIGN_CLIENT_INSTRUCTION_ID,
                "sourceAccountId": "U46377",
                "targetAccountId": "U87440",
                "amount": Decimal("10.00"),
                "currency": "USD",
            },
        }
        runtime.client.post_instruction(endpoint_for("INTERNAL_CASH_TRANSFER", bulk=False), body)

    def stop(self) -> None:
        if hasattr(self, "consumer"):
            self.consumer.stop(timeout=5_000)
        if hasattr(self, "group"):
            self.group.stop()
        if hasattr(self, "scheduler"):
            self.scheduler.stop(timeout_s=5)
        if hasattr(self, "broker"):
            self.broker.close()
        for runtime in self.runtimes:
            runtime.close()
        if self.sandbox is not None:
            self.sandbox.stop()

    # --- the morning ----------------------------------------------------------------------------
    def publish(self, step: Step) -> None:
        message = build_message({"request": step.request, "correlation_id": step.correlation_id})
        step.message_id = message.message_id
        self.broker.enqueue(message)
        step.sent = True

    def refresh(self) -> None:
        with self.runtimes[0].store.transaction() as tx:
            for step in self.steps.values():
                if not step.message_id:
                    continue
                found = queries.rows_of_message(tx, step.message_id, limit=1000)
                step.client_instruction_ids = [row.client_instruction_id for row in found]
                step.statuses = [row.status for row in found]
                step.rows = {row.client_instruction_id: row for row in found}

    def follow_ups(self) -> None:
        """Act on what the morning has shown so far, as a back office would."""
        assert self.sandbox is not None
        deposit = self.steps["wire deposit notice"]
        if deposit.statuses == [Status.PENDING] and "deposit" not in self.notes:
            # The client's bank wires the money; IBKR sees it arrive.
            self.sandbox.deposit_arrived(deposit.client_instruction_ids[0])
            self.notes.append("deposit")
        ach = self.steps["ACH bank instruction (micro-deposits)"]
        if ach.statuses == [Status.PENDING_VERIFICATION] and "verify" not in self.steps:
            row = ach.rows[ach.client_instruction_ids[0]]
            if row.instruction_id is None:
                return
            first, second = self.sandbox.micro_amounts(row.instruction_id)
            verify = Step(
                "ACH micro-amount verification",
                {
                    "instructionType": "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION",
                    "instruction": {
                        "accountId": "U15667",
                        "bankInstructionCode": "USACH",
                        "bankInstructionName": "Payroll verify",
                        "pendingInstructionId": row.instruction_id,
                        "creditAmount1": str(first),
                        "creditAmount2": str(second),
                    },
                },
                Status.PROCESSED,
                "onboarding-ach",
            )
            self.steps["verify"] = verify
            self.publish(verify)
        scheduled = self.steps["scheduled transfer (to be cancelled)"]
        if scheduled.statuses == [Status.PENDING] and "cancel" not in self.steps:
            row = scheduled.rows[scheduled.client_instruction_ids[0]]
            cancel = Step(
                "cancel of the scheduled transfer",
                {
                    "instructionType": "CANCEL_INSTRUCTION",
                    "instruction": {
                        "instructionId": row.instruction_id,
                        "reason": "Client changed their mind",
                    },
                },
                Status.PROCESSED,
                "cancel-me",
            )
            self.steps["cancel"] = cancel
            self.publish(cancel)

    def finished(self) -> bool:
        return all(
            step.statuses and all(status in FINAL for status in step.statuses)
            for step in self.steps.values()
        ) and {"verify", "cancel"} <= set(self.steps)

    def table(self, *, final: bool = False) -> Table:
        elapsed = time.monotonic() - self.started
        title = f"IBKR back-office morning — {elapsed:4.1f} s" + ("" if final else " (live)")
        table = Table(title=title, show_lines=False)
        for column in ("request", "clientInstructionId", "status", "expected", ""):
            table.add_column(column)
        for step in self.steps.values():
            ids = ", ".join(str(i) for i in step.client_instruction_ids) or "—"
            statuses = ", ".join(sorted(set(step.statuses))) or ("queued" if step.sent else "—")
            ok = bool(step.statuses) and all(s == step.expected for s in step.statuses)
            mark = "[green]ok[/]" if ok else ("[red]UNEXPECTED[/]" if final else "…")
            table.add_row(step.name, ids, statuses, step.expected, mark)
        return table

    def run(self) -> bool:
        self.start()
        try:
            for step in list(self.steps.values()):
                self.publish(step)
            with Live(
                self.table(), console=self.console, refresh_per_second=4, transient=True
            ) as live:
                while time.monotonic() - self.started < TIME_LIMIT_S:
                    self.refresh()
                    self.follow_ups()
                    live.update(self.table())
                    if self.finished():
                        break
                    time.sleep(0.25)
            self.refresh()
            self._wait_for_events()
        finally:
            self.stop()
        return self.report()

    def _wait_for_events(self) -> None:
        if isinstance(self.publisher, MemoryPublisher):
            deadline = time.monotonic() + 3
            while (
                time.monotonic() < deadline
                and len(self.publisher.events) < self._events_committed()
            ):
                time.sleep(0.1)

    def _events_committed(self) -> int:
        with self.runtimes[0].store.transaction() as tx:
            return events.count(tx)

    def report(self) -> bool:
        self.console.print(self.table(final=True))
        ok = all(
            step.statuses and all(s == step.expected for s in step.statuses)
            for step in self.steps.values()
        )
        stats = self.sandbox.stats() if self.sandbox is not None else {}
        events = len(self.publisher.events) if isinstance(self.publisher, MemoryPublisher) else None
        instructions = sum(len(step.statuses) for step in self.steps.values())
        self.console.print(
            f"{instructions} instructions, "
            f"{_total_requests(stats)} API requests to the sandbox, "
            + (f"{events} events published" if events is not None else "events on RabbitMQ")
        )
        ach = self.steps["ACH bank instruction (micro-deposits)"]
        if ach.client_instruction_ids:
            self.print_audit(ach.client_instruction_ids[0])
        self.console.print(
            "[green]every outcome was the expected one[/]"
            if ok
            else "[red]some outcomes were not the expected ones[/]"
        )
        return ok

    def print_audit(self, client_instruction_id: int) -> None:
        with self.runtimes[0].store.transaction() as tx:
            trail = audit_trail(tx, client_instruction_id=client_instruction_id, limit=100)
        table = Table(title=f"Audit trail of clientInstructionId {client_instruction_id}")
        table.add_column("at (UTC)", no_wrap=True)
        table.add_column("from → to", no_wrap=True)
        table.add_column("actor", no_wrap=True)
        table.add_column("API exchange", no_wrap=True)
        table.add_column("reason", overflow="fold", ratio=1)
        for event in trail:
            api = event.get("api")
            api_text = f"{api['method']} {api['path']} → {api['httpStatus']}" if api else ""
            table.add_row(
                str(event["at"])[11:23],
                _transition(event["fromStatus"], event["toStatus"]),
                event["actor"],
                api_text.replace("/gw/api/v1", "").replace("{clientInstructionId}", "{id}"),
                event["reason"],
            )
        self.console.print(table)


def run_demo(
    database_url: str | None = None, broker_url: str | None = None, console: Console | None = None
) -> int:
    """Run the demo; returns the process exit code (0 only if every outcome was expected)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)  # a log or a pipe: do not fold the tables to 80 columns
    demo = Demo(console, database_url, broker_url)
    try:
        return 0 if demo.run() else 1
    finally:
        # The embedded database and the demo key live only as long as the run.
        shutil.rmtree(demo.workdir, ignore_errors=True)


def _transition(from_status: str | None, to_status: str | None) -> str:
    if from_status == to_status:
        return f"{to_status} (note)"
    return f"{from_status or '∅'} → {to_status}"


def _total_requests(stats: dict[str, Any]) -> int | str:
    total = stats.get("total")
    return total if isinstance(total, int) else "?"
