"""Hostile message bodies against one running `ibkr-worker worker` (its defaults: threads and
prefetch included), real RabbitMQ and PostgreSQL, the sandbox over a socket.

Hypothesis builds at least 300 bodies: huge and tiny exponents (as JSON numbers and as
strings), amounts finer than IBKR's precision, deep nesting, long strings, wrong types, stray
dramatiq options, invalid UTF-8, missing or odd message ids, positional arguments, unknown
actors, too many values, random bytes. For each: within 10 s it is processed (sent to IBKR,
an IBKR status recorded), FAILED with the field and the reason named, or a dead letter with
its reason; an invalid request sends nothing to the sandbox. Throughout, the worker process
stays up and its peak RSS (VmHWM) stays under 400 MB.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, text

from tests.builders import transfer
from tests.integration.pipeline import Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

OUTCOME_WITHIN_S = 10.0
MAX_RSS_BYTES = 400 * 1024 * 1024
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # the default
KEPT_PREFIX = 64 * 1024
SENT = ("PROCESSED", "PENDING", "PENDING_VERIFICATION", "REJECTED")
_ids = itertools.count(7_000_000)


@dataclass(frozen=True)
class Case:
    """One body and what must become of it: `processed`, `failed` (naming `field`), `dead`,
    or `failed_or_dead` (naming `field` when FAILED)."""

    body: bytes
    message_id: str | None
    cids: tuple[int, ...]
    expect: str
    field: str | None = None
    what: str = ""


def envelope(kwargs: Any, message_id: Any = "", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "queue_name": "ibkr.instructions",
        "actor_name": "submit_instruction",
        "args": [],
        "kwargs": kwargs,
        "options": {},
        "message_id": message_id or str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    body.update(fields)
    return body


def encode(body: dict[str, Any], *replace: tuple[str, bytes]) -> bytes:
    """JSON of `body`, then each `"PLACEHOLDER"` string replaced by raw bytes (for what JSON
    libraries will not write: huge exponents, NaN, deep nesting, invalid UTF-8)."""
    raw = json.dumps(body).encode()
    for placeholder, value in replace:
        raw = raw.replace(json.dumps(placeholder).encode(), value)
    return raw


def case(
    kwargs: Any,
    expect: str,
    field: str | None = None,
    *,
    what: str,
    replace: tuple[tuple[str, bytes], ...] = (),
    **fields: Any,
) -> Case:
    body = envelope(kwargs, **fields)
    request = kwargs.get("request") if isinstance(kwargs, dict) else None
    cids: tuple[int, ...] = ()
    if isinstance(request, dict):
        members = request.get("instructions") or [request.get("instruction")]
        cids = tuple(
            m["clientInstructionId"]
            for m in members
            if isinstance(m, dict) and isinstance(m.get("clientInstructionId"), int)
        )
    message_id = body.get("message_id")
    return Case(
        encode(body, *replace),
        message_id if isinstance(message_id, str) else None,
        cids,
        expect,
        field,
        what,
    )


cid = st.builds(lambda: next(_ids))

STRAY_OPTIONS = st.dictionaries(
    st.sampled_from(
        [
            "eta",
            "delay",
            "retries",
            "max_retries",
            "min_backoff",
            "max_backoff",
            "time_limit",
            "max_age",
            "pipe_target",
            "pipe_ignore",
            "on_success",
            "on_failure",
            "on_retry_exhausted",
            "notify_shutdown",
            "throws",
            "anything_else",
        ]
    ),
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63),
        st.just(int(time.time() * 1000) + 10**10),
        st.text(max_size=20),
        st.booleans(),
        st.none(),
        st.just({"queue_name": "x", "actor_name": "submit_instruction", "args": [], "kwargs": {}}),
    ),
    min_size=1,
    max_size=6,
)


@st.composite
def valid_with_stray_options(draw: st.DrawFn) -> Case:
    return case(
        {"request": transfer(draw(cid))},
        "processed",
        what="stray options",
        options=draw(STRAY_OPTIONS),
    )


@st.composite
def amounts(draw: st.DrawFn) -> Case:
    n = draw(cid)
    kind = draw(st.sampled_from(["string", "number"]))
    text_value = draw(
        st.sampled_from(
            [
                "12.00000000001",  # finer than IBKR's 10 decimals
                "1e-20",
                "0.00000000001",
                "1e-200000",
                "1e200000",
                "1e400",
                "-5.00",
                "0",
                "1E+30",
            ]
        )
    )
    if kind == "string":
        return case(
            {"request": transfer(n, amount=text_value)},
            "failed",
            "instruction.amount",
            what=f"amount string {text_value}",
        )
    if "e" in text_value.lower() and abs(int(text_value.lower().split("e")[1])) > 90:
        # Written out, the number would be longer than the edge accepts: a dead letter.
        expect = "dead"
    else:
        expect = "failed"
    return case(
        {"request": transfer(n, amount="AMOUNT")},
        expect,
        "instruction.amount",
        what=f"amount number {text_value}",
        replace=(("AMOUNT", text_value.encode()),),
    )


@st.composite
def huge_exponents(draw: st.DrawFn) -> Case:
    exponent = draw(
        st.sampled_from(["1e-999999999", "1e999999999", "-1e-99999", "NaN", "Infinity"])
    )
    where = draw(st.sampled_from(["amount", "clientInstructionId", "sourceAccountId"]))
    n = draw(cid)
    return case(
        {"request": transfer(n, **{where: "X"})},
        "dead",
        what=f"{where}={exponent}",
        replace=(("X", exponent.encode()),),
    )


@st.composite
def deep(draw: st.DrawFn) -> Case:
    depth = draw(st.one_of(st.integers(1, 40), st.sampled_from([100, 1_000, 50_000, 300_000])))
    where = draw(st.sampled_from(["sourceAccountId", "currency", "amount"]))
    kind = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    nested = kind[0] * depth + b'"x"' + kind[1] * depth
    return case(
        {"request": transfer(draw(cid), **{where: "DEEP"})},
        "failed_or_dead",
        f"instruction.{where}",
        what=f"{where} nested {depth}",
        replace=(("DEEP", nested),),
    )


@st.composite
def long_strings(draw: st.DrawFn) -> Case:
    size = draw(st.sampled_from([65, 1_000, 70_000, 1_500_000, 2_200_000, 3_000_000]))
    char = draw(st.sampled_from(["x", "é", "\u4e2d", "\U0001f4b8"]))
    where = draw(st.sampled_from(["clientNote", "currency", "sourceAccountId"]))
    case_ = case(
        {"request": transfer(draw(cid), **{where: char * size})},
        "failed",
        f"instruction.{where}",
        what=f"{where} of {size} {char!r}",
    )
    if len(case_.body) > MAX_MESSAGE_BYTES:
        return Case(case_.body, case_.message_id, case_.cids, "dead", None, case_.what)
    return case_


@st.composite
def wrong_types(draw: st.DrawFn) -> Case:
    n = draw(cid)
    where = draw(st.sampled_from(["sourceAccountId", "targetAccountId", "currency", "amount"]))
    small = st.integers(min_value=-(2**63), max_value=2**63)
    value = draw(
        st.one_of(
            st.none(),
            st.booleans(),
            # An integer is a valid amount: only the other fields get one.
            st.nothing() if where == "amount" else small,
            st.lists(small, max_size=3),
            st.dictionaries(st.text(max_size=3), small, max_size=2),
        )
    )
    return case(
        {"request": transfer(n, **{where: value})},
        "failed",
        f"instruction.{where}",
        what=f"{where}={value!r}",
    )


@st.composite
def not_requests(draw: st.DrawFn) -> Case:
    n = draw(cid)
    choice = draw(st.integers(0, 7))
    if choice == 0:
        return case({"request": [transfer(n)]}, "dead", what="request is a list")
    if choice == 1:
        return case({"request": transfer(n), "priority": 1}, "dead", what="extra keyword")
    if choice == 2:
        return case({"request": transfer(n)}, "dead", what="positional", args=[1])
    if choice == 3:
        return case({"request": transfer(n)}, "dead", what="unknown actor", actor_name="pay_me")
    if choice == 4:
        return case({"request": transfer(n)}, "dead", what="message id not a string", message_id=5)
    if choice == 5:
        return case(
            {"request": transfer(n), "correlation_id": draw(st.integers())},
            "failed",
            "correlation_id",
            what="correlation id not a string",
        )
    if choice == 6:
        many = b"[" + b",".join([b"0"] * 120_000) + b"]"
        return case(
            {"request": transfer(n, clientNote="MANY")},
            "dead",
            what="too many values",
            replace=(("MANY", many),),
        )
    return case(
        {"request": transfer(n, clientNote="BAD")},
        "dead",
        what="invalid UTF-8",
        replace=(("BAD", b'"\xff\xfe\xc0"'),),
    )


@st.composite
def raw_bytes(draw: st.DrawFn) -> Case:
    body = draw(st.binary(max_size=300))
    return Case(body, None, (), "dead", None, "random bytes")


@st.composite
def without_message_id(draw: st.DrawFn) -> Case:
    body = envelope({"request": transfer(draw(cid))})
    body.pop("message_id")
    if draw(st.booleans()):
        body["message_id"] = ""
    return Case(
        encode(body),
        None,
        (body["kwargs"]["request"]["instruction"]["clientInstructionId"],),
        "processed",
        None,
        "no message id",
    )


HOSTILE = st.one_of(
    valid_with_stray_options(),
    amounts(),
    huge_exponents(),
    deep(),
    long_strings(),
    wrong_types(),
    not_requests(),
    raw_bytes(),
    without_message_id(),
)


class Observer:
    """Publishes bodies on one channel and reads outcomes over one engine."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.engine: Engine = create_engine(pipeline.database_url)
        self.connection = pika.BlockingConnection(pika.URLParameters(pipeline.broker_url))
        self.channel = self.connection.channel()
        self.pid = pipeline.processes["worker"].pid
        self.peak_rss = 0

    def publish(self, body: bytes) -> None:
        self.channel.basic_publish("", "ibkr.instructions", body)

    def rss_peak(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        self.peak_rss = int(line.split()[1]) * 1024
        return self.peak_rss

    def outcome(self, case: Case) -> tuple[str, str] | None:
        """(`processed` | `failed` | `dead`, the reason) once the case has one, else None."""
        kept = case.body if len(case.body) <= MAX_MESSAGE_BYTES else case.body[:KEPT_PREFIX]
        digest = hashlib.sha256(kept).hexdigest()
        with self.engine.connect() as connection:
            letter = connection.execute(
                text(
                    "SELECT reason FROM dead_letters WHERE body_sha256 = :digest "
                    "OR (message_id = :message_id AND message_id <> '')"
                ),
                {"digest": digest, "message_id": case.message_id or ""},
            ).first()
            if letter is not None:
                return "dead", str(letter[0])
            if not case.cids:
                return None
            rows = connection.execute(
                text(
                    "SELECT status, error_message FROM client_instructions "
                    "WHERE client_instruction_id = ANY(:cids) AND duplicate_of_id IS NULL"
                ),
                {"cids": list(case.cids)},
            ).all()
        if len(rows) < len(case.cids):
            return None
        if all(row[0] == "FAILED" for row in rows):
            return "failed", " | ".join(str(row[1]) for row in rows)
        if all(row[0] in SENT for row in rows):
            return "processed", ""
        return None

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


@pytest.fixture
def observer(make_pipeline: Callable[..., Pipeline]) -> Iterator[Observer]:
    pipeline = make_pipeline(speed=60.0)
    pipeline.start("worker", "worker")  # the defaults: threads, prefetch, MAX_MESSAGE_BYTES
    observer = Observer(pipeline)
    # Started and consuming before the first example.
    pipeline.publish([transfer(next(_ids))])  # through dramatiq: declares the queue first
    pipeline.wait_for(lambda: "PROCESSED" in pipeline.statuses().values(), 60, "the worker")
    yield observer
    observer.close()


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(HOSTILE)
def test_every_hostile_message_ends_in_one_of_three_outcomes_within_seconds(
    observer: Observer, hostile: Case
) -> None:
    pipeline = observer.pipeline
    started = time.monotonic()
    observer.publish(hostile.body)
    found = None
    while found is None and time.monotonic() - started < OUTCOME_WITHIN_S:
        time.sleep(0.05)
        found = observer.outcome(hostile)
    assert pipeline.alive("worker"), f"the worker died on {hostile.what}\n{pipeline.logs()}"
    assert found is not None, f"no outcome within {OUTCOME_WITHIN_S} s for {hostile.what}"
    outcome, reason = found
    allowed = {"failed_or_dead": {"failed", "dead"}}.get(hostile.expect, {hostile.expect})
    assert outcome in allowed, (hostile.what, outcome, reason)
    if outcome == "failed" and hostile.field:
        assert hostile.field in reason, (hostile.what, reason)
    if outcome == "dead":
        assert reason.strip(), hostile.what
    if outcome != "processed":
        sent = set(pipeline.sandbox.ledger_counts())
        assert not sent & set(hostile.cids), (hostile.what, "sent to the sandbox")
    assert observer.rss_peak() < MAX_RSS_BYTES, (hostile.what, observer.peak_rss)
