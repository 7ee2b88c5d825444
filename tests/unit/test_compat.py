"""The private hooks of other libraries (worker._compat) still do what we rely on: these fail
loudly when httpx or httpcore change underneath."""

from __future__ import annotations

import inspect
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pika.callback
import pika.channel
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from worker._compat import (
    BoundedContentAssembler,
    DepartureRefused,
    bound_deliveries,
    departure_check,
    departure_guarded_transport,
    framing_publish,
)
from worker.ibkr.lanes import http_limits


class RecordingServer:
    """A TCP server that notes when each connection's first bytes arrive and answers 200."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.first_bytes_at: list[float] = []
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = connection.recv(4096)
                        if not chunk:
                            break
                        if not data:
                            self.first_bytes_at.append(time.monotonic())
                        data += chunk
                except TimeoutError:
                    continue
                self.received += data
                if data:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    recording = RecordingServer()
    yield recording
    recording.close()


def test_the_check_runs_at_the_first_write_before_any_byte_leaves(server) -> None:  # type: ignore[no-untyped-def]
    transport = departure_guarded_transport(http_limits(2), [])
    with httpx.Client(transport=transport) as client:
        checked_at: list[float] = []

        def wait_then_go() -> None:
            time.sleep(0.2)
            checked_at.append(time.monotonic())

        with departure_check(wait_then_go):
            assert client.get(server.url + "/x").status_code == 200
    [checked] = checked_at
    [arrived] = server.first_bytes_at
    assert arrived >= checked  # the bytes left after the check returned


def test_a_refused_departure_sends_nothing(server) -> None:  # type: ignore[no-untyped-def]
    transport = departure_guarded_transport(http_limits(2), [])

    def refuse() -> None:
        raise DepartureRefused("no slot")

    with httpx.Client(transport=transport) as client:
        with departure_check(refuse), pytest.raises(DepartureRefused):
            client.post(server.url + "/x", content=b"body")
        time.sleep(0.1)
        assert server.received == b""
        # The next request (no check) goes as usual.
        assert client.get(server.url + "/y").status_code == 200
    assert b"GET /y" in server.received


def test_the_transport_keeps_httpx_settings() -> None:
    limits = http_limits(3)
    transport = departure_guarded_transport(limits, [])
    pool = transport._pool
    assert pool._max_connections == limits.max_connections == 4
    assert pool._max_keepalive_connections == 4 and pool._keepalive_expiry is None


def test_framing_publish_is_the_asynchronous_channels_publish_under_pikas_blocking_channel() -> (
    None
):
    # A real BlockingChannel around a real pika Channel (never opened: no broker is needed to
    # see where pika keeps it). Publishing itself is tested against RabbitMQ in
    # tests/integration/test_event_publisher.py.
    connection = SimpleNamespace(callbacks=pika.callback.CallbackManager())
    impl = pika.channel.Channel(connection, 1, None)  # type: ignore[arg-type]
    publish = framing_publish(BlockingChannel(impl, None))  # type: ignore[arg-type]
    assert publish.__self__ is impl  # type: ignore[attr-defined]
    parameters = inspect.signature(publish).parameters
    assert {"exchange", "routing_key", "body", "properties"} <= set(parameters)


def test_framing_publish_fails_loudly_when_pika_keeps_no_channel_in_impl() -> None:
    """Guard: the isinstance check in `framing_publish` (fall back on the blocking call, as it
    once did, and this fails: nothing would say pika had changed)."""
    with pytest.raises(RuntimeError, match=r"pika\.channel\.Channel in `_impl`"):
        framing_publish(SimpleNamespace(basic_publish=print))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="found object"):
        framing_publish(SimpleNamespace(_impl=object()))  # type: ignore[arg-type]


def _blocking_channel() -> BlockingChannel:
    connection = SimpleNamespace(callbacks=pika.callback.CallbackManager())
    impl = pika.channel.Channel(connection, 1, None)  # type: ignore[arg-type]
    return BlockingChannel(impl, None)  # type: ignore[arg-type]


def test_bound_deliveries_replaces_the_assembler_pika_keeps_on_the_channel() -> None:
    """Where pika assembles a delivery's body frames (the asynchronous channel's private
    `_content_assembler`), with the state the bounded one carries over; a half-assembled
    delivery keeps its frames. How the bound itself works: test_inbound_edge."""
    channel = _blocking_channel()
    pikas = channel._impl._content_assembler  # type: ignore[attr-defined]
    assert type(pikas) is pika.channel.ContentFrameAssembler
    pikas._body_fragments.append(b"half")
    pikas._seen_so_far = 4
    bound_deliveries(channel, 1000)
    bounded = channel._impl._content_assembler  # type: ignore[attr-defined]
    assert isinstance(bounded, BoundedContentAssembler)
    assert bounded._body_fragments == [b"half"] and bounded._seen_so_far == 4
    bound_deliveries(channel, 1000)  # once is enough: not wrapped again
    assert channel._impl._content_assembler is bounded  # type: ignore[attr-defined]


def test_bound_deliveries_fails_loudly_when_pika_keeps_its_assembler_elsewhere() -> None:
    """Guard: the checks in `bound_deliveries` (warn and go on, as it once did, and this fails:
    a consumer would start with bodies arriving whole, one large message costing its size)."""
    with pytest.raises(RuntimeError, match="_content_assembler"):
        bound_deliveries(SimpleNamespace(_impl=SimpleNamespace()), 1000)
    channel = _blocking_channel()
    del channel._impl._content_assembler._body_fragments  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="_body_fragments"):
        bound_deliveries(channel, 1000)
