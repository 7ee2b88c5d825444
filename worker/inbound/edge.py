"""dramatiq at the inbound edge: decode every message through `arrival.inspect`, hold decoded
messages within a byte budget, and run no middleware that reads a message's options.

- `EdgeEncoder` (dramatiq's global encoder, set by `install_encoder`) never raises: a message
  that cannot be processed decodes to one for our actor carrying its `Arrival` with the
  reason, so the actor sets it aside at once (never dramatiq's `.XQ` and its retries).
  The options of every message are replaced by `{ARRIVAL_OPTION: arrival}`; a message without
  a message id keeps `""` (dramatiq would invent one).
- The brokers' consumers (`EdgeRabbitmqBroker`, `EdgeStubBroker`) tell the decoder which queue
  and size limit apply, cap the prefetch, and take each decoded message's `held_bytes` from a
  `HeldBytes` budget before handing it to dramatiq; `ReleaseHeldBytes` gives them back when
  the message is acknowledged. While the budget is spent, the consumer waits: no more bytes
  are read from RabbitMQ, so a process's memory stays bounded whatever arrives and however
  many threads it runs.
- Messages on the delay queue (`.DQ`) are handled like any other: their `eta` is gone.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import Encoder, MessageData
from dramatiq.middleware import CurrentMessage, Middleware

from worker._compat import bound_deliveries
from worker.config import MAX_MESSAGE_BYTES_CEILING
from worker.inbound.arrival import KEPT_PREFIX_BYTES, Arrival, inspect
from worker.jsontext import dumps
from worker.logging import get_logger

log = get_logger(__name__)

#: Where a decoded message carries its `Arrival` (the only key its options ever have).
ARRIVAL_OPTION = "ibkr_worker_arrival"
#: Default budget of bytes held by decoded messages in one process. With 2 MiB messages that
#: is 12 in hand at once, each costing about four times its size while processed (the bytes,
#: the decoded request, the JSON written from it to check its size); see docs/operating.md
#: for the measurements behind it.
DEFAULT_HELD_BYTES = 48 * 1024 * 1024
#: Highest prefetch of a consumer (dramatiq asks for 2 per thread, and 1,000 per thread on the
#: delay queue, whose messages we no longer hold back).
DEFAULT_MAX_PREFETCH = 512


@dataclass(frozen=True)
class _Consuming:
    queue_name: str
    actor_name: str
    max_message_bytes: int


# Set by a consumer around the decoding of the message it fetches (same thread).
_consuming: contextvars.ContextVar[_Consuming | None] = contextvars.ContextVar(
    "ibkr_worker_consuming", default=None
)


class EdgeEncoder(Encoder):
    """dramatiq's encoder for our processes: plain JSON out (Decimal amounts exact), and in,
    every message judged by `arrival.inspect` (see the module)."""

    def __init__(self, queue_name: str, actor_name: str) -> None:
        self.queue_name = queue_name
        self.actor_name = actor_name

    def encode(self, data: MessageData) -> bytes:
        return dumps(data).encode("ascii")

    def decode(self, data: bytes) -> MessageData:
        consuming = _consuming.get()
        actor_name = consuming.actor_name if consuming else self.actor_name
        arrival, envelope = inspect(
            data,
            max_message_bytes=(
                consuming.max_message_bytes if consuming else MAX_MESSAGE_BYTES_CEILING
            ),
            actor_name=actor_name,
            received_size=getattr(data, "received_size", None),
            tail=getattr(data, "tail", b""),
        )
        return {
            "queue_name": consuming.queue_name if consuming else self.queue_name,
            "actor_name": actor_name,
            "args": envelope.args if envelope else (),
            "kwargs": envelope.kwargs if envelope else {},
            "options": {ARRIVAL_OPTION: arrival},
            "message_id": arrival.message_id,
            "message_timestamp": envelope.message_timestamp if envelope else 0,
        }


def install_encoder(queue_name: str, actor_name: str) -> None:
    """Make `EdgeEncoder` dramatiq's (process-wide) encoder."""
    dramatiq.set_encoder(EdgeEncoder(queue_name, actor_name))


def arrival_of(message: Any) -> Arrival | None:
    """The `Arrival` a decoded message carries (None for one built in this process)."""
    options = getattr(message, "options", None)
    found = options.get(ARRIVAL_OPTION) if isinstance(options, dict) else None
    return found if isinstance(found, Arrival) else None


