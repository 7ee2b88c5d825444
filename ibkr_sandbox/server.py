"""The sandbox as a running thing: `Sandbox` ties the clock, ledger, authority and gateway
together, serves them over HTTP/1.1 keep-alive (Starlette on uvicorn, see `ibkr_sandbox.asgi`
and `worker.http_server`), offers an httpx transport for in-process use, and exposes the admin
operations as methods.

Threads: the HTTP server's event loop (requests), a ticker (what fell due on the virtual
clock), the callback sender when callbacks are on, and whoever calls the methods here (tests,
the demo). The ledger's lock orders their work on the books; each gateway part (limiter,
faults, statistics) has a lock of its own."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Literal, Unpack

import structlog

from ibkr_sandbox.app import SandboxApp
from ibkr_sandbox.asgi import Connections, SandboxHttp
from ibkr_sandbox.auth import Authority, RegisteredClient
from ibkr_sandbox.callbacks import Callbacks
from ibkr_sandbox.clock import VirtualClock
from ibkr_sandbox.config import SandboxConfig
from ibkr_sandbox.gateway import (
    Arrival,
    Arrivals,
    Downtime,
    Faults,
    RateLimiter,
    Stats,
    quirk_body,
)
from ibkr_sandbox.gateway.faults import FaultChanges
from ibkr_sandbox.ledger import Instruction, Ledger
from ibkr_sandbox.messages import Response
from ibkr_sandbox.transport import SandboxTransport
from worker.http_server import BackgroundServer

log = structlog.get_logger(__name__)

#: How often (real seconds) the background ticker applies due state changes.
TICK_S = 0.05
#: Idle keep-alive connections stay open this long (seconds): clients close theirs first, so
#: a request never meets a connection the server is closing.
KEEP_ALIVE_S = 3600
#: How long stop() lets requests in progress finish (holds end at once when stopping).
GRACEFUL_S = 2


class Sandbox:
    """The bundled IBKR Funds & Banking simulator (reference §10)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.clock = VirtualClock(speed=self.config.speed, start=self.config.start_time)
        self.authority = Authority(self.config, self.clock)
        self._callbacks = (
            Callbacks(self.config.callback_url, self.authority)
            if self.config.callback_url
            else None
        )
        self.ledger = Ledger(self.config, self.clock, on_change=self._status_changed)
        self.limiter = RateLimiter(
            self.config.max_requests_per_second_per_endpoint,
            self.config.max_requests_per_minute,
            enabled=self.config.rate_limits,
        )
        self.faults = Faults(
            self.config.seed,
            error_500_rate=self.config.error_500_rate,
            error_503_rate=self.config.error_503_rate,
            drop_response_rate=self.config.drop_response_rate,
            inflight_rate=self.config.inflight_rate,
            inflight_hold_s=self.config.inflight_hold_s,
            answer_delay_rate=self.config.answer_delay_rate,
            answer_delay_s=self.config.answer_delay_s,
        )
        self.downtime = Downtime(self.clock, calendar=self.config.downtime_calendar)
        self.request_stats = Stats()
        self.arrival_log = Arrivals()
        self.app = SandboxApp(self)
        self._connections = Connections()
        self._http: SandboxHttp | None = None
        self._server: BackgroundServer | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Serve in the background; port 0 picks a free port. Returns self."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self._stopping.clear()
        self._http = SandboxHttp(lambda: self.app, self._connections)
        self._server = BackgroundServer(
            self._http.asgi,
            host=self.config.host,
            port=self.config.port,
            name="sandbox-http",
            keep_alive_s=KEEP_ALIVE_S,
            graceful_s=GRACEFUL_S,
            connections=self._connections,
            stamp_arrivals=True,
        ).start()
        self._ticker = threading.Thread(target=self._tick, name="sandbox-ticker", daemon=True)
        self._ticker.start()
        log.info("sandbox started", base_url=self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close open connections; held requests end unanswered and
        unregistered (idempotent)."""
        self._stopping.set()
        server, http, self._server, self._http = self._server, self._http, None, None
        if server is not None and http is not None:
            server.call_soon(http.stopping)
            server.stop()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        if self._callbacks is not None:
            self._callbacks.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick(self) -> None:
        while not self._stopping.wait(TICK_S):
            self.ledger.run_due()

    @property
    def port(self) -> int:
        """The port being served (after start)."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return self._server.port

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT` of the running sandbox."""
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    @property
    def base_url_or_none(self) -> str | None:
        """The base URL when serving, else None (in-process use)."""
        return self.base_url if self._server is not None else None

    @property
    def token_url(self) -> str:
        """The token endpoint of the running sandbox."""
        return self.base_url + "/oauth2/api/v1/token"

    def transport(
        self,
        *,
        client_host: str = "127.0.0.1",
        read_timeout_s: float | Literal["config"] | None = "config",
    ) -> SandboxTransport:
        """An httpx transport answering in-process (no socket, no start() needed).
        `read_timeout_s`: how long (real seconds) a caller waits for a held or delayed answer
        before `httpx.ReadTimeout`; None: the request's own read timeout; by default
        `SandboxConfig.transport_read_timeout_s`."""
        patience_s = (
            self.config.transport_read_timeout_s if read_timeout_s == "config" else read_timeout_s
        )
        return SandboxTransport(self, client_host=client_host, read_timeout_s=patience_s)

    def finish_held(self, response: Response) -> Response | None:
        """For the in-process transport: wait out `response.hold_s` (real seconds) on this
        thread, then produce the answer (a POST held in flight registers now). None when the
        sandbox stopped meanwhile: nothing registers."""
        if response.hold_s > 0 and self._stopping.wait(response.hold_s):
            return None
        return response.finish()

    # --- clients --------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        key_id: str,
        public_key_pem: bytes,
        scopes: Iterable[str] | None = None,
        *,
        counterparty: str = "default",
        denied_instruction_types: Iterable[str] = (),
    ) -> RegisteredClient:
        """Accept requests from `client_id` signed with `public_key_pem` (PEM, RSA) under
        `key_id`. `scopes` None allows every funds and echo scope; `denied_instruction_types`
        answer 403 ERROR_PERMISSION_DENIED; a different `counterparty` sees none of the
        default accounts."""
        return self.authority.register_client(
            client_id,
            key_id,
            public_key_pem,
            scopes,
            counterparty=counterparty,
            denied_instruction_types=denied_instruction_types,
        )

    # --- admin operations (also under /__admin) ---------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move virtual time forward and apply what fell due."""
        self.clock.advance(seconds)
        self.ledger.run_due()

    def clock_state(self) -> dict[str, Any]:
        """Virtual now and speed."""
        return {
            "now": self.clock.now().isoformat(),
            "timestamp": self.clock.timestamp(),
            "speed": self.clock.speed,
        }

    def ledger_counts(self) -> dict[int, int]:
        """clientInstructionId -> how many times an instruction under it was applied."""
        return self.ledger.counts()

    def stats(self, *, include_requests: bool = False) -> dict[str, Any]:
        """Requests per endpoint (count, statuses, per-second counts, busiest second), overall
        statuses, 429s, and each client's busiest sixty seconds; `include_requests` adds every
        request as `{at, endpoint, status, clientId}` (`at`: its receipt stamp, real POSIX
        seconds); `connectionsOpened` counts the TCP connections accepted (a client that keeps
        its connections alive opens few), `connectionsOpen` those served now; `inflightHeld`
        and `answersDelayed` count the POSTs those faults picked; `arrivals` counts every
        request as IBKR would, on receipt (see `Arrivals.snapshot`: total, exact
        `maxPerEndpointPerSecond` and `maxPerClientPerMinute`)."""
        body = self.request_stats.snapshot(include_requests=include_requests)
        body["connectionsOpened"] = self._connections.opened_count
        body["connectionsOpen"] = self._connections.open_count
        body["arrivals"] = self.arrival_log.snapshot()
        return body

    def arrivals(self) -> list[Arrival]:
        """Every request's receipt stamp (real POSIX seconds), claimed client and endpoint,
        in the order they were recorded; the admin API's own requests are not counted."""
        return self.arrival_log.list()

    def set_faults(self, **changes: Unpack[FaultChanges]) -> dict[str, float]:
        """Change fault rates (0..1) and hold times (real seconds); returns all of them now
        in force. See `SandboxConfig` for what each fault does."""
        return self.faults.set(**changes)

    def duplicate_post(self) -> str:
        """The duplicate-POST policy in force: "reject" or "accept"."""
        return self.ledger.duplicate_post

    def set_duplicate_post(self, policy: str) -> str:
        """Switch the duplicate-POST policy for POSTs registered from now on: "reject" (422
        CORRUPT_DATA_DUBPLICATE_CP) or "accept" (a second transaction, applied). Returns it."""
        return self.ledger.set_duplicate_post(policy)

    def revoke_tokens(self) -> int:
        """Invalidate every access token issued so far (clients must re-authenticate)."""
        return self.authority.revoke_tokens()

    def downtime_now(self, seconds: float) -> float:
        """Open a downtime window now for `seconds` of virtual time (applies even with the
        calendar off); returns its end as virtual POSIX seconds."""
        return self.downtime.open_now(seconds)

    def deposit_arrived(self, client_or_instruction_id: int) -> dict[str, Any]:
        """The funds of a PENDING deposit arrived (by instructionId or clientInstructionId):
        it becomes PROCESSED; returns its instructionResult."""
        return self.ledger.deposit_arrived(client_or_instruction_id)

    def micro_amounts(self, instruction_id: int) -> tuple[Decimal, Decimal]:
        """The two micro-deposit amounts of an ACH instruction in PENDING_VERIFICATION."""
        return self.ledger.micro_amounts(instruction_id)

    def final_transitions(self) -> dict[int, dict[str, Any]]:
        """Per clientInstructionId: final status, `finalAt` (virtual ISO), `finalAtVirtual`
        and `finalAtReal` (POSIX seconds), `acceptedAtReal`."""
        return self.ledger.final_transitions()

    def balances(self) -> dict[str, dict[str, Decimal]]:
        """Cash per account and currency."""
        return self.ledger.balances()

    def instruction(self, client_or_instruction_id: int) -> dict[str, Any]:
        """The current instructionResult of an instruction (by either id)."""
        return self.ledger.result_of(client_or_instruction_id)

    # --- callbacks ------------------------------------------------------------------------

    def _status_changed(self, instruction: Instruction) -> None:
        # Called under the ledger lock: render now (the state is consistent), send later.
        if self._callbacks is None:
            return
        envelope = {
            "status": 200,
            "instructionSetId": instruction.instruction_set_id,
            "instructionResult": self.ledger.result(instruction),
        }
        self._callbacks.put(quirk_body(envelope) if self.config.quirks else envelope)
