"""RabbitMQ (or an in-process stub) for inbound requests, the event exchange and dead letters.

dramatiq carries the inbound `ibkr.instructions` queue (publisher confirms on); pika publishes
events to the topic exchange with confirms and drains dramatiq's `.XQ` queue, where messages
that could not even be decoded end up before any middleware sees them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType

from worker._compat import framing_publish
from worker.config import MAX_MESSAGE_BYTES_CEILING
from worker.events import EVENTS_EXCHANGE, OutgoingEvent
from worker.inbound.arrival import KEPT_PREFIX_BYTES, inspect
from worker.inbound.edge import (
    DEFAULT_HELD_BYTES,
    DEFAULT_MAX_PREFETCH,
    EdgeLimits,
    EdgeRabbitmqBroker,
    EdgeStubBroker,
    HeldBytes,
    install_encoder,
)
from worker.logging import get_logger, quiet_logs

log = get_logger(__name__)

QUEUE_NAME = "ibkr.instructions"
ACTOR_NAME = "submit_instruction"
DEAD_LETTER_QUEUE = QUEUE_NAME + ".XQ"


def is_stub_url(url: str) -> bool:
    return url.startswith("stub:")


DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


def make_broker(
    url: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    held_bytes: int = DEFAULT_HELD_BYTES,
    max_prefetch: int = DEFAULT_MAX_PREFETCH,
) -> dramatiq.Broker:
    """The dramatiq broker for `url` (`amqp://...` RabbitMQ with confirms, `stub://` in-process)
    behind the inbound edge (`worker.inbound.edge`): messages above `max_message_bytes`
    (MAX_MESSAGE_BYTES) and every other message that cannot be processed reach the actor only
    to be set aside; options are dropped; decoded messages hold at most `held_bytes` (bytes)
    at once; no consumer prefetches more than `max_prefetch` messages. Also makes the edge's
    encoder dramatiq's."""
    install_encoder(QUEUE_NAME, ACTOR_NAME)
    limits = EdgeLimits(max_message_bytes, HeldBytes(held_bytes), max_prefetch, ACTOR_NAME)
    broker: dramatiq.Broker
    if is_stub_url(url):
        broker = EdgeStubBroker(limits=limits)
    else:
        broker = EdgeRabbitmqBroker(limits=limits, url=url, confirm_delivery=True)
    broker.declare_queue(QUEUE_NAME)
    return broker


def build_message(kwargs: dict[str, Any]) -> dramatiq.Message[Any]:
    """The plain dramatiq message a producer publishes for one request."""
    return dramatiq.Message(
        queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(), kwargs=kwargs, options={}
    )


