"""The sandbox as a running thing: `Sandbox` ties the clock, ledger, authority and gateway
together, serves them over HTTP/1.1 keep-alive (standard library `ThreadingHTTPServer`), offers an
httpx transport for in-process use, and exposes the admin operations as methods."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import structlog

from ibkr_sandbox.app import SandboxApp
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
from ibkr_sandbox.ledger import Instruction, Ledger
from ibkr_sandbox.messages import Request, Response, refusal_before_body
from ibkr_sandbox.transport import SandboxTransport

log = structlog.get_logger(__name__)

#: How often (real seconds) the background ticker applies due state changes.
TICK_S = 0.05
_HTTP_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    207: "Multi-Status",
    208: "Already Reported",
}


class _Handler(BaseHTTPRequestHandler):
    """One connection; requests on it are answered in order (keep-alive)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in one write; Nagle would otherwise hold the body back.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.request, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the sandbox keeps statistics instead of an access log."""

    def parse_request(self) -> bool:
        # The request line has just been read: this is when IBKR would count the request,
        # before its headers and body are read and before any processing.
        self.received_at = time.time()
        return super().parse_request()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        app = self.server.app
        headers = {name.lower(): value for name, value in self.headers.items()}
        early = refusal_before_body(headers, app.config.max_body_bytes)
        if early is not None:
            # Refused before reading the body; IBKR would still have counted the request.
            app.count_arrival(
                Request(method, self.path, headers, b"", self.client_address[0], self.received_at)
            )
            self._write(early, close=True)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = Request(
            method, self.path, headers, body, self.client_address[0], self.received_at
        )
        response = app.handle(request)
        if response.held:
            # Held in flight, or its answer held back: this handler simply waits, as a slow
            # backend would; the client has usually given up by the time the answer goes out.
            finished = self.server.finish_held(response)
            if finished is None:
                self.close_connection = True
                return
            response = finished
        if response.drop:
            # The request was applied; its answer is lost with the connection.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write(response, close=response.close)

    def _write(self, response: Response, *, close: bool = False) -> None:
        if close:
            self.close_connection = True
        reason = (
            _HTTP_REASONS.get(response.status)
            or self.responses.get(response.status, ("Unknown",))[0]
        )
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + response.body)
        except OSError:
            # The client went away (a timed-out caller of a held request, typically): the
            # answer is lost, as it would be at IBKR; nothing to report.
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        app: SandboxApp,
        on_open: Callable[[], None],
        finish_held: Callable[[Response], Response | None],
    ) -> None:
        self.app = app
        self._on_open = on_open
        self.finish_held = finish_held
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        if add:
            self._on_open()
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def open_connections(self) -> int:
        """How many connections a handler is serving now."""
        with self._connections_lock:
            return len(self._connections)

    def close_connections(self) -> None:
        """Cut keep-alive connections so no handler thread serves after stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


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
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._connections_opened = 0
        self._opened_lock = threading.Lock()

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Serve in background threads; port 0 picks a free port. Returns self."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self._stopping.clear()
        self._server = _Server(
            (self.config.host, self.config.port),
            self.app,
            self._connection_opened,
            self.finish_held,
        )
        serve = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="sandbox-http",
            daemon=True,
        )
        tick = threading.Thread(target=self._tick, name="sandbox-ticker", daemon=True)
        self._threads = [serve, tick]
        for thread in self._threads:
            thread.start()
        log.info("sandbox started", base_url=self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close open connections (idempotent)."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
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
        return int(self._server.server_address[1])

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
        """Wait out `response.hold_s` (real seconds), then produce the answer (a POST held in
        flight registers now). None when the sandbox stopped meanwhile: nothing registers."""
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
        with self._opened_lock:
            body["connectionsOpened"] = self._connections_opened
        server = self._server
        body["connectionsOpen"] = server.open_connections() if server is not None else 0
        body["arrivals"] = self.arrival_log.snapshot()
        return body

    def arrivals(self) -> list[Arrival]:
        """Every request's receipt stamp (real POSIX seconds), claimed client and endpoint,
        in the order they were recorded; the admin API's own requests are not counted."""
        return self.arrival_log.list()

    def _connection_opened(self) -> None:
        with self._opened_lock:
            self._connections_opened += 1

    def set_faults(
        self,
        *,
        error_500_rate: float | None = None,
        error_503_rate: float | None = None,
        drop_response_rate: float | None = None,
        inflight_rate: float | None = None,
        inflight_hold_s: float | None = None,
        answer_delay_rate: float | None = None,
        answer_delay_s: float | None = None,
    ) -> dict[str, float]:
        """Change fault rates (0..1) and hold times (real seconds); returns all of them now
        in force. See `SandboxConfig` for what each fault does."""
        return self.faults.set(
            error_500_rate=error_500_rate,
            error_503_rate=error_503_rate,
            drop_response_rate=drop_response_rate,
            inflight_rate=inflight_rate,
            inflight_hold_s=inflight_hold_s,
            answer_delay_rate=answer_delay_rate,
            answer_delay_s=answer_delay_s,
        )

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
