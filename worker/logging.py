"""structlog set-up: JSON lines (or console) on stderr, for our loggers and the standard
library's (dramatiq, SQLAlchemy, pika, httpx) alike.

Every line passes :func:`redact` last before rendering; what it removes and masks is decided in
:mod:`worker.redaction`. Records of the standard library have their traceback formatted first
(so it is kept, and scrubbed like the rest), and dramatiq's messages in a record's arguments
are written as their actor and message id only (never the request they carry).
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from worker.redaction import redact_event


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: the single place where log events lose their secrets."""
    return redact_event(event_dict)


_DRAMATIQ_MESSAGE_CLASSES = {("dramatiq.message", "Message"), ("dramatiq.broker", "MessageProxy")}


def _is_dramatiq_message(value: object) -> bool:
    # By class name rather than by import: this module is loaded by every command.
    return any(
        (cls.__module__, cls.__name__) in _DRAMATIQ_MESSAGE_CLASSES for cls in type(value).__mro__
    )


def message_summary(message: Any) -> str:
    """`submit_instruction message 6f1c...`: how a dramatiq message is named in a log line."""
    return f"{message.actor_name} message {message.message_id or '(no id)'}"


class DramatiqMessageArguments(logging.Filter):
    """Replaces dramatiq messages among a record's arguments by `message_summary`: dramatiq
    logs `Failed to process message %s` (and others) with the message, whose text is the
    whole request with its keyword arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_is_dramatiq_message(a) for a in args):
            record.args = tuple(message_summary(a) if _is_dramatiq_message(a) else a for a in args)
        if _is_dramatiq_message(record.msg):
            record.msg = message_summary(record.msg)
        return True


#: Loggers whose records the current thread (context) does not want: see `quiet_logs`.
_quiet_loggers: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "ibkr_worker_quiet_loggers", default=()
)


class QuietInThisContext(logging.Filter):
    """Drops a record when the thread (context) logging it is inside `quiet_logs` for the
    record's logger or a parent of it; every other thread's records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        quiet = _quiet_loggers.get()
        if not quiet:
            return True
        name = record.name
        return not any(name == q or name.startswith(q + ".") for q in quiet)


_QUIET = QuietInThisContext()


@contextmanager
def quiet_logs(name: str) -> Iterator[None]:
    """While active, the records of logger `name` and its children that this thread logs are
    dropped; other threads' records, and every logger's level, stay as they are.

    A logger's filters do not see its children's records, so the filter is put on `name` and
    on each of its children that exists when this is entered (once; it stays, and passes
    everything outside a `quiet_logs`)."""
    prefix = name + "."
    for logger_name in [
        name,
        *(n for n in list(logging.root.manager.loggerDict) if n.startswith(prefix)),
    ]:
        logging.getLogger(logger_name).addFilter(_QUIET)  # no-op when already there
    token = _quiet_loggers.set((*_quiet_loggers.get(), name))
    try:
        yield
    finally:
        _quiet_loggers.reset(token)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure structlog (and the stdlib loggers of our libraries) to write to stderr.

    `fmt` is `json` (one JSON object a line) or `console` (human-readable).
    """
    numeric_level = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                # The traceback becomes text here, before `redact` scrubs it: without this the
                # exception would reach the renderer unscrubbed (or be lost).
                structlog.processors.format_exc_info,
                redact,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(DramatiqMessageArguments())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(
        max(numeric_level, logging.INFO) if numeric_level < logging.INFO else numeric_level
    )
    for noisy in ("pika", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger bound to `name` (the module): the level-filtering logger that
    `configure_logging` (and structlog's default configuration) makes."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