class HeldBytes:
    """A budget of bytes held by decoded messages. `take(n)` waits until `n` fit (a message
    larger than the whole budget is let in alone); `give(n)` returns them."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 1:
            raise ValueError(f"the held-bytes budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._held = 0
        self._cond = threading.Condition()

    @property
    def held_bytes(self) -> int:
        with self._cond:
            return self._held

    def take(self, size: int) -> None:
        with self._cond:
            while self._held > 0 and self._held + size > self.budget_bytes:
                self._cond.wait()
            self._held += size

    def give(self, size: int) -> None:
        with self._cond:
            self._held = max(self._held - size, 0)
            self._cond.notify_all()


class _EdgeConsumer(Consumer):
    """Wraps a broker's consumer: decodes with the edge's limits and holds the budget."""

    def __init__(self, inner: Consumer, consuming: _Consuming, held: HeldBytes) -> None:
        self._inner = inner
        self._consuming = consuming
        self._held = held

    def __iter__(self) -> _EdgeConsumer:
        return self

    def __next__(self) -> MessageProxy | None:
        token = _consuming.set(self._consuming)
        try:
            message = next(self._inner)
        finally:
            _consuming.reset(token)
        if message is not None:
            arrival = arrival_of(message)
            if arrival is not None:
                self._held.take(arrival.held_bytes)
        return message

    def ack(self, message: MessageProxy) -> None:
        self._inner.ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._inner.nack(message)

    def requeue(self, messages: Any) -> None:
        self._inner.requeue(messages)

    def close(self) -> None:
        self._inner.close()


class ReleaseHeldBytes(Middleware):
    """Gives a message's bytes back to the budget once it is acknowledged (or rejected), and
    drops what the message holds: each of dramatiq's worker threads keeps its last message
    referenced until it takes the next, which would keep threads x message size alive."""

    def __init__(self, held: HeldBytes) -> None:
        self.held = held

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        self._release(message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._release(message)

    def _release(self, message: MessageProxy) -> None:
        arrival = arrival_of(message)
        if arrival is not None:
            self.held.give(arrival.held_bytes)
            drop_payload(message)


def drop_payload(message: MessageProxy) -> None:
    """Empty a handled message's arguments and options (its `Arrival` with the bytes)."""
    inner = getattr(message, "_message", message)
    inner.kwargs.clear()
    inner.options.clear()
    if inner.args:
        object.__setattr__(inner, "args", ())  # a frozen dataclass: its tuple is replaced


@dataclass(frozen=True)
class EdgeLimits:
    """The edge's limits for one broker: MAX_MESSAGE_BYTES, the held-bytes budget, the
    highest prefetch, and the actor the messages are for."""

    max_message_bytes: int
    held_bytes: HeldBytes
    max_prefetch: int
    actor_name: str

    def consumer(self, inner: Consumer, queue_name: str) -> Consumer:
        channel = getattr(inner, "channel", None)
        if channel is not None:  # RabbitMQ: bodies above the limit are never held whole
            bound_deliveries(channel, self.max_message_bytes, KEPT_PREFIX_BYTES)
        consuming = _Consuming(queue_name, self.actor_name, self.max_message_bytes)
        return _EdgeConsumer(inner, consuming, self.held_bytes)


def edge_middleware(limits: EdgeLimits) -> list[Middleware]:
    """The middleware of our brokers: the current message for the actor, and the budget's
    release (the worker's actors add `context.MessageContext`). None reads a message's options
    (no Retries, TimeLimit, AgeLimit, Callbacks, Pipelines or ShutdownNotifications): timing
    and retries are the worker's."""
    return [CurrentMessage(), ReleaseHeldBytes(limits.held_bytes)]


class EdgeRabbitmqBroker(RabbitmqBroker):
    """RabbitmqBroker whose consumers go through the edge (see the module)."""

    def __init__(self, *, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(middleware=edge_middleware(limits), **kwargs)
        self.edge_limits = limits

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        prefetch = max(1, min(prefetch, self.edge_limits.max_prefetch))
        inner = super().consume(queue_name, prefetch=prefetch, timeout=timeout)
        return self.edge_limits.consumer(inner, queue_name)


class EdgeStubBroker(StubBroker):
    """StubBroker (in-process, for the demo and unit tests) with the same edge."""

    def __init__(self, *, limits: EdgeLimits) -> None:
        super().__init__(middleware=edge_middleware(limits))
        self.edge_limits = limits

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> Consumer:
        prefetch = max(1, min(prefetch, self.edge_limits.max_prefetch))
        inner = super().consume(queue_name, prefetch=prefetch, timeout=timeout)
        return self.edge_limits.consumer(inner, queue_name)
