"""structlog set-up and the one redaction processor.

Every log line goes through :func:`redact`: private keys, bearer tokens, client assertions,
signed bodies (compact JWS) and bank account numbers never leave the process in a log line.
The same masking is used for API bodies kept in the audit trail (:func:`mask_bank_details`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"

# Keys whose values are secret wherever they appear (compared lower-case, without _ and -).
_SECRET_KEYS = frozenset(
    {
        "accesstoken",
        "token",
        "authorization",
        "clientassertion",
        "privatekey",
        "privatekeypem",
        "signedbody",
        "jws",
        "refreshtoken",
        "idtoken",
        "password",
        "secret",
        "clientsecret",
    }
)
# Keys that carry bank account numbers (masked to the last four characters).
_ACCOUNT_NUMBER_KEYS = frozenset(
    {
        "bankaccountnumber",
        "accountnumber",
        "clientaccountid",
        "identifier",
        "iban",
        "fromaccountnumber",
        "contrabrokeraccountid",
        "accountatbroker",
        "brokeraccountid",
        "accountidatcurrentbroker",
        "safekeepingaccountid",
        "memberaccountid",
    }
)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_JWS = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")
# An account number written out in free text (a repr of a request, an exception message).
_ACCOUNT_IN_TEXT = re.compile(
    r"(?i)(bankAccountNumber|accountNumber|clientAccountId|identifier|iban|contraBrokerAccountId"
    r"|accountAtBroker|brokerAccountId|accountIdAtCurrentBroker)(\W{1,4})([A-Za-z0-9-]{5,})"
)


def _norm(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def mask_account_number(value: Any) -> Any:
    """`123456789` -> `*****6789`; short or empty values are masked whole."""
    if value is None:
        return None
    text = str(value)
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 4) + text[-4:]


def scrub_text(text: str) -> str:
    """Remove PEM private keys, compact JWS/JWT strings and bearer tokens from free text."""
    if "-----BEGIN" in text:
        text = _PEM.sub(REDACTED, text)
    if "eyJ" in text:
        text = _JWS.sub(REDACTED, text)
    if "earer" in text:
        text = _BEARER.sub("Bearer " + REDACTED, text)
    if "ccount" in text or "dentifier" in text or "iban" in text.lower():
        text = _ACCOUNT_IN_TEXT.sub(
            lambda m: m.group(1) + m.group(2) + str(mask_account_number(m.group(3))), text
        )
    return text


def mask_bank_details(value: Any) -> Any:
    """A copy of a JSON-like value with secrets removed and bank account numbers masked.

    Used for API bodies stored in the audit trail and for every log event.
    """
    if isinstance(value, Mapping):
        masked: dict[str, Any] = {}
        for key, item in value.items():
            norm = _norm(str(key))
            if norm in _SECRET_KEYS:
                masked[key] = REDACTED
            elif norm in _ACCOUNT_NUMBER_KEYS and not isinstance(item, Mapping | list):
                masked[key] = mask_account_number(item)
            else:
                masked[key] = mask_bank_details(item)
        return masked
    if isinstance(value, list | tuple):
        return [mask_bank_details(item) for item in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: the single place where log events lose their secrets."""
    return mask_bank_details(event_dict)


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
                redact,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(
        max(numeric_level, logging.INFO) if numeric_level < logging.INFO else numeric_level
    )
    for noisy in ("pika", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger bound to `name` (the module)."""
    return structlog.get_logger(name)
