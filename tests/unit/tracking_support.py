"""A scripted IBKR for tracking tests: answers are real IBKR-shaped bodies parsed by the real
response parser, so only the transport is replaced."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models import make_session_factory
from tests import builders
from worker.clock import ManualClock
from worker.config import Settings
from worker.ibkr.client import SendBudget
from worker.ibkr.endpoints import Endpoint
from worker.ibkr.responses import ApiResult, Outcome, no_response, parse_response
from worker.store import Store
from worker.tracking.context import TrackingContext

Answer = Callable[[str, str, dict[str, Any] | None], ApiResult]


def answer(status: int, body: dict[str, Any], method: str = "POST", path: str = "/p") -> ApiResult:
    return parse_response(method, path, status, json.dumps(body).encode(), 12.5, {})


def envelope(
    status: int, set_id: int, cid: int, ibkr_status: str, instruction_id: int = 900, **extra: Any
) -> dict[str, Any]:
    result = {
        "clientInstructionId": cid,
        "instructionType": extra.pop("instructionType", "INTERNAL_CASH_TRANSFER"),
        "instructionStatus": ibkr_status,
        "instructionId": instruction_id,
        **extra,
    }
    return {"status": status, "instructionSetId": set_id, "instructionResult": result}


@dataclass
class ScriptedIbkr:
    """Answers POSTs and GETs from queues of scripted answers (or a default function)."""

    posts: list[ApiResult | Callable[[dict[str, Any]], ApiResult]] = field(default_factory=list)
    lookups: list[ApiResult] = field(default_factory=list)
    set_reads: list[ApiResult] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    budgets: list[SendBudget | None] = field(default_factory=list)

    def permit(self) -> AbstractContextManager[None]:
        return nullcontext()

    def post_instruction(
        self, endpoint: Endpoint, body: dict[str, Any], budget: SendBudget | None = None
    ) -> ApiResult:
        self.calls.append(("POST " + endpoint.path, body))
        self.budgets.append(budget)
        item = self.posts.pop(0)
        return item(body) if callable(item) else item

    def get_client_instruction(self, client_instruction_id: int) -> ApiResult:
        self.calls.append(("GET client-instruction", client_instruction_id))
        if not self.lookups:
            return no_response(
                "GET", "/gw/api/v1/client-instructions/{id}", Outcome.TRANSIENT, "no script"
            )
        return self.lookups.pop(0)

    def get_instruction_set(self, instruction_set_id: int) -> ApiResult:
        self.calls.append(("GET instruction-set", instruction_set_id))
        return self.set_reads.pop(0)

    def count(self, prefix: str) -> int:
        return sum(1 for name, _ in self.calls if name.startswith(prefix))


def make_context(
    database_url: str, ibkr: ScriptedIbkr, clock: ManualClock, **settings: Any
) -> TrackingContext:
    base = Settings(
        database_url=database_url,
        ibkr_client_id="client",
        ibkr_key_id="kid",
        honor_downtime=False,
        client_instruction_id_start=5000,
    )
    return TrackingContext(
        settings=base.with_overrides(**settings) if settings else base,
        store=Store.connect(database_url),
        ibkr=ibkr,
        clock=clock,
        actor="worker",
        owner="test-owner",
        rng=random.Random(7),
    )


def sessions(ctx: TrackingContext) -> sessionmaker[Session]:
    """ORM sessions on the context's database, for tests that read or seed the tables."""
    return make_session_factory(ctx.store.engine)


def transfer(
    cid: int | None = 1012983, amount: str = "123.45", source: str = "U46377"
) -> dict[str, Any]:
    """The tracking tests' transfer: `tests.builders.transfer` with their usual id and amount."""
    return builders.transfer(cid, amount, sourceAccountId=source)
