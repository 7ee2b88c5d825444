"""`worker.http_server.BackgroundServer`: serves an ASGI app over real sockets from a background
thread, touches nothing process-wide (signal handlers, logging), tells a watcher of every
connection (through a subclass of uvicorn's HTTP protocol: this fails loudly if uvicorn
changes what that relies on), and stops cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from worker.http_server import BackgroundServer, arrival_stamp


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello {threading.current_thread().name}")


APP = Starlette(routes=[Route("/hello", hello)])


class Watcher:
    def __init__(self) -> None:
        self.opened_peers: list[Any] = []
        self.closed_peers: list[Any] = []

    def opened(self, transport: asyncio.Transport) -> None:
        self.opened_peers.append(transport.get_extra_info("peername"))

    def closed(self, transport: asyncio.Transport) -> None:
        self.closed_peers.append(transport.get_extra_info("peername"))


def test_serves_from_its_own_thread_with_keep_alive_and_stops() -> None:
    server = BackgroundServer(APP, host="127.0.0.1", port=0, name="test-http").start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as http:
            first = http.get("/hello")
            second = http.get("/hello")
            assert first.text == second.text == "hello test-http"
            assert first.http_version == "HTTP/1.1"
            assert http.get("/nowhere").status_code == 404
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server._bound_port}/hello", timeout=2)


def test_installs_no_signal_handler_and_leaves_logging_alone() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    server = BackgroundServer(APP, host="127.0.0.1", port=0, name="test-http").start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/hello", timeout=5).status_code == 200
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        assert (root.level, list(root.handlers)) == root_state
    finally:
        server.stop()
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_a_port_in_use_raises_in_the_caller() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            BackgroundServer(APP, host="127.0.0.1", port=port, name="test-http").start()


def test_the_watcher_is_told_of_each_connection_and_stop_closes_idle_ones() -> None:
    watcher = Watcher()
    server = BackgroundServer(
        APP, host="127.0.0.1", port=0, name="test-http", connections=watcher
    ).start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5)
    try:
        http.get("/hello")
        http.get("/hello")
        assert len(watcher.opened_peers) == 1  # kept alive
        local = http.get("/hello").extensions["network_stream"].get_extra_info("client_addr")
        assert watcher.opened_peers == [local]
        server.stop()
        assert watcher.closed_peers == [local]
        with pytest.raises(httpx.TransportError):
            http.get("/hello")
    finally:
        http.close()
        server.stop()


def test_with_stamp_arrivals_a_request_is_stamped_when_its_first_bytes_are_parsed() -> None:
    """The request line goes out 0.3 s before the rest of the headers: the stamp is the first
    line's time, not the time the app is called (after the headers). Fails if uvicorn stops
    building the request's scope in `on_message_begin`."""
    seen: list[tuple[float | None, float]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((arrival_stamp(scope), time.time()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for stamping in (True, False):
        seen.clear()
        server = BackgroundServer(
            app, host="127.0.0.1", port=0, name="test-http", stamp_arrivals=stamping
        ).start()
        try:
            with socket.create_connection(("127.0.0.1", server.port)) as raw:
                sent_at = time.time()
                raw.sendall(b"GET /x HTTP/1.1\r\n")
                time.sleep(0.3)
                raw.sendall(b"Host: test\r\n\r\n")
                raw.settimeout(5)
                assert raw.recv(1024).startswith(b"HTTP/1.1 204 ")
        finally:
            server.stop()
        [(stamp, called_at)] = seen
        if stamping:
            assert stamp is not None
            assert 0 <= stamp - sent_at < 0.2
            assert called_at - stamp >= 0.25
        else:
            assert stamp is None
