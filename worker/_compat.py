"""Where this product leans on other libraries' internals, each with a test that fails loudly
when the library changes (tests/unit/test_compat.py).

- `departure_guarded_transport`: httpx's `HTTPTransport` with an httpcore network backend whose
  streams run the thread's `departure_check` at the first byte a request writes
  (`worker.ibkr.client` takes and waits for the request's rate-limit slot there: the request is
  on its connection, head and body ready, and leaves right after). httpx does not take a
  network backend, so the transport's (private) `_pool` is rebuilt with the same settings and
  ours.
- `framing_publish`: the asynchronous channel (pika's private `_impl`) under a
  `BlockingChannel`, whose `basic_publish` frames a message into the connection's buffer
  instead of writing it to the socket before returning (`worker.broker.AmqpEventPublisher`
  publishes inside AMQP transactions, where nothing is the broker's before `tx.commit`).
"""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx
import pika.channel
from pika.adapters.blocking_connection import BlockingChannel


class DepartureRefused(Exception):
    """A request was stopped before its first byte left (no slot for it in time)."""


#: The check of the request this thread is about to write (None: no check).
_departure_check: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "departure_check", default=None
)


@contextmanager
def departure_check(check: Callable[[], None]) -> Iterator[None]:
    """While this is active, the first write of a request on this thread first calls `check`,
    which returns when the request may leave (after waiting, if need be) or raises
    `DepartureRefused` to stop it before any byte leaves."""
    token = _departure_check.set(check)
    try:
        yield
    finally:
        _departure_check.reset(token)


class _GuardedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        check = _departure_check.get()
        if check is not None:
            # Once per request: the body's writes follow the head's at once.
            _departure_check.set(None)
            check()
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _GuardedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _GuardedStream(
            self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _GuardedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def departure_guarded_transport(
    limits: httpx.Limits, socket_options: list[tuple[int, int, int]]
) -> httpx.HTTPTransport:
    """An `httpx.HTTPTransport` (`limits`, `socket_options`, TLS verified) whose requests pass
    the active `departure_check` before their first byte is written."""
    transport = httpx.HTTPTransport(limits=limits, socket_options=socket_options)
    pool = transport._pool  # rebuilt below with our network backend
    if not isinstance(pool, httpcore.ConnectionPool):
        raise RuntimeError(
            "httpx.HTTPTransport no longer keeps an httpcore.ConnectionPool in `_pool`; "
            "update worker._compat.departure_guarded_transport for this httpx version"
        )
    transport._pool = httpcore.ConnectionPool(
        ssl_context=pool._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        socket_options=socket_options,
        network_backend=_GuardedBackend(),
    )
    return transport


def framing_publish(channel: BlockingChannel) -> Callable[..., None]:
    """`basic_publish(exchange=, routing_key=, body=, properties=)` of the asynchronous channel
    under `channel`: it frames the message into the connection's buffer and returns; the frames
    go out with the connection's next blocking call (`tx_commit`). Raises RuntimeError when
    pika no longer keeps that channel in `_impl`: publishing then falls back on nothing."""
    impl = getattr(channel, "_impl", None)
    if not isinstance(impl, pika.channel.Channel):
        raise RuntimeError(
            "pika's BlockingChannel no longer keeps its pika.channel.Channel in `_impl` "
            f"(found {type(impl).__name__}); update worker._compat.framing_publish for this "
            "pika version"
        )
    publish: Callable[..., None] = impl.basic_publish
    return publish
