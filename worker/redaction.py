"""The one redaction: what may never leave the process, and what is masked wherever it goes.

Logs (the structlog processor in `worker.logging`), audit rows, events and status objects,
dead-letter views and metric labels all pass through here, so the lists below are the only
lists of sensitive fields.

- **Secrets never appear**: the private key, access tokens, client assertions and signed
  bodies (compact JWS), bearer headers, passwords. A value under a secret key is replaced
  whole with ``[REDACTED]``; in free text PEM blocks, JWS strings, bearer tokens and
  ``key=value`` / ``"key": "value"`` pairs of secret keys are replaced.
- **Bank, broker and tax account numbers are masked** (the last characters of long values
  stay visible, so a person can still tell two accounts apart): every field of IBKR's two
  OpenAPI documents that carries one, routing numbers included, and IBANs wherever they
  appear in text.
- **IBKR account ids stay visible** (``U46377`` in ``accountId``, ``sourceAccountId``,
  ``targetAccountId``): they are not secret and the contract shows ``accountId``.

Every function here is safe on hostile input: structures are walked to a bounded depth and
text is scanned with linear regular expressions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"
#: What a value nested deeper than `MAX_DEPTH` containers is replaced with (never recursed).
TOO_DEEP = "[nested too deep]"
#: Deepest structure walked; deeper parts are replaced, so no input can exhaust the stack.
MAX_DEPTH = 64

#: Keys whose values are secret wherever they appear (compared lower-case, without _ and -).
SECRET_KEYS = frozenset(
    {
        "accesstoken",
        "token",
        "refreshtoken",
        "idtoken",
        "authorization",
        "proxyauthorization",
        "cookie",
        "setcookie",
        "clientassertion",
        "assertion",
        "privatekey",
        "privatekeypem",
        "signedbody",
        "jws",
        "jwt",
        "password",
        "secret",
        "clientsecret",
    }
)

#: Keys that carry bank, broker or tax account numbers (or routing numbers): masked. Taken
#: from every schema of IBKR's funds-and-banking OpenAPI documents (2.13 and 2.29), plus the
#: generic names a person or a library may use for the same things.
ACCOUNT_NUMBER_KEYS = frozenset(
    {
        # bank accounts
        "bankaccountnumber",
        "bankclientaccountnumber",
        "clientaccountid",  # financialInstitution.clientAccountId: the account at the bank
        "identifier",  # deposits: the sender's account; financialInstitution: a bank code
        "iban",
        "fromaccountnumber",
        "accountvan",  # a virtual bank account number for deposits
        "accountnumber",
        # routing numbers
        "bankroutingnumber",
        "routingnumber",
        # accounts at other brokers and custodians
        "contrabrokeraccountid",
        "accountatbroker",
        "brokeraccountid",
        "accountidatcurrentbroker",
        "safekeepingaccountid",
        "memberaccountid",
        # tax ids
        "contrabrokertaxid",
        "taxid",
        "ssn",
        "tin",
    }
)
# Key endings that mark an account or tax number even in fields not listed above.
_ACCOUNT_NUMBER_KEY_ENDINGS = ("accountnumber", "routingnumber", "taxid")


def normalized_key(key: object) -> str:
    """`bank_Account-Number` -> `bankaccountnumber` (how keys are compared)."""
    return str(key).lower().replace("_", "").replace("-", "")


def is_secret_key(key: object) -> bool:
    """Whether the value under `key` is a secret (never shown, not even in part)."""
    return normalized_key(key) in SECRET_KEYS


def is_account_number_key(key: object) -> bool:
    """Whether the value under `key` is a bank, broker or tax account number (masked)."""
    norm = normalized_key(key)
    return norm in ACCOUNT_NUMBER_KEYS or norm.endswith(_ACCOUNT_NUMBER_KEY_ENDINGS)


def mask_account_number(value: Any) -> Any:
    """`004455667788` -> `********7788`: the last four characters stay of values of ten or
    more, the last two of values of seven to nine, none of shorter ones; None stays None."""
    if value is None:
        return None
    text = str(value)
    shown = 4 if len(text) >= 10 else 2 if len(text) >= 7 else 0
    return "*" * (len(text) - shown) + text[len(text) - shown :]


# --- free text ---------------------------------------------------------------------------------

_PEM = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:.*?-----END [A-Z ]*PRIVATE KEY-----|.*)", re.S
)
# A PEM body without its armour (base64 lines of 64 characters, several in a row).
_PEM_LINES = re.compile(r"(?:[A-Za-z0-9+/]{64}(?:\\n|\n)){3,}[A-Za-z0-9+/=]*")
_JWS = re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_CONFIDENTIAL_NAMES = (
    r"access[_-]?token|refresh[_-]?token|id[_-]?token|client[_-]?assertion|client[_-]?secret"
    r"|private[_-]?key|signed[_-]?body|password|authorization|set-cookie|cookie|token|assertion"
)
# `name=value`, `"name": "value"`, `'name': 'value'`, and the same with escaped quotes.
_SECRET_PAIR = re.compile(
    rf"(?i)(?<![A-Za-z0-9])({_CONFIDENTIAL_NAMES})(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
    r"(?!\[REDACTED\])([^\s\"'\\,;&}\]]+)"
)
_ACCOUNT_NAMES = (
    r"bank[_-]?account[_-]?number|bank[_-]?client[_-]?account[_-]?number|client[_-]?account[_-]?id"
    r"|from[_-]?account[_-]?number|account[_-]?van|account[_-]?number|account[_-]?no\.?"
    r"|bank[_-]?routing[_-]?number|routing[_-]?number|contra[_-]?broker[_-]?account[_-]?id"
    r"|contra[_-]?broker[_-]?tax[_-]?id|account[_-]?at[_-]?broker|broker[_-]?account[_-]?id"
    r"|account[_-]?id[_-]?at[_-]?current[_-]?broker|safe[_-]?keeping[_-]?account[_-]?id"
    r"|member[_-]?account[_-]?id|tax[_-]?id|identifier|iban|ssn|tin"
    # the same in words, as error messages write them
    r"|account number|routing number|tax id|acct(?:\.|ount)? no\.?"
)
# An account number after its name: the value has a digit, may be written in groups of four
# (an IBAN as printed; each group with a digit, so words after a number stay), and the
# separator may be JSON, a repr, `=`, or a space.
_ACCOUNT_PAIR = re.compile(
    rf"(?i)(?<![A-Za-z0-9])({_ACCOUNT_NAMES})(?![A-Za-z0-9])"
    r"(\\?[\"']?\s*[:=]?\s*\\?[\"']?\s*)"
    r"((?=[A-Za-z-]*[0-9])[A-Za-z0-9][A-Za-z0-9-]{2,}(?: (?=[A-Za-z]{0,3}[0-9])[A-Za-z0-9]{4})*"
    r"(?: [0-9]{1,3})?)(?![A-Za-z0-9])"
)
# A number a few words after the name ("bankAccountNumber is invalid: 004455667788", as error
# text writes it): only digits (in groups) are taken there, so IBKR account ids stay visible.
_ACCOUNT_NEAR = re.compile(
    rf"(?i)(?<![A-Za-z0-9])({_ACCOUNT_NAMES})(?![A-Za-z0-9])([^0-9\n]{{1,40}}?)"
    r"(?<![A-Za-z0-9-])([0-9][0-9 -]{3,}[0-9])(?![A-Za-z0-9])"
)
# "account 004455667788", "Account #: 123456": an account written as digits only is never an
# IBKR account id (those start with letters, U46377), so it is a bank or broker account.
_ACCOUNT_DIGITS = re.compile(
    r"(?i)(?<![A-Za-z0-9])(account|acct\.?)(\s*(?:no\.?|number|#)?\s*[:=#]?\s*)"
    r"(?<![A-Za-z0-9-])([0-9][0-9 -]{3,}[0-9])(?![A-Za-z0-9])"
)
# An IBAN on its own: country, check digits, then 11 to 30 letters and digits (in groups).
_IBAN = re.compile(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# Cheap pre-checks: most text has none of these, and the patterns above are not run then.
_ACCOUNT_HINTS = re.compile(r"(?i)account|routing|tax|identifier|iban|ssn|tin|acct|van")
_SECRET_HINTS = re.compile(r"(?i)token|assertion|secret|key|password|auth|cookie|body")
_IBAN_HINT = re.compile(r"[A-Z]{2}[0-9]{2}")
# Shorter text cannot hold a secret or an account number together with its name.
_SHORTEST_SENSITIVE = 8
# Every hint above (and what the secret patterns start with), lower case: text shorter than a
# PEM body that holds none of them (nor an IBAN's start) needs no other pattern. Substring
# tests on the lowered text: several times faster than one case-blind alternation.
_HINTS = (
    "-----begin",
    "eyj",
    "bearer",
    "basic",
    "token",
    "assertion",
    "secret",
    "key",
    "password",
    "auth",
    "cookie",
    "body",
    "account",
    "routing",
    "tax",
    "identifier",
    "iban",
    "ssn",
    "tin",
    "acct",
    "van",
)


def scrub_text(text: str) -> str:
    """`text` without secrets (PEM private keys, JWS, bearer tokens, secret `key=value`
    pairs) and with bank, broker and tax account numbers masked (after their field name, or an
    IBAN anywhere). For free text: exception messages, IBKR's error text, reprs."""
    if len(text) < _SHORTEST_SENSITIVE:
        return text
    if len(text) < 192 and not _has_hint(text):
        # Most text (event names, paths, ids, times) holds none of the hints.
        return text
    return _scrub(text)