class AmqpConnection:
    """One pika connection and channel, reopened on demand after a broker restart."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            params = pika.URLParameters(self._url)
            params.heartbeat = 60
            params.blocked_connection_timeout = 30
            self._connection = pika.BlockingConnection(params)
            self._channel = self._connection.channel()
            self._on_open(self._channel)
        return self._channel

    def _on_open(self, channel: BlockingChannel) -> None:
        channel.confirm_delivery()

    def close(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        except Exception:  # closing a broken connection may itself fail; it is gone either way
            log.debug("closing the AMQP connection failed", exc_info=True)
        self._connection = None
        self._channel = None


class AmqpEventPublisher(AmqpConnection):
    """Publishes events to the durable topic exchange in AMQP transactions: a batch is the
    broker's once `tx.commit` is answered (one round trip per batch instead of a publisher
    confirm per event); a failure before that answer publishes the whole batch again."""

    def _on_open(self, channel: BlockingChannel) -> None:
        channel.exchange_declare(EVENTS_EXCHANGE, exchange_type=ExchangeType("topic"), durable=True)
        channel.tx_select()

    def publish(self, events: Sequence[OutgoingEvent]) -> None:
        try:
            channel = self.channel()
            # Inside a transaction nothing is the broker's before `tx.commit`: the messages
            # are framed into the connection's buffer and go out with the commit.
            send = framing_publish(channel)
            for event in events:
                send(
                    exchange=EVENTS_EXCHANGE,
                    routing_key=event.routing_key,
                    body=event.body,
                    properties=pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=2,
                        message_id=event.event_id,
                        timestamp=int(time.time()),
                        type=event.routing_key,
                    ),
                )
            channel.tx_commit()
        except Exception:
            self.close()
            raise


class DeadLetterDrain(AmqpConnection):
    """Moves messages from dramatiq's `.XQ` queue into the dead-letters table.

    `record(body, message_id, reason, received_bytes)` must commit before the message is
    acknowledged; `body` is the whole message, or its first 64 KiB when it is larger than
    `max_message_bytes` (then `received_bytes` is its size, else None).
    """

    def __init__(self, url: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(url)
        self.max_message_bytes = max_message_bytes

    def drain(
        self, record: Callable[[bytes, str | None, str, int | None], None], *, limit: int = 100
    ) -> int:
        moved = 0
        try:
            channel = self.channel()
            try:
                # Passive: dramatiq declares the queue with its own arguments (a message TTL);
                # declaring it first with others would make dramatiq's declaration fail.
                channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)
            except pika.exceptions.ChannelClosedByBroker as error:
                self.close()
                if error.reply_code == 404:  # no worker has declared it yet: nothing to drain
                    return 0
                raise
            for _ in range(limit):
                method, _properties, body = channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=False)
                if method is None or method.delivery_tag is None:
                    break
                raw = body if isinstance(body, bytes) else (body or "").encode()
                message_id, reason = explain_dead_message(raw, self.max_message_bytes)
                if len(raw) > self.max_message_bytes:
                    record(raw[:KEPT_PREFIX_BYTES], message_id, reason, len(raw))
                else:
                    record(raw, message_id, reason, None)
                channel.basic_ack(method.delivery_tag)
                moved += 1
        except Exception:
            self.close()
            raise
        return moved


def explain_dead_message(
    body: bytes, max_message_bytes: int = MAX_MESSAGE_BYTES_CEILING
) -> tuple[str | None, str]:
    """(message id, reason) for a message found in dramatiq's `.XQ` queue (our worker puts
    none there: a producer or an operator did, or a worker of an older version)."""
    arrival, _envelope = inspect(body, max_message_bytes=max_message_bytes, actor_name=ACTOR_NAME)
    if arrival.rejection is not None:
        return arrival.message_id or None, arrival.rejection
    return (
        arrival.message_id or None,
        "found in the dead-letter queue (rejected by a worker or the broker); replay it to "
        "process it",
    )


def publish_raw(url: str, bodies: Sequence[bytes]) -> None:
    """Publish raw message bodies to the inbound queue on the default exchange (replay)."""
    connection = AmqpConnection(url)
    try:
        channel = connection.channel()
        for body in bodies:
            channel.basic_publish(
                exchange="",
                routing_key=QUEUE_NAME,
                body=body,
                properties=pika.BasicProperties(content_type="application/json", delivery_mode=2),
            )
    finally:
        connection.close()


def broker_reachable(url: str, timeout_s: float = 5.0) -> str | None:
    """None when RabbitMQ at `url` accepts a connection, else the reason."""
    if is_stub_url(url):
        return None
    result: list[str | None] = ["timed out"]

    def attempt() -> None:
        # The answer is the reason returned; pika's own error lines of this attempt would only
        # repeat it. Quiet in this thread alone, for as long as it runs (other threads' pika
        # lines are still logged).
        with quiet_logs("pika"):
            try:
                params = pika.URLParameters(url)
                params.socket_timeout = timeout_s
                params.connection_attempts = 1
                connection = pika.BlockingConnection(params)
                connection.close()
                result[0] = None
            except Exception as error:  # noqa: BLE001 - any failure to connect is the answer
                # pika's connection errors have an empty str(); their repr names the cause.
                result[0] = f"{type(error).__name__}: {error}" if str(error) else repr(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s + 1)
    return result[0]
