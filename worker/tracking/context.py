"""What the tracking services need from the outside, handed in once per process."""

from __future__ import annotations

import random
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.clock import Clock
from worker.config import DEFAULT_LEASE_S, Settings
from worker.ibkr.client import SendBudget
from worker.ibkr.endpoints import Endpoint
from worker.ibkr.responses import ApiResult
from worker.store import Store


class IbkrApi(Protocol):
    """The calls tracking makes (implemented by `worker.ibkr.client.IbkrClient`)."""

    def permit(self) -> AbstractContextManager[None]:
        """Hold a request connection: taken before SUBMITTING is committed, so the POST that
        follows never waits for one."""
        ...

    def post_instruction(
        self, endpoint: Endpoint, body: dict[str, Any], budget: SendBudget | None = None
    ) -> ApiResult: ...

    def get_client_instruction(self, client_instruction_id: int) -> ApiResult: ...

    def get_instruction_set(self, instruction_set_id: int) -> ApiResult: ...


class Observer(Protocol):
    """Metrics hooks (a no-op by default)."""

    def api_call(self, result: ApiResult) -> None: ...

    def status_changed(self, instruction_type: str, to_status: str) -> None: ...

    def applied_twice(self, instruction_type: str) -> None: ...


class NullObserver:
    def api_call(self, result: ApiResult) -> None:
        return None

    def status_changed(self, instruction_type: str, to_status: str) -> None:
        return None

    def applied_twice(self, instruction_type: str) -> None:
        return None


@dataclass
class TrackingContext:
    """Settings, database, IBKR, clock and randomness for the tracking services.

    `actor` names who makes the changes in the audit trail (`worker` or `scheduler`);
    `owner` identifies this process's leases.
    """

    settings: Settings
    store: Store
    ibkr: IbkrApi
    clock: Clock
    actor: str
    owner: str
    rng: random.Random = field(default_factory=random.Random)
    observer: Observer = field(default_factory=NullObserver)
    # How long a claimed row stays ours; a crashed holder's rows are taken over after it.
    lease_s: float = DEFAULT_LEASE_S
    # How long a freshly received request waits for the worker before the scheduler sends it.
    received_grace_s: float = 30.0