def _has_hint(text: str) -> bool:
    lowered = text.lower()
    # The four letters a case-blind pattern also takes for ASCII ones (İ lowers to i + dot).
    if "\u0131" in lowered or "\u017f" in lowered:
        lowered = lowered.replace("\u0131", "i").replace("\u017f", "s")
    return any(hint in lowered for hint in _HINTS) or _IBAN_HINT.search(text) is not None


def _scrub(text: str) -> str:
    if "-----BEGIN" in text:
        text = _PEM.sub(REDACTED, text)
    if len(text) >= 192:
        text = _PEM_LINES.sub(REDACTED, text)
    if "eyJ" in text:
        text = _JWS.sub(REDACTED, text)
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, text)
    if _SECRET_HINTS.search(text):
        text = _SECRET_PAIR.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    if _IBAN_HINT.search(text):
        text = _IBAN.sub(lambda m: str(mask_account_number(m.group(0))), text)
    if _ACCOUNT_HINTS.search(text):
        text = _ACCOUNT_PAIR.sub(_mask_third, text)
        text = _ACCOUNT_NEAR.sub(_mask_third, text)
        text = _ACCOUNT_DIGITS.sub(_mask_third, text)
    return text


def _mask_third(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2) + str(mask_account_number(match.group(3)))


# --- structured values -------------------------------------------------------------------------


