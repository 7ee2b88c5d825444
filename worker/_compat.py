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
- `bound_deliveries`: a `BoundedContentAssembler` in place of the `ContentFrameAssembler` pika
  keeps (privately) on the asynchronous channel, so a body above MAX_MESSAGE_BYTES is never
  joined whole; it carries over and reads the assembler's private state. Raises when pika keeps
  something else there.
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
from pika.channel import ContentFrameAssembler
from pika.exceptions import BodyTooLongError


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


class OversizedBody(bytes):
    """The beginning of a message body larger than the limit (the rest was never kept), with
    its size as received and its last bytes (where dramatiq writes the message id)."""

    received_size: int
    tail: bytes

    def __new__(cls, prefix: bytes, received_size: int, tail: bytes) -> OversizedBody:
        body = super().__new__(cls, prefix)
        body.received_size = received_size
        body.tail = tail
        return body


#: The assembler's state `BoundedContentAssembler` reads and carries over.
_ASSEMBLER_STATE = ("_method_frame", "_header_frame", "_seen_so_far", "_body_fragments")


class BoundedContentAssembler(ContentFrameAssembler):
    """pika's assembler of a delivery's body frames, keeping at most `limit_bytes` of a body:
    past that only its first `kept_prefix_bytes` and last `TAIL_BYTES` are kept, and the body
    delivered is an `OversizedBody`. pika would join every frame of a body (RabbitMQ lets
    128 MiB through by default) and hold it twice before anyone could look at its size."""

    TAIL_BYTES = 4096

    def __init__(
        self,
        limit_bytes: int,
        previous: ContentFrameAssembler | None = None,
        kept_prefix_bytes: int = 64 * 1024,
    ) -> None:
        super().__init__()
        self._limit_bytes = limit_bytes
        self._kept_prefix_bytes = kept_prefix_bytes
        self._kept_bytes = 0
        self._tail = b""
        state: Any = previous
        if state is not None:  # a delivery may be half assembled: carry it over
            self._method_frame = state._method_frame
            self._header_frame = state._header_frame
            self._seen_so_far = state._seen_so_far
            self._body_fragments = list(state._body_fragments)
            self._kept_bytes = sum(len(f) for f in self._body_fragments)

    def _handle_body_frame(self, body_frame: Any) -> Any:
        fragment: bytes = body_frame.fragment
        self._seen_so_far += len(fragment)
        if self._tail or self._kept_bytes + len(fragment) > self._limit_bytes:
            if not self._tail:  # the body just went past the limit: keep its beginning only
                kept = b"".join(self._body_fragments)[: self._kept_prefix_bytes]
                self._body_fragments, self._kept_bytes = [kept], len(kept)
            self._tail = (self._tail + fragment)[-self.TAIL_BYTES :]
        else:
            self._body_fragments.append(fragment)
            self._kept_bytes += len(fragment)
        expected = self._header_frame.body_size if self._header_frame is not None else 0
        if self._seen_so_far == expected:
            return self._finish()
        if self._seen_so_far > expected:
            raise BodyTooLongError(self._seen_so_far, expected)
        return None

    def _finish(self) -> Any:
        if not self._tail:
            self._kept_bytes = 0
            return super()._finish()
        method, header = self._method_frame, self._header_frame
        body = OversizedBody(b"".join(self._body_fragments), self._seen_so_far, self._tail)
        self._reset()
        self._kept_bytes, self._tail = 0, b""
        return method, header, body


def bound_deliveries(channel: Any, limit_bytes: int, kept_prefix_bytes: int = 64 * 1024) -> None:
    """Make `channel` (a pika BlockingChannel) keep at most `limit_bytes` of any body it
    receives (see `BoundedContentAssembler`). Raises RuntimeError when pika no longer keeps its
    assembler where this expects it: a consumer must not start with bodies arriving whole (one
    large message would cost its size, twice)."""
    impl = getattr(channel, "_impl", None)
    previous = getattr(impl, "_content_assembler", None)
    if not isinstance(previous, ContentFrameAssembler) or not all(
        hasattr(previous, name) for name in _ASSEMBLER_STATE
    ):
        raise RuntimeError(
            "pika's BlockingChannel no longer keeps a ContentFrameAssembler with "
            f"{', '.join(_ASSEMBLER_STATE)} at `_impl._content_assembler`; update "
            "worker._compat.bound_deliveries for this pika version"
        )
    if not isinstance(previous, BoundedContentAssembler):
        impl._content_assembler = BoundedContentAssembler(  # type: ignore[union-attr]
            limit_bytes, previous, kept_prefix_bytes
        )
