"""Serve an ASGI app over HTTP/1.1 with uvicorn from a background thread: the one way this
project serves HTTP (the metrics endpoint, the bundled sandbox; later IBKR's callbacks and a
console). See docs/architecture.md for why this stack.

    server = BackgroundServer(app, host="127.0.0.1", port=0, name="metrics-http").start()
    server.port          # the port bound (port 0 picks a free one)
    server.stop()

With `stamp_arrivals`, each request carries the moment its first bytes were parsed (real POSIX
seconds) as `arrival_stamp(scope)`: when it arrived, not when the event loop got round to it
after the requests read before it (what an ASGI app's own first line would see).

`start` binds in the caller's thread, so a port in use raises there, as a plain socket would,
then serves from a daemon thread with an event loop of its own and returns once it serves.
`stop` stops accepting, closes idle keep-alive connections, gives requests in progress a
bounded time to finish, and joins the thread. Nothing process-wide is touched: no signal
handlers (the thread is not the main thread, and the process's own handlers stay in charge),
no logging configuration (uvicorn's is not applied; its own loggers answer only warnings), no
access log, no event-loop policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import uvicorn

#: uvicorn's HTTP/1.1 protocol: httptools' C parser (a dependency).
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: What uvicorn serves: an ASGI 3 application.
ASGIApp = Callable[..., Any]


#: The ASGI scope extension carrying a request's arrival stamp (`stamp_arrivals`).
ARRIVAL_EXTENSION = "arrival"


class ConnectionWatcher(Protocol):
    """Told of every TCP connection the server accepts and loses (on the server's loop)."""

    def opened(self, transport: asyncio.Transport) -> None: ...
    def closed(self, transport: asyncio.Transport) -> None: ...


def arrival_stamp(scope: Mapping[str, Any]) -> float | None:
    """When the request of `scope` arrived (its first bytes parsed; real POSIX seconds), as a
    server started with `stamp_arrivals` gives it; None from any other server."""
    stamp = scope.get("extensions", {}).get(ARRIVAL_EXTENSION, {}).get("at")
    return float(stamp) if stamp is not None else None


def _protocol(watcher: ConnectionWatcher | None, stamp_arrivals: bool) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, telling `watcher` of each connection (through asyncio's own
    protocol callbacks) and stamping each request as its parsing begins (uvicorn builds the
    request's scope in `on_message_begin`, httptools' first callback of a request)."""
    if watcher is None and not stamp_arrivals:
        return HttpToolsProtocol

    class Watched(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if watcher is not None:
                watcher.opened(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if watcher is not None:
                watcher.closed(self.transport)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            at = time.time()
            super().on_message_begin()
            if stamp_arrivals:
                extensions = self.scope.setdefault("extensions", {})
                extensions[ARRIVAL_EXTENSION] = {"at": at}

    return Watched


def _bound_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # A restarted server may bind the port its predecessor's connections still linger on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class BackgroundServer:
    """One ASGI app served by uvicorn from a daemon thread (see the module docstring).

    `keep_alive_s`: how long an idle keep-alive connection is kept open; `graceful_s`: how
    long `stop` waits for requests in progress before cancelling them; `connections`: told of
    each connection accepted and lost; `stamp_arrivals`: stamp each request on arrival (see
    `arrival_stamp`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        name: str,
        keep_alive_s: int = 5,
        graceful_s: int = 5,
        connections: ConnectionWatcher | None = None,
        stamp_arrivals: bool = False,
    ) -> None:
        self.name = name
        self._host = host
        self._port = port
        protocol = _protocol(connections, stamp_arrivals)
        self._config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level=logging.WARNING,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=keep_alive_s,
            timeout_graceful_shutdown=graceful_s,
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._failure: BaseException | None = None
        self._bound_port: int | None = None

    def start(self, timeout_s: float = 10.0) -> BackgroundServer:
        """Bind, serve from a daemon thread, and return once serving. Returns self."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._sock = _bound_socket(self._host, self._port)
        self._bound_port = int(self._sock.getsockname()[1])
        self._server = uvicorn.Server(self._config)
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, args=(self._server, self._sock), name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start") from self._failure
            time.sleep(0.002)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as error:  # noqa: BLE001 - reported by start(), not lost
            self._failure = error
        finally:
            loop.close()

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the server's event loop (from any thread); nothing when the loop
        is not running."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(callback)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and join the thread (idempotent)."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout_s)
        if sock is not None:
            sock.close()
        self._loop = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def port(self) -> int:
        """The port bound (after start)."""
        if self._thread is None or self._bound_port is None:
            raise RuntimeError(f"{self.name} is not running; call start() first")
        return self._bound_port