def mask_bank_details(value: Any) -> Any:
    """A copy of a JSON-like value (mappings, lists, tuples, scalars) with secrets removed and
    account numbers masked, keys compared as `normalized_key` does; strings are scrubbed as
    free text. Structures deeper than `MAX_DEPTH` are cut there (never a RecursionError).

    Used for every log event, API bodies kept in the audit trail, the `result` and `error` of
    the status object, and dead-letter views.
    """
    return _mask(value, 0)


def _mask(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        masked: dict[Any, Any] = {}
        for key, item in value.items():
            if is_secret_key(key):
                masked[key] = REDACTED
            elif is_account_number_key(key):
                masked[key] = _mask_account_value(item, depth + 1)
            else:
                masked[key] = _mask(item, depth + 1)
        return masked
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        return [_mask(item, depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return scrub_text(bytes(value[:4096]).decode("utf-8", "replace"))
    return value


def _mask_account_value(value: Any, depth: int) -> Any:
    """Every scalar under an account-number key masked (containers walked)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping | list | tuple):
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        masked = {key: _mask_account_value(item, depth + 1) for key, item in items}
        return masked if isinstance(value, Mapping) else list(masked.values())
    return mask_account_number(value)


def redact_event(event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """A log event (a structlog event dict) with every value masked (see `mask_bank_details`)."""
    return {
        key: (REDACTED if is_secret_key(key) else _mask(value, 1))
        if not is_account_number_key(key)
        else _mask_account_value(value, 1)
        for key, value in event_dict.items()
    }


def redact_label(value: str) -> str:
    """A metric label value: scrubbed as free text (labels are read by anyone who can scrape)."""
    return scrub_text(value)
