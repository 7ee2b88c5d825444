"""`SandboxTransport`: an httpx transport answering from the sandbox in-process (no socket),
through the same `SandboxApp.handle` the HTTP server uses. Synchronous, for the worker's
synchronous httpx client; a held answer is waited for on a thread of its own."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol

import httpx

from ibkr_sandbox.app import SandboxApp
from ibkr_sandbox.messages import Request, Response


class HeldFinisher(Protocol):
    """What the transport uses of the sandbox: its app, and finishing a held answer."""

    @property
    def app(self) -> SandboxApp: ...

    def finish_held(self, response: Response) -> Response | None: ...


class SandboxTransport(httpx.BaseTransport):
    """An httpx transport answering from the sandbox in-process (no socket). A lost response
    raises `httpx.RemoteProtocolError`, as a closed connection does. A POST held in flight
    registers on a timer thread once its hold ends; the caller waits at most `read_timeout_s`
    real seconds for a held or delayed answer (None: the request's own httpx read timeout)
    and otherwise gets `httpx.ReadTimeout`, as a caller over a socket would."""

    def __init__(
        self,
        sandbox: HeldFinisher,
        *,
        client_host: str = "127.0.0.1",
        read_timeout_s: float | None = 0.0,
    ) -> None:
        self._sandbox = sandbox
        self._client_host = client_host
        self._read_timeout_s = read_timeout_s

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        received_at = time.time()
        body = request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        target = request.url.raw_path.decode("ascii")
        answer = self._sandbox.app.handle(
            Request(request.method, target, headers, body, self._client_host, received_at)
        )
        if answer.held:
            answer = self._wait_for_held(answer, request)
        if answer.drop:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        response_headers = {"Content-Type": answer.content_type, **answer.headers}
        return httpx.Response(
            answer.status, headers=response_headers, content=answer.body, request=request
        )

    def _wait_for_held(self, answer: Response, request: httpx.Request) -> Response:
        patience_s = self._read_timeout_s
        if patience_s is None:
            timeouts = request.extensions.get("timeout", {})
            patience_s = timeouts.get("read") if isinstance(timeouts, dict) else None
        finished: Future[Response | None] = Future()

        def run() -> None:
            try:
                finished.set_result(self._sandbox.finish_held(answer))
            except BaseException as error:  # noqa: BLE001 - handed to the waiting caller
                finished.set_exception(error)

        threading.Thread(target=run, name="sandbox-held-request", daemon=True).start()
        wait_s = None if patience_s is None or answer.hold_s <= patience_s else patience_s
        try:
            result = finished.result(timeout=wait_s)
        except FutureTimeout:
            # The caller gave up; the held request still registers when its hold ends.
            raise httpx.ReadTimeout(
                f"No answer within {patience_s:g} s (the sandbox holds this request "
                f"{answer.hold_s:g} s).",
                request=request,
            ) from None
        if result is None:
            raise httpx.RemoteProtocolError(
                "The sandbox stopped while holding the request.", request=request
            )
        return result
