"""What an IBKR answer means, parsed leniently (reference §4.4, §4.5, §7.1 and the quirks).

:func:`parse_response` is a pure function of the HTTP status, headers and body; it never raises
on an odd body. IBKR's own examples disagree on shapes (`instructionStatus` vs `status`, nested
`error` vs flat `code`/`description`, numbers vs numeric strings), so every variant is read.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

from worker import jsontext
from worker.ibkr import ids
from worker.redaction import scrub_text

_MAX_RAW_TEXT = 2000
#: The longest wait a Retry-After may ask for; longer waits are cut to this, so that no answer
#: can park a request for long (the poll deadline still decides when it is overdue).
MAX_RETRY_AFTER_S = 3600.0
# Delta seconds (RFC 9110: digits); a sign and a fraction are tolerated, nothing else.
_DELTA_SECONDS = re.compile(r"[-+]?[0-9]{1,32}(\.[0-9]{1,9})?")


class Outcome(enum.StrEnum):
    """How one API call ended, as far as the caller must act on it."""

    FINAL = "FINAL"  # 201: processed synchronously, the result is final
    ACCEPTED = "ACCEPTED"  # 202/207, or a 200 status GET: read the instruction statuses
    DUPLICATE = "DUPLICATE"  # 208: the clientInstructionId was used more than once
    REJECTED = "REJECTED"  # 403/422 carrying instruction ids: IBKR refused the instruction
    INVALID = "INVALID"  # 400 (or 413, or 422 without ids): the request itself is wrong
    NOT_FOUND = "NOT_FOUND"  # 404
    THROTTLED = "THROTTLED"  # 429: nothing was processed; retry after `retry_after_s`
    TRANSIENT = "TRANSIENT"  # 5xx, other unexpected codes, or not sent at all (retryable)
    UNKNOWN = "UNKNOWN"  # sent, but no response arrived (timeout, reset): outcome uncertain
    NOT_SENT = "NOT_SENT"  # a POST that never left (no connection, no slot in time): nothing
    # reached IBKR, so nothing can register
    AUTH_FAILED = "AUTH_FAILED"  # 401 after re-authentication, or a gateway 403


@dataclass(frozen=True)
class InstructionResult:
    """One instruction's result inside an answer (`instructionResult` or a bulk item).

    `status` is IBKR's instruction status (`PENDING`, `PROCESSED`, ...; unknown values kept
    as they are); `extra` holds every other field IBKR returned (`depositDetails`,
    `instructionHistory`, `withdrawableAmount`, ...); `item_http_status` is the item's own
    `status` number in bulk answers (else the envelope's).
    """

    client_instruction_id: int | None
    instruction_type: str | None
    status: str | None
    instruction_id: int | None
    ib_reference_id: int | None
    error_code: str | None
    error_message: str | None
    description: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    item_http_status: int | None = None


@dataclass(frozen=True)
class ApiExchange:
    """What the audit trail keeps of one call: `path` is the path template, `latency_ms` the
    time to the answer (None when none came), `response_body` the parsed JSON (or the start of
    a non-JSON body as text)."""

    method: str
    path: str
    http_status: int | None
    latency_ms: float | None
    response_body: Any


@dataclass(frozen=True)
class ApiResult:
    """The meaning of one call. `retry_after_s` is the Retry-After of a 429 (THROTTLED) or a
    503 (TRANSIENT) in seconds, 0 to MAX_RETRY_AFTER_S (None: none readable);
    `invalid_arguments` lists `(field, description)` pairs of a 400. Ids follow
    :mod:`worker.ibkr.ids`; a `clientInstructionId` or `instructionSetId` of 0 (IBKR's "none")
    reads as None."""

    outcome: Outcome
    http_status: int | None
    instruction_set_id: int | None
    results: tuple[InstructionResult, ...]
    invalid_arguments: tuple[tuple[str, str], ...]
    error_detail: str | None
    retry_after_s: float | None
    exchange: ApiExchange

    def result_for(self, client_instruction_id: int) -> InstructionResult | None:
        """The result of the instruction with this clientInstructionId, if the answer has it."""
        for result in self.results:
            if result.client_instruction_id == client_instruction_id:
                return result
        return None


# --- small lenient readers --------------------------------------------------------------------


def as_int(value: Any) -> int | None:
    """An id from an int, an integral Decimal/float or a numeric string, within the id domain
    of :mod:`worker.ibkr.ids` (signed, |id| <= 2**53 - 1); else None."""
    return ids.as_id(value)


def _as_set_or_client_id(value: Any) -> int | None:
    # IBKR answers 0 for "none" (instructions created outside the API); read it as no id.
    number = ids.as_id(value)
    return None if number == ids.NO_ID else number


def _as_http_status(value: Any) -> int | None:
    number = ids.as_id(value)
    return number if number is not None and 100 <= number <= 599 else None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | Decimal | float):
        return str(value)
    return None


def _scrubbed(value: Any) -> str | None:
    """IBKR's error text, as `_as_text`, with secrets and account numbers scrubbed: it reaches
    events, the audit and logs."""
    text = _as_text(value)
    return scrub_text(text) if text else text


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta seconds or an HTTP date, as a finite
    number from 0 to MAX_RETRY_AFTER_S (longer waits are cut to it). None when the header is
    absent or unreadable (`inf`, `1e9`, text): the caller then waits as it would without one."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return min(max(float(text), 0.0), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    try:
        seconds = (when - current).total_seconds()
    except OverflowError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


# Keys read into named fields; everything else of a result goes to `extra`.
_RESULT_KEYS = frozenset(
    {
        "clientInstructionId",
        "instructionType",
        "instructionStatus",
        "status",
        "instructionId",
        "ibReferenceId",
        "error",
        "description",
    }
)


def parse_instruction_result(
    raw: Mapping[str, Any], item_http_status: int | None
) -> InstructionResult:
    """One `instructionResult` object, read leniently."""
    status = raw.get("instructionStatus")
    if status is None and isinstance(raw.get("status"), str):
        status = raw.get("status")
    error_code: str | None = None
    error_message: str | None = None
    error = raw.get("error")
    if isinstance(error, Mapping):
        error_code = _as_text(error.get("errorCode") or error.get("code"))
        error_message = _scrubbed(error.get("errorMessage") or error.get("message"))
    elif isinstance(error, str) and error:
        error_message = scrub_text(error)
    description = _scrubbed(raw.get("description"))
    code = _as_text(raw.get("code"))
    extra = {key: value for key, value in raw.items() if key not in _RESULT_KEYS}
    # The flat form (`code` + `description`) is an error only on rejected instructions; on a
    # pending query `code` is just "PENDING" and stays in `extra`.
    if error_code is None and code and str(status).upper() == "REJECTED":
        error_code = code
        error_message = error_message or description
        extra.pop("code", None)
    elif code == "":
        extra.pop("code", None)
    return InstructionResult(
        client_instruction_id=_as_set_or_client_id(raw.get("clientInstructionId")),
        instruction_type=_as_text(raw.get("instructionType")),
        status=_as_text(status),
        instruction_id=as_int(raw.get("instructionId")),
        ib_reference_id=as_int(raw.get("ibReferenceId")),
        error_code=error_code,
        error_message=error_message,
        description=description or None,
        extra=extra,
        item_http_status=item_http_status,
    )


def _invalid_arguments(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    items = body.get("invalidArguments")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping):
                description = scrub_text(str(item.get("description", "")).strip())
                found.append((str(item.get("field", "")), description))
    return found


def _bulk_item(
    item: Any, envelope_status: int | None, invalid: list[tuple[str, str]]
) -> InstructionResult | None:
    if not isinstance(item, Mapping):
        return None
    item_status = _as_http_status(item.get("status")) or envelope_status
    inner = item.get("instructionResult")
    if isinstance(inner, Mapping):
        return parse_instruction_result(inner, item_status)
    if "clientInstructionId" in item or "instructionStatus" in item:
        # A bare result without the envelope (seen in some answers): read it as is.
        return parse_instruction_result(item, envelope_status)
    # A 400 problem object standing for a malformed member: no ids, only the fields.
    item_invalid = _invalid_arguments(item)
    invalid.extend(item_invalid)
    return InstructionResult(
        client_instruction_id=None,
        instruction_type=None,
        status=None,
        instruction_id=None,
        ib_reference_id=None,
        error_code=_as_text(item.get("type")),
        error_message=_scrubbed(item.get("detail") or item.get("title")),
        description=None,
        extra={key: value for key, value in item.items() if key != "status"},
        item_http_status=item_status,
    )


def _problem_text(body: Any) -> str | None:
    if not isinstance(body, Mapping):
        return None
    parts = [
        str(body[key]).strip()
        for key in ("title", "detail", "message", "error")
        if isinstance(body.get(key), str | int) and str(body.get(key)).strip()
    ]
    return scrub_text(": ".join(parts)) if parts else None


def _outcome_for(status_code: int, carries_ids: bool) -> Outcome:
    if status_code == 201:
        return Outcome.FINAL
    if status_code in {200, 202, 207}:
        return Outcome.ACCEPTED
    if status_code == 208:
        return Outcome.DUPLICATE
    if status_code == 401:
        return Outcome.AUTH_FAILED
    if status_code == 403:
        # With ids it is IBKR refusing the instruction (ERROR_PERMISSION_DENIED); without
        # them the gateway refused the token (scope) before anything was processed.
        return Outcome.REJECTED if carries_ids else Outcome.AUTH_FAILED
    if status_code == 422:
        # A 422 without ids allocated nothing: the request itself cannot be processed.
        return Outcome.REJECTED if carries_ids else Outcome.INVALID
    if status_code in {400, 413}:
        return Outcome.INVALID
    if status_code == 404:
        return Outcome.NOT_FOUND
    if status_code == 429:
        return Outcome.THROTTLED
    return Outcome.TRANSIENT


def parse_response(
    method: str,
    path: str,
    status_code: int,
    body_bytes: bytes,
    latency_ms: float | None,
    headers: Mapping[str, str] | None = None,
    *,
    now: datetime | None = None,
) -> ApiResult:
    """The meaning of an IBKR answer. `path` is the path template of the endpoint called;
    `latency_ms` the time to the answer; `now` (default: the current time) dates a
    Retry-After given as an HTTP date. Never raises on an odd body."""
    error_detail: str | None = None
    body: Any = None
    if body_bytes:
        try:
            body = jsontext.loads(body_bytes)
        except (ValueError, RecursionError):
            text = body_bytes[:_MAX_RAW_TEXT].decode("utf-8", errors="replace")
            body = scrub_text(text)
            error_detail = f"HTTP {status_code} with a body that is not JSON: {body[:200]!r}"
    results: list[InstructionResult] = []
    invalid: list[tuple[str, str]] = []
    instruction_set_id: int | None = None
    if isinstance(body, Mapping):
        instruction_set_id = _as_set_or_client_id(body.get("instructionSetId"))
        envelope_status = _as_http_status(body.get("status")) or status_code
        single = body.get("instructionResult")
        if isinstance(single, Mapping):
            results.append(parse_instruction_result(single, envelope_status))
        many = body.get("instructionResults")
        if isinstance(many, list):
            for item in many:
                result = _bulk_item(item, envelope_status, invalid)
                if result is not None:
                    results.append(result)
        invalid = _invalid_arguments(body) + invalid
        if status_code >= 300 and error_detail is None:
            error_detail = _problem_text(body)
    elif body is not None and error_detail is None and status_code >= 300:
        error_detail = scrub_text(str(body))[:200]
    carries_ids = instruction_set_id is not None or any(
        result.instruction_id is not None for result in results
    )
    outcome = _outcome_for(status_code, carries_ids)
    if outcome in {Outcome.FINAL, Outcome.ACCEPTED, Outcome.DUPLICATE} and not isinstance(
        body, Mapping
    ):
        # A success code without a readable envelope tells us nothing we can record.
        outcome = Outcome.TRANSIENT
        error_detail = error_detail or f"HTTP {status_code} without a JSON object body"
    if outcome is not Outcome.FINAL and outcome is not Outcome.ACCEPTED and error_detail is None:
        error_detail = f"HTTP {status_code}"
    retry_after = None
    if status_code in (429, 503):
        # Both ask the caller to come back later: the wait is read (and bounded) alike.
        retry_after = retry_after_seconds(_header(headers, "Retry-After"), now)
    return ApiResult(
        outcome=outcome,
        http_status=status_code,
        instruction_set_id=instruction_set_id,
        results=tuple(results),
        invalid_arguments=tuple(invalid),
        error_detail=error_detail,
        retry_after_s=retry_after,
        exchange=ApiExchange(method, path, status_code, latency_ms, body),
    )


def no_response(
    method: str,
    path: str,
    outcome: Outcome,
    detail: str,
    *,
    latency_ms: float | None = None,
    http_status: int | None = None,
) -> ApiResult:
    """A result for a call that got no IBKR answer: UNKNOWN (sent, answer lost), TRANSIENT
    (never sent) or AUTH_FAILED (no token)."""
    return ApiResult(
        outcome=outcome,
        http_status=http_status,
        instruction_set_id=None,
        results=(),
        invalid_arguments=(),
        error_detail=detail,
        retry_after_s=None,
        exchange=ApiExchange(method, path, http_status, latency_ms, None),
    )
