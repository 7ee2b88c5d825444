"""`MessageContext`: the dramatiq middleware that says which message a worker thread handles.

For the duration of each message (from `before_process_message` to `after_process_message` or
`after_skip_message`, all on the thread that runs the actor) it:

- binds the message id, and the correlation id when the message carries a usable one, to
  structlog's contextvars, so every line logged while handling the message names it; they are
  unbound afterwards, whatever the outcome;
- keeps the ids of the messages this broker's threads have in hand, and tells the actor
  (`MessageContext.current()`) whether the same message is already in hand on another thread:
  RabbitMQ delivers a message again when the connection it came on is lost, possibly while the
  first delivery is still being handled, and the copy must not take over what the first holds.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from structlog.contextvars import bind_contextvars, reset_contextvars


@dataclass(frozen=True)
class HandledMessage:
    """The message the current thread handles: its id (None when it has none), its correlation
    id as bound to the log (None when absent or unusable), and whether another thread of this
    broker already had the same message in hand when this one began."""

    message_id: str | None
    correlation_id: str | None
    in_hand_elsewhere: bool


@dataclass(frozen=True)
class _Handling:
    owner: MessageContext
    message: HandledMessage
    log_tokens: Mapping[str, contextvars.Token[Any]]


_handling: contextvars.ContextVar[_Handling | None] = contextvars.ContextVar(
    "ibkr_worker_handling", default=None
)


class MessageContext(Middleware):
    """See the module. `max_correlation_id_chars`: the longest correlation id bound to the log
    (a longer one, or one that is not an ASCII string, is refused by the intake and not bound).
    """

    def __init__(self, max_correlation_id_chars: int) -> None:
        self.max_correlation_id_chars = max_correlation_id_chars
        self._in_hand: dict[str, int] = {}  # message id -> threads handling it
        self._lock = threading.Lock()

    @staticmethod
    def current() -> HandledMessage | None:
        """The message this thread handles (None outside a message's processing)."""
        handling = _handling.get()
        return handling.message if handling is not None else None

    def in_hand(self) -> frozenset[str]:
        """Ids of the messages this broker's threads have in hand."""
        with self._lock:
            return frozenset(self._in_hand)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self._finish()  # a thread whose last message never finished starts clean
        message_id = message.message_id or None  # the edge leaves "" for a message without one
        in_hand_elsewhere = False
        if message_id is not None:
            with self._lock:
                in_hand_elsewhere = message_id in self._in_hand
                self._in_hand[message_id] = self._in_hand.get(message_id, 0) + 1
        correlation_id = self._correlation_id(message)
        bound: dict[str, str] = {}
        if message_id is not None:
            bound["message_id"] = message_id
        if correlation_id is not None:
            bound["correlation_id"] = correlation_id
        handled = HandledMessage(message_id, correlation_id, in_hand_elsewhere)
        _handling.set(_Handling(self, handled, bind_contextvars(**bound)))

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._finish()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._finish()

    def _finish(self) -> None:
        handling = _handling.get()
        if handling is None or handling.owner is not self:
            return
        _handling.set(None)
        reset_contextvars(**handling.log_tokens)
        message_id = handling.message.message_id
        if message_id is not None:
            with self._lock:
                left = self._in_hand.pop(message_id) - 1
                if left > 0:
                    self._in_hand[message_id] = left

    def _correlation_id(self, message: MessageProxy) -> str | None:
        kwargs = message.kwargs
        value = kwargs.get("correlation_id") if isinstance(kwargs, dict) else None
        if (
            isinstance(value, str)
            and value.isascii()
            and 0 < len(value) <= self.max_correlation_id_chars
        ):
            return value
        return None
