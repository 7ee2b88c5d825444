"""The one redaction (worker.redaction) and its use in the log set-up: secrets never appear,
bank, broker and tax account numbers are masked everywhere, IBKR account ids stay visible."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.logging import configure_logging
from worker.redaction import (
    REDACTED,
    TOO_DEEP,
    _scrub,
    is_account_number_key,
    mask_account_number,
    mask_bank_details,
    scrub_text,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "worker" / "ibkr" / "schemas"
BANK = "004455667788"
ROUTING = "122199983"
JWS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJpdC1jbGllbnQifQ.c2lnbmF0dXJlLWJ5dGVz"

# Every field of IBKR's two OpenAPI documents that carries a bank, broker or tax account number
# or a routing number (read from the documents' schemas; see the test below).
ACCOUNT_NUMBER_FIELDS = {
    "bankAccountNumber",
    "bankClientAccountNumber",
    "bankRoutingNumber",
    "clientAccountId",
    "identifier",
    "fromAccountNumber",
    "accountVan",
    "contraBrokerAccountId",
    "contraBrokerTaxId",
    "accountAtBroker",
    "brokerAccountId",
    "accountIdAtCurrentBroker",
    "safeKeepingAccountId",
    "memberAccountId",
}
VISIBLE_FIELDS = {"accountId", "sourceAccountId", "targetAccountId", "bankName", "currency"}


def _schema_field_names() -> set[str]:
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            properties = value.get("properties")
            if isinstance(properties, dict):
                names.update(properties)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in SCHEMAS.glob("*.json"):
        walk(json.loads(path.read_text()))
        # Examples name fields the schemas do not (fromAccountNumber of deposits).
        names.update(
            key for key in ACCOUNT_NUMBER_FIELDS if f'"{key}"' in path.read_text(errors="ignore")
        )
    return names


def test_every_account_number_field_of_the_openapi_documents_is_masked() -> None:
    names = _schema_field_names()
    assert ACCOUNT_NUMBER_FIELDS <= names  # the list is read from the documents, not invented
    for name in ACCOUNT_NUMBER_FIELDS:
        assert is_account_number_key(name), name
        masked = mask_bank_details({"outer": [{name: BANK}]})
        assert masked["outer"][0][name] == "********7788", name
        for text in (
            json.dumps({name: BANK}),
            repr({name: BANK}),
            f"{name}={BANK}",
            f"{name} is invalid: {BANK}",
            json.dumps(json.dumps({name: BANK})),  # a JSON body quoted inside a log line
        ):
            assert BANK not in scrub_text(text), (name, text, scrub_text(text))
    for name in VISIBLE_FIELDS:
        assert not is_account_number_key(name), name


def test_ibkr_account_ids_stay_visible() -> None:
    request = {"sourceAccountId": "U46377", "targetAccountId": "U15667", "accountId": "U46377"}
    assert mask_bank_details(request) == request
    for text in (
        "Account U46377 does not exist",
        "identifier is required for account U46377",
        "Insufficient withdrawable cash in U46377 (USD)",
    ):
        assert scrub_text(text) == text


def test_secrets_are_removed_whole_from_structures_and_text() -> None:
    event = {
        "access_token": JWS,
        "Authorization": f"Bearer {JWS}",
        "client_assertion": JWS,
        "private_key_pem": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
        "nested": {"signed_body": "anything at all", "token": "opaque-123456"},
    }
    masked = mask_bank_details(event)
    assert masked["access_token"] == masked["client_assertion"] == REDACTED
    assert masked["nested"] == {"signed_body": REDACTED, "token": REDACTED}
    for text in (
        f"POST failed: Authorization: Bearer {JWS}",
        f'{{"access_token": "{JWS}", "token_type": "Bearer"}}',
        "access_token=opaque-value-123456&scope=x",
        '"client_assertion": "opaque-value-123456"',
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n(cut short)",
    ):
        scrubbed = scrub_text(text)
        assert "opaque-value" not in scrubbed and "MIIE" not in scrubbed, scrubbed
        assert "eyJ" not in scrubbed, scrubbed
    assert scrub_text('"token_type": "Bearer"') == '"token_type": "Bearer"'


def test_ibans_and_numbers_in_words_are_masked_in_free_text() -> None:
    text = (
        "IBAN GB29 NWBK 6016 1331 9268 19 and DE89370400440532013000 refused; "
        f"routing number {ROUTING}, account number {BANK}"
    )
    scrubbed = scrub_text(text)
    for secret in ("6016 1331 9268", "370400440532", ROUTING, BANK):
        assert secret not in scrubbed, scrubbed
    assert scrubbed.endswith("********7788")
    # An account written as digits only is a bank or broker account (IBKR's start with letters).
    assert scrub_text(f"Account U99999 unknown; bank account {BANK} held") == (
        "Account U99999 unknown; bank account ********7788 held"
    )


def test_ibkr_error_text_is_scrubbed_where_it_is_parsed() -> None:
    from worker.ibkr.responses import parse_response

    body = {
        "instructionSetId": 7,
        "instructionResult": {
            "clientInstructionId": 1,
            "instructionId": 2,
            "instructionStatus": "REJECTED",
            "error": {"errorCode": "X", "errorMessage": f"bankAccountNumber {BANK} refused"},
            "description": f"routing number {ROUTING} unknown",
        },
        "invalidArguments": [{"field": "iban", "description": f"iban {BANK} is not valid"}],
        "detail": f"bank account {BANK}",
    }
    result = parse_response("POST", "/p", 422, json.dumps(body).encode(), 1.0)
    texts = [
        result.results[0].error_message,
        result.results[0].description,
        result.invalid_arguments[0][1],
        result.error_detail,
    ]
    assert all(text and BANK not in text and ROUTING not in text for text in texts), texts


def test_short_values_show_less() -> None:
    assert mask_account_number("004455667788") == "********7788"
    assert mask_account_number(ROUTING) == "*******83"
    assert mask_account_number("132456") == "******"
    assert mask_account_number(None) is None


def test_deep_structures_are_cut_not_recursed_into() -> None:
    # Revert check: without the depth cut in `_mask` this raises RecursionError.
    deep: Any = {"bankAccountNumber": BANK}
    for _ in range(50_000):
        deep = {"a": [deep]}
    masked = mask_bank_details(deep)
    level = 0
    while isinstance(masked, dict):
        masked = masked["a"][0] if isinstance(masked["a"], list) else masked["a"]
        level += 1
    assert masked == TOO_DEEP and level < 64


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(sorted(ACCOUNT_NUMBER_FIELDS)))
def test_a_number_after_its_field_name_never_survives_whatever_surrounds_it(
    noise: str, name: str
) -> None:
    for text in (f"{noise} {name}: {BANK} {noise}", f'{noise}"{name}":"{BANK}"{noise}'):
        assert BANK not in scrub_text(text)


# Letters the scrubbing's patterns name, in both cases and with the non-ASCII letters a
# case-blind pattern also takes (long s, dotless i, dotted capital I, the Kelvin sign).
_HINTED = st.text(
    alphabet=st.sampled_from(
        [
            *"aAbBcCdDeEiIkKnNoOpPrRsStTuUvVwWyYjJ0123456789 =:\"'-_.",
            "\u017f",
            "\u0131",
            "\u0130",
            "\u212a",
        ]
    ),
    max_size=190,
)


@settings(max_examples=500, deadline=None)
@given(_HINTED)
def test_the_quick_screen_passes_by_no_text_the_patterns_would_change(text: str) -> None:
    """Revert check: with `_has_hint` looking only at `text.lower()`, `pa\\u017fsword=...` (long
    s, which the case-blind patterns read as s) passed the screen unscrubbed."""
    assert scrub_text(text) == _scrub(text)
    assert scrub_text("pa\u017fsword=hunter22") == "pa\u017fsword=" + REDACTED


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`json_logs()` configures the logging on a stderr of the test's own (never closed: loggers
    cache their file) and returns a reader of the JSON lines written since; the previous
    configuration is restored after."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stderr = io.StringIO()

    def start() -> Any:
        monkeypatch.setattr(sys, "stderr", stderr)
        configure_logging("DEBUG", "json")
        return lambda: [json.loads(line) for line in stderr.getvalue().splitlines() if line]

    yield start
    root.handlers[:], root.level = saved_handlers, saved_level
    structlog.configure(**saved_config)


def test_a_stdlib_record_with_exc_info_keeps_its_traceback_scrubbed(json_logs: Any) -> None:
    """Revert check: without `format_exc_info` in the foreign pre-chain the exception reaches
    the renderer as an object (its text unscrubbed) and the traceback is lost."""
    read = json_logs()
    logger = logging.getLogger("sqlalchemy.pool")
    try:
        raise RuntimeError(f"bankAccountNumber={BANK} Authorization: Bearer {JWS}")
    except RuntimeError:
        logger.error("connection failed", exc_info=True)
    [line] = read()
    text = json.dumps(line)
    assert BANK not in text and "eyJ" not in text
    assert "Traceback (most recent call last)" in line["exception"]
    assert "RuntimeError: bankAccountNumber=********7788" in line["exception"]


def test_dramatiq_names_a_failed_message_by_its_id_never_by_its_request(json_logs: Any) -> None:
    """Revert check: without the `DramatiqMessageArguments` filter the line carries the whole
    request (`submit_instruction(request={...})`)."""
    read = json_logs()
    message = dramatiq.Message(
        queue_name="ibkr.instructions",
        actor_name="submit_instruction",
        args=(),
        kwargs={"request": {"instruction": {"note": "secret plan", "bankAccountNumber": BANK}}},
        options={},
    )
    logging.getLogger("dramatiq.worker.WorkerThread").error(
        "Failed to process message %s with unhandled exception.", message
    )
    [line] = read()
    assert "secret plan" not in line["event"] and BANK not in line["event"]
    assert line["event"] == (
        "Failed to process message submit_instruction message "
        f"{message.message_id} with unhandled exception."
    )
