"""The sandbox over HTTP: a Starlette app (served by uvicorn, see `worker.http_server`) that
hands every request to `SandboxApp.handle`, the same handling the in-process transport uses.

- Receipt stamp: the server stamps each request as it starts parsing it (`stamp_arrivals` in
  `worker.http_server`), before the event loop runs the requests read before it; that stamp is
  how IBKR counts requests and what the sandbox's 429 limiter judges by. `StampArrival`, a pure
  ASGI middleware around everything, hands it on (or stamps the request itself, first thing,
  under a server that gives none).
- The ledger's work is quick and synchronous: it runs on the event loop, not in a thread pool,
  one request's work per turn of the loop (`_turn`), so the loop reads (and the server stamps)
  requests that arrive meanwhile between two requests' work, never after a whole backlog of
  them: a burst does not delay the stamps of requests that arrive during it.
- A POST held in flight, or an answer held back, waits on the loop (`asyncio`, not a thread),
  ending early, with the connection cut and nothing registered, when the sandbox stops.
- A lost answer closes the connection without a byte of answer: `Connections` keeps each
  connection's transport (told by the server) to close the one a request came on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import Response as HttpResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ibkr_sandbox.app import SandboxApp
from ibkr_sandbox.messages import Request, Response, refusal_before_body
from worker.http_server import arrival_stamp

#: The scope key of the receipt stamp (real POSIX seconds).
RECEIVED_AT = "ibkr_sandbox.received_at"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class StampArrival:
    """Pure ASGI middleware: puts each HTTP request's receipt stamp in its scope, before
    anything else runs: the server's, else the time now."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            at = arrival_stamp(scope)
            scope = {**scope, RECEIVED_AT: time.time() if at is None else at}
        await self.app(scope, receive, send)


def _peer(address: Any) -> tuple[str, int] | None:
    """(host, port) of a socket address, as ASGI's `client` gives it."""
    if isinstance(address, tuple | list) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


class Connections:
    """The server's open connections (told of each by the server, on its loop): how many were
    opened and are open, and each one's transport, so a request's connection can be cut."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], asyncio.Transport] = {}
        self._opened = 0

    def opened(self, transport: asyncio.Transport) -> None:
        peer = _peer(transport.get_extra_info("peername"))
        with self._lock:
            self._opened += 1
            if peer is not None:
                self._open[peer] = transport

    def closed(self, transport: asyncio.Transport) -> None:
        peer = _peer(transport.get_extra_info("peername"))
        with self._lock:
            if peer is not None and self._open.get(peer) is transport:
                del self._open[peer]

    def cut(self, client: Any) -> None:
        """Close the connection of the request whose ASGI `client` this is (FIN, no answer)."""
        peer = _peer(client)
        with self._lock:
            transport = self._open.get(peer) if peer is not None else None
        if transport is not None:
            transport.close()

    @property
    def opened_count(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._opened

    @property
    def open_count(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._open)


class _Lost(HttpResponse):
    """No answer: the connection is cut and nothing is sent (a lost response)."""

    def __init__(self, connections: Connections) -> None:
        super().__init__()
        self._connections = connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._connections.cut(scope.get("client"))
        # Wait for the server to see the connection go, so it expects no answer either.
        while (await receive())["type"] != "http.disconnect":
            pass


class SandboxHttp:
    """The Starlette app of one sandbox; `stopping()` (on the loop) ends every hold early."""

    def __init__(self, app: Callable[[], SandboxApp], connections: Connections) -> None:
        # The SandboxApp is looked up per request (tests wrap its `handle`).
        self._app = app
        self.connections = connections
        self._stopping: asyncio.Event | None = None
        self._turn: asyncio.Lock | None = None
        routes = [Route("/{path:path}", self._endpoint, methods=METHODS)]
        self.asgi: ASGIApp = StampArrival(Starlette(routes=routes))

    def stopping(self) -> None:
        """End every hold now (call on the server's loop, as the sandbox stops)."""
        self._event().set()

    def _event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    async def _in_turn(self, work: Callable[[], Response]) -> Response:
        """Run `work` (synchronous, on the loop) when no other request's work runs, then let
        the loop turn once before the next request's work: it reads what arrived meanwhile."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            response = work()
            await asyncio.sleep(0)
        return response

    async def _endpoint(self, http: HttpRequest) -> HttpResponse:
        scope = http.scope
        received_at: float = scope[RECEIVED_AT]
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        client_host = scope["client"][0] if scope.get("client") else ""
        app = self._app()
        refused = refusal_before_body(headers, app.config.max_body_bytes)
        if refused is not None:
            # Refused before reading the body; IBKR would still have counted the request.
            app.count_arrival(Request(http.method, target, headers, b"", client_host, received_at))
            return _answer(refused)
        try:
            body = await http.body()
        except ClientDisconnect:
            return _Lost(self.connections)
        request = Request(http.method, target, headers, body, client_host, received_at)
        response = await self._in_turn(lambda: app.handle(request))
        if response.held:
            # Held in flight, or its answer held back: this request waits, as behind a slow
            # backend; the caller has usually given up by the time the answer goes out.
            if not await self._wait(response.hold_s):
                return _Lost(self.connections)
            response = await self._in_turn(response.finish)
        if response.drop:
            # The request was applied; its answer is lost with the connection.
            return _Lost(self.connections)
        return _answer(response)

    async def _wait(self, seconds: float) -> bool:
        """Wait `seconds` (real); False when the sandbox stopped meanwhile."""
        stopping = self._event()
        if seconds <= 0:
            return not stopping.is_set()
        try:
            await asyncio.wait_for(stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False


def _answer(response: Response) -> HttpResponse:
    headers = dict(response.headers)
    if response.close:
        headers["Connection"] = "close"
    return HttpResponse(
        response.body,
        status_code=response.status,
        headers=headers,
        media_type=response.content_type,
    )
