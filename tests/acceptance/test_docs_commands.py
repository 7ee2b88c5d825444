"""The docs cannot rot: every shell command they show is run here, or allow-listed with the test
that covers it instead, and every JSON example is checked against the code.

Commands are the lines of the ```sh / ```bash / ```console blocks of README.md and docs/*.md (and
any line starting with `$ `). Each is classified by what it runs:

- `local`: `ibkr-worker migrate`, `status`, `audit`, `dead-letters list`, `keygen`, `sandbox`:
  run in a temporary working directory against a SQLite database seeded with the instruction
  the docs talk about (1012983), with no outside service. The first is run through bash as its
  own process, the sandbox too (it runs until stopped); the others, to save an interpreter
  start each, go through the same command-line entry point one after the other in one process,
  with the `NAME=value` prefixes they show as their environment;
- `pipeline`: `worker`, `scheduler`, `submit`, `health`, `dead-letters replay`, and the commands
  with a placeholder the docs ask the reader to fill in: run verbatim (placeholders filled in
  from what the previous command printed) against PostgreSQL, a RabbitMQ vhost and the sandbox;
- `postgres`: `psql` and `pg_dump`, run against a seeded PostgreSQL database (the URL of the
  docs' example host replaced by the test's);
- `ALLOWED`: what cannot run inside a test, with the reason and the test that covers it.

A command that fits none of these fails `test_every_command_in_the_docs_is_run_or_allow_listed`:
add a runner or an allow-list entry when the docs gain a command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest
from click.testing import CliRunner

from models import ClientInstruction
from worker.tracking.record import ApiCall, change_status

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_FENCES = frozenset({"sh", "bash", "console", "shell"})
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>]*>")
# The docs' example host and database; the tests put their own database in its place.
DOCS_PG_URL = "postgresql://ibkr@127.0.0.1/ibkr_worker"
DOCS_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

# The instruction the docs look up (README, operating.md, audit.md), seeded before they run.
SEED_ID = 1012983
SEED_MESSAGE_ID = "4f7a2c8e-2b0e-4a51-9a43-0b7d5c1e9f10"
SEED_CORRELATION_ID = "payroll-2026-11"
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

LOCAL = frozenset(
    {
        ("ibkr-worker", "migrate"),
        ("ibkr-worker", "status"),
        ("ibkr-worker", "audit"),
        ("ibkr-worker", "dead-letters", "list"),
        ("ibkr-worker", "keygen"),
        ("ibkr-worker", "sandbox"),
    }
)
PIPELINE = frozenset(
    {
        ("ibkr-worker", "worker"),
        ("ibkr-worker", "scheduler"),
        ("ibkr-worker", "submit"),
        ("ibkr-worker", "health"),
        ("ibkr-worker", "dead-letters", "replay"),
    }
)
POSTGRES = frozenset({("psql",), ("pg_dump",)})
LONG_RUNNING = frozenset({("ibkr-worker", "worker"), ("ibkr-worker", "scheduler")})
# Placeholders the pipeline fills in from what the command before printed.
PLACEHOLDERS = frozenset({"<messageId printed by submit>", "<clientInstructionId>"})

# Commands that cannot run inside a test: the reason, and what covers them instead.
ALLOWED: dict[str, tuple[str, str]] = {
    "make demo": (
        "builds a virtualenv and runs `ibkr-worker demo`; the demo itself is the test's subject",
        "tests/acceptance/test_demo.py",
    ),
    "make test": (
        "is this very suite (after .ci/ensure-services); running it from a test would recurse",
        ".ci/run, which CI runs on a clean clone",
    ),
}

# The files the docs' `submit` commands name, made from the docs' own JSON examples.
SUBMIT_FILES = ("transfer.json", "requests.json", "requests.jsonl")
# Request types whose example must end PROCESSED against the sandbox (the others must at least be
# accepted by it: deposits wait for funds, asset transfers take days, ACH verification takes
# 7-15 minutes, and the verification and cancel examples name instructions the sandbox does not
# have).
MUST_BE_PROCESSED = frozenset(
    {
        "INTERNAL_CASH_TRANSFER",
        "INTERNAL_POSITION_TRANSFER",
        "WITHDRAWAL",
        "QUERY_WITHDRAWABLE_FUNDS",
        "QUERY_WITHDRAWABLE_CASH_EQUITY",
        "DELETE_BANK_INSTRUCTION",
        "QUERY_BANK_INSTRUCTION",
        "QUERY_RECURRING_INSTRUCTIONS",
        "QUERY_RECENT_INSTRUCTIONS",
    }
)
FINAL = frozenset({"PROCESSED", "REJECTED", "FAILED", "CONFLICT"})
NOT_ACCEPTED = frozenset({"RECEIVED", "SUBMITTING", "FAILED", "CONFLICT"})


# --- reading the docs -------------------------------------------------------------------------


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    block: str  # commands of one fenced block share it
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"

    @property
    def program(self) -> tuple[str, ...]:
        """(`ibkr-worker`, subcommand[, sub-subcommand]), or the program alone (`make`, `psql`)."""
        words = [w for w in shlex.split(self.text) if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)]
        if not words:
            return ()
        if words[0] != "ibkr-worker" or len(words) < 2:
            return (words[0],)
        if words[1] == "dead-letters" and len(words) > 2:
            return tuple(words[:3])
        return tuple(words[:2])

    @property
    def placeholders(self) -> list[str]:
        return PLACEHOLDER.findall(self.text)

    @property
    def shows_help(self) -> bool:
        return "--help" in shlex.split(self.text)


def _fences(path: Path) -> Iterator[tuple[str, int, list[tuple[int, str]]]]:
    """(language, block number, [(line number, line)]) of every fenced block of a file; the lines
    keep their indentation relative to the fence (fences inside list items are indented)."""
    language: str | None = None
    lines: list[tuple[int, str]] = []
    indent = 0
    number = 0
    for index, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            if language is None:
                language = stripped[3:].strip().lower()
                indent = len(raw) - len(raw.lstrip())
                lines = []
            else:
                number += 1
                yield language, number, lines
                language = None
            continue
        if language is not None:
            lines.append((index, raw[indent:].rstrip()))


def doc_commands() -> list[DocCommand]:
    commands = []
    for path in DOC_FILES:
        name = path.relative_to(ROOT).as_posix()
        for language, block, lines in _fences(path):
            for number, raw in lines:
                line = raw.strip()
                if line.startswith("$ "):
                    text = line[2:]
                elif language in SHELL_FENCES and line and not line.startswith("#"):
                    text = line
                else:
                    continue
                commands.append(DocCommand(name, number, f"{name}#{block}", _strip_comment(text)))
    return commands


def _strip_comment(line: str) -> str:
    """The command without a trailing `# comment` (outside quotes)."""
    end = len(line)
    quote: str | None = None
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            end = position
            break
    return line[:end].strip()


def json_blocks(path: Path) -> list[tuple[int, Any]]:
    """(first line, parsed value) of every ```json block; a block that does not parse fails."""
    blocks = []
    for language, _block, lines in _fences(path):
        if language != "json" or not lines:
            continue
        text = "\n".join(line for _number, line in lines)
        try:
            blocks.append((lines[0][0], json.loads(text)))
            continue
        except json.JSONDecodeError:
            pass
        for number, line in lines:  # JSON Lines: every line a value of its own
            try:
                blocks.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                pytest.fail(f"{path.name}:{number}: the JSON example does not parse: {error}")
    return blocks


def classify(command: DocCommand) -> str:
    if command.text in ALLOWED:
        return "allowed"
    if command.placeholders:
        known = all(p in PLACEHOLDERS for p in command.placeholders)
        return "pipeline" if known and command.program[:1] == ("ibkr-worker",) else "unclassified"
    if command.program in LOCAL:
        return "local"
    if command.program in PIPELINE:
        return "pipeline"
    if command.program in POSTGRES:
        return "postgres"
    return "unclassified"


def commands_of(kind: str) -> list[DocCommand]:
    """The commands of one kind, in doc order, each text once."""
    seen: set[str] = set()
    chosen = []
    for command in doc_commands():
        if classify(command) == kind and command.text not in seen:
            seen.add(command.text)
            chosen.append(command)
    return chosen


# --- running commands -------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a new shell: no settings of this machine, `ibkr-worker` on the PATH."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("IBKR_", "POLL_", "DATABASE_URL", "BROKER_URL", "METRICS_PORT"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(LOG_LEVEL="INFO", LOG_FORMAT="json", **extra)
    return env


def sh(
    text: str, cwd: Path, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def explain(command: DocCommand | str, done: subprocess.CompletedProcess[str]) -> str:
    return f"{command}\nexit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def json_lines(stdout: str) -> list[Any]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def seed(database_url: str) -> None:
    """The instruction the docs look up, with its trail (through the code that records changes),
    and one dead letter."""
    from worker.store import Store
    from worker.store import rows as store_rows
    from worker.store.ids import allocate
    from worker.tracking.deadletters import record_dead_letter

    store = Store.connect(database_url)
    body = {
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instruction": {
            "clientInstructionId": SEED_ID,
            "sourceAccountId": "U46377",
            "targetAccountId": "U15667",
            "amount": 123.45,
            "currency": "USD",
        },
    }
    with store.transaction() as tx:
        ids = allocate(tx, {store_rows.Submission: 1, store_rows.ClientInstruction: 1})
        submission = store_rows.Submission(
            id=ids[store_rows.Submission][0],
            message_id=SEED_MESSAGE_ID,
            correlation_id=SEED_CORRELATION_ID,
            instruction_type="INTERNAL_CASH_TRANSFER",
            is_bulk=False,
            endpoint_path="/gw/api/v1/internal-cash-transfers",
            request_json=json.dumps(body),
            created_at=T0,
            updated_at=T0,
        )
        tx.insert(submission)
        row = store_rows.ClientInstruction(
            id=ids[store_rows.ClientInstruction][0],
            client_instruction_id=SEED_ID,
            submission_id=submission.id,
            position=0,
            instruction_type="INTERNAL_CASH_TRANSFER",
            account_id="U46377",
            correlation_id=SEED_CORRELATION_ID,
            message_id=SEED_MESSAGE_ID,
            status="",
            attempt_count=0,
            poll_count=0,
            error_retry_count=0,
            api_call_count=0,
            event_sequence=0,
            created_at=T0,
            updated_at=T0,
        )
        tx.insert(row)
        change_status(tx, row, "RECEIVED", reason="stored", actor="worker", now=T0)
        change_status(tx, row, "SUBMITTING", reason="sending", actor="worker", now=T0)
        row.instruction_id, row.instruction_set_id = 45123654, 1703
        change_status(
            tx,
            row,
            "PENDING",
            reason="IBKR answered 202",
            actor="worker",
            now=T0 + timedelta(seconds=1),
            api=ApiCall("POST", "/gw/api/v1/internal-cash-transfers", 202, 243.1),
        )
        row.poll_count = 1
        change_status(
            tx,
            row,
            "PROCESSED",
            reason="IBKR reports PROCESSED",
            actor="scheduler",
            now=T0 + timedelta(seconds=7),
            api=ApiCall("GET", "/gw/api/v1/client-instructions/{clientInstructionId}", 200, 84.2),
        )
    record_dead_letter(store, body=b"not json at all", reason="not a dramatiq message", now=T0)
    store.close()


def libpq_url(sqlalchemy_url: str) -> str:
    parts = urlsplit(sqlalchemy_url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- what the docs show, against the code -----------------------------------------------------


def test_every_command_in_the_docs_is_run_or_allow_listed() -> None:
    commands = doc_commands()
    assert commands, "no shell commands found in the docs"
    unclassified = [str(c) for c in commands if classify(c) == "unclassified"]
    assert not unclassified, (
        "commands in the docs that no test runs; add them to a runner of "
        "tests/acceptance/test_docs_commands.py or to ALLOWED (with the reason and the test that "
        "covers them):\n" + "\n".join(unclassified)
    )
    texts = {c.text for c in commands}
    stale = sorted(set(ALLOWED) - texts)
    assert not stale, f"ALLOWED names commands the docs no longer show: {stale}"
    for kind in ("local", "pipeline", "postgres"):
        assert commands_of(kind), f"no {kind} command found: is the extraction broken?"


def test_every_subcommand_has_help_and_is_in_the_readme_table() -> None:
    from worker.cli import cli

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    runner = CliRunner()
    names: list[tuple[str, ...]] = []
    for name, command in sorted(cli.commands.items()):
        names.append((name,))
        names.extend((name, sub) for sub in sorted(getattr(command, "commands", {})))
    for words in [(), *names]:
        result = runner.invoke(cli, [*words, "--help"], prog_name="ibkr-worker")
        assert result.exit_code == 0, (words, result.output)
        assert result.output.startswith(f"Usage: {' '.join(['ibkr-worker', *words])} ")
        if words:
            assert f"`ibkr-worker {' '.join(words)}" in readme, (
                f"`ibkr-worker {' '.join(words)}` is missing from the README's command table"
            )


def test_every_json_example_of_producing_md_is_valid_input() -> None:
    from worker.broker import ACTOR_NAME, QUEUE_NAME
    from worker.cli_ops import entry_kwargs
    from worker.ibkr.requests import parse_request
    from worker.tracking.intake import check_arguments

    blocks = json_blocks(ROOT / "docs" / "producing.md")
    readme_blocks = json_blocks(ROOT / "README.md")
    assert len(blocks) > 15 and readme_blocks
    kinds: dict[str, int] = {"body": 0, "kwargs": 0, "message": 0}
    for line, value in blocks + readme_blocks:
        where = f"example at line {line}"
        if "queue_name" in value:
            kinds["message"] += 1
            assert set(value) == {
                "queue_name",
                "actor_name",
                "args",
                "kwargs",
                "options",
                "message_id",
                "message_timestamp",
            }, where
            assert (value["queue_name"], value["actor_name"]) == (QUEUE_NAME, ACTOR_NAME), where
            assert value["args"] == [] and isinstance(value["options"], dict), where
            uuid.UUID(value["message_id"])
            assert isinstance(value["message_timestamp"], int), where
            assert value["message_timestamp"] > 1_600_000_000_000, f"{where}: not milliseconds"
            import dramatiq

            decoded = dramatiq.Message.decode(json.dumps(value).encode())
            request, _correlation_id = check_arguments(tuple(decoded.args), dict(decoded.kwargs))
            parse_request(request)
        elif "request" in value:
            kinds["kwargs"] += 1
            entry_kwargs(1, value)
            check_arguments((), value)
        else:
            kinds["body"] += 1
            parse_request(value)
            entry_kwargs(1, value)
    assert all(kinds.values()), kinds


def test_every_json_example_is_accepted_by_submit(tmp_path: Path) -> None:
    """`ibkr-worker submit` validates each example (an in-process broker takes the messages)."""
    entries = submit_entries()
    source = tmp_path / "all.jsonl"
    source.write_text("\n".join(json.dumps(entry) for entry in entries) + "\n")
    done = sh(f"ibkr-worker submit {source}", tmp_path, clean_env(BROKER_URL="stub://"))
    assert done.returncode == 0, explain("submit", done)
    printed = json_lines(done.stdout)
    members = sum(len(e.get("request", e).get("instructions", [None])) for e in entries)
    assert len(printed) == members
    assert all(set(line) == {"clientInstructionId", "messageId"} for line in printed)


def test_the_event_and_state_examples_have_exactly_the_keys_the_code_emits() -> None:
    from worker.audit import audit_event_json
    from worker.tracking.record import outbox_values
    from worker.tracking.state import tracked_state

    row = ClientInstruction(
        client_instruction_id=1,
        instruction_type="INTERNAL_CASH_TRANSFER",
        status="PROCESSED",
        event_sequence=0,
        created_at=T0,
        updated_at=T0,
    )
    event_keys = set(json.loads(outbox_values(row, event="status_changed", now=T0)["body_json"]))
    state_keys = set(tracked_state(row))
    assert event_keys == state_keys | {"event", "eventId", "sequence", "at"}
    from models import AuditEvent

    audit_keys = set(audit_event_json(AuditEvent(at=T0, actor="worker", reason="r")))
    api_keys = {"method", "path", "httpStatus", "latencyMs"}

    events = json_blocks(ROOT / "docs" / "events.md")
    assert len(events) >= 2
    for line, value in events:
        assert set(value) == event_keys, f"events.md:{line}: {set(value) ^ event_keys}"
        assert value["event"] in ("status_changed", "overdue")
    for line, value in json_blocks(ROOT / "docs" / "audit.md"):
        if "toStatus" in value:
            assert set(value) == audit_keys, f"audit.md:{line}"
            assert value["api"] is None or set(value["api"]) == api_keys, f"audit.md:{line}"
        else:
            assert set(value) == state_keys, f"audit.md:{line}: {set(value) ^ state_keys}"
    # The audit trail example is JSON Lines: one block, one entry a line.
    text = (ROOT / "docs" / "audit.md").read_text(encoding="utf-8")
    trail = [json.loads(line) for line in text.splitlines() if line.startswith('{"at": "2026')]
    assert len(trail) >= 4 and all(set(entry) == audit_keys for entry in trail)


def test_the_polling_table_is_the_code_s() -> None:
    from worker.config import PollOverrides
    from worker.tracking.backoff import DEFAULT_PROFILE, PROFILES, profile_for

    text = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    section = text.split("## Polling and deadlines", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # no header
    assert len(rows) >= 8, section
    units = {"s": 1, "min": 60, "h": 3600, "day": 86400, "days": 86400}

    def seconds(cell: str) -> float:
        number, unit = cell.split()
        return float(number) * units[unit]

    named: set[str] = set()
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        first, factor, slowest, overdue = (
            seconds(cells[1]),
            float(cells[2]),
            *map(seconds, cells[3:5]),
        )
        types = re.findall(r"`([A-Z_]+)`", cells[0])
        bulk = "(bulk" in cells[0]
        expected = (first, factor, slowest, overdue)
        for kind in types:
            named.add(kind)
            profile = profile_for(kind, PollOverrides(), bulk=bulk)
            actual = (
                profile.initial_delay_s,
                profile.factor,
                profile.max_delay_s,
                profile.deadline_s,
            )
            assert actual == expected, f"{kind}{' (bulk)' if bulk else ''}: {row}"
        if "any other type" in cells[0]:
            default = DEFAULT_PROFILE
            assert (
                default.initial_delay_s,
                default.factor,
                default.max_delay_s,
                default.deadline_s,
            ) == expected, row
    assert set(PROFILES) <= named, f"types missing from the table: {set(PROFILES) - named}"


def test_the_configuration_table_is_the_code_s() -> None:
    from worker.config import load_settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `([A-Z_0-9]+)` \| ([^|]+) \|", readme, flags=re.M))
    source = (ROOT / "worker" / "config.py").read_text(encoding="utf-8")
    read = set(re.findall(r'env(?:\.get)?\(\s*"([A-Z_0-9]+)"', source))
    read |= set(re.findall(r'_(?:int|float|bool|url)\(\s*env,\s*"([A-Z_0-9]+)"', source))
    assert read, "no settings found in worker/config.py"
    assert read <= set(table), f"settings missing from the README table: {read - set(table)}"
    settings = load_settings({}, dotenv=None)
    attributes = {
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "IBKR_BASE_URL": settings.ibkr_base_url,
        "IBKR_SCOPE": settings.ibkr_scope,
        "IBKR_ASSERTION_AUDIENCE": settings.ibkr_assertion_audience,
        "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT": settings.max_requests_per_second_per_endpoint,
        "IBKR_MAX_REQUESTS_PER_MINUTE": settings.max_requests_per_minute,
        "IBKR_HONOR_DOWNTIME": settings.honor_downtime,
        "CLIENT_INSTRUCTION_ID_START": settings.client_instruction_id_start,
        "LOG_LEVEL": settings.log_level,
        "LOG_FORMAT": settings.log_format,
        "IBKR_HTTP_TIMEOUT_S": settings.http_timeout_s,
        "IBKR_RATE_LIMIT_MARGIN_S": settings.rate_limit_margin_s,
        "IBKR_LEASE_S": settings.lease_s,
    }
    for name, value in attributes.items():
        shown = table[name].strip().strip("`")
        if isinstance(value, bool):
            assert shown == str(value).lower(), name
        elif isinstance(value, int | float):
            assert float(shown) == value, name
        else:
            assert shown == value, name
    token_default = table["IBKR_TOKEN_URL"].strip().strip("`")
    assert token_default.format(IBKR_BASE_URL=settings.ibkr_base_url) == settings.ibkr_token_url
    for unset in ("IBKR_CLIENT_ID", "IBKR_KEY_ID", "IBKR_PRIVATE_KEY_FILE", "METRICS_PORT"):
        assert table[unset].startswith(("none", "unset")), unset


def test_the_metrics_named_in_operating_md_are_the_ones_served(sqlite_url: str) -> None:
    from worker.metrics import Metrics
    from worker.store import Store

    metrics = Metrics()
    store = Store.connect(sqlite_url)
    metrics.watch_database(store)
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
    }
    store.close()
    text = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| `(ibkr_[a-z_]+)", section, flags=re.M))
    assert table == served, f"documented only: {table - served}; served only: {served - table}"
    mentioned = set(re.findall(r"\bibkr_[a-z_]+", section))
    assert mentioned <= served, f"unknown metrics in operating.md: {mentioned - served}"


def test_the_python_examples_compile() -> None:
    for path in DOC_FILES:
        for language, _block, lines in _fences(path):
            if language == "python":
                source = "\n".join(line for _n, line in lines)
                compile(source, f"{path.name}:{lines[0][0]}", "exec")


def test_the_procfile_shown_in_the_readme_is_the_procfile() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    procfile = (ROOT / "Procfile").read_text(encoding="utf-8").strip()
    assert f"```\n{procfile}\n```" in readme


# --- local commands: SQLite, keys, the sandbox -------------------------------------------------


def test_local_commands_run_against_a_sqlite_database(tmp_path: Path) -> None:
    """Run verbatim in a working directory of their own; `DATABASE_URL` left unset means the
    default `sqlite:///ibkr_worker.db` there, the same file the explicit ones name."""
    from worker.audit import audit_event_json

    work = tmp_path / "work"
    work.mkdir()
    env = clean_env()
    commands = commands_of("local")
    migrations = [c for c in commands if c.program == ("ibkr-worker", "migrate")]
    assert migrations, "the docs no longer show `ibkr-worker migrate`"
    # The first one as its own process through bash, exactly as a reader types it.
    done = sh(migrations[0].text, work, env)
    assert done.returncode == 0, explain(migrations[0], done)
    assert "revision" in done.stdout
    results = run_in_one_process(migrations[1:], work, env)
    seed(f"sqlite:///{work / 'ibkr_worker.db'}")

    servers = [c for c in commands if c.program == ("ibkr-worker", "sandbox") and not c.shows_help]
    others = [c for c in commands if c not in migrations and c not in servers]
    results += run_in_one_process(others, work, env)
    from models import AuditEvent

    audit_keys = set(audit_event_json(AuditEvent(at=T0, actor="worker", reason="r")))
    for command, done in results:
        assert done.returncode == 0, explain(command, done)
        words = shlex.split(command.text)
        if command.program == ("ibkr-worker", "migrate"):
            assert "revision" in done.stdout, explain(command, done)
        if command.shows_help:
            assert done.stdout.startswith("Usage: ibkr-worker"), explain(command, done)
            continue
        if "--json" in words:
            lines = json_lines(done.stdout)  # nothing but JSON
            if command.program == ("ibkr-worker", "audit"):
                assert all(set(line) == audit_keys for line in lines), explain(command, done)
        if command.program == ("ibkr-worker", "status"):
            assert str(SEED_ID) in done.stdout, explain(command, done)
        if command.program == ("ibkr-worker", "dead-letters", "list"):
            assert "not a dramatiq message" in done.stdout, explain(command, done)
        if command.program == ("ibkr-worker", "audit"):
            # Every filter the docs show matches the seeded trail, but another correlation id.
            other = "--correlation-id" in words and SEED_CORRELATION_ID not in words
            assert other or done.stdout.strip(), explain(command, done)
        if command.program == ("ibkr-worker", "keygen"):
            out = work / words[words.index("--out") + 1]
            private, public = out / "ibkr_private_key.pem", out / "ibkr_public_key.pem"
            assert private.is_file() and public.is_file(), explain(command, done)
            assert private.stat().st_mode & 0o777 == 0o600
            assert str(private.relative_to(work)) in done.stdout
    for command in servers:
        run_sandbox(command, work, env)


# Runs `ibkr-worker` commands one after the other inside one interpreter: the command-line
# parsing, settings, database and output are the real ones; only the interpreter start and the
# imports (about two seconds of CPU per process) are shared. Reads [[env, argv], ...] on stdin.
DRIVER = """
import json, sys
from click.testing import CliRunner
from worker.cli import cli
results = []
for env, argv in json.load(sys.stdin):
    r = CliRunner().invoke(cli, argv, env=env, prog_name="ibkr-worker")
    exc = r.exception
    crash = "" if exc is None or isinstance(exc, SystemExit) else repr(exc)
    results.append([r.exit_code, r.stdout, r.stderr + crash])
sys.__stdout__.write(json.dumps(results))
"""


def run_in_one_process(
    commands: list[DocCommand], work: Path, env: dict[str, str]
) -> list[tuple[DocCommand, subprocess.CompletedProcess[str]]]:
    """Each command as bash would run it (`NAME=value` prefixes set the environment), all in one
    interpreter started in `work` with `env`."""
    jobs = []
    for command in commands:
        words = shlex.split(command.text)
        assert not {"<", ">", "|", ";", "&&", "||"} & set(words), f"{command}: not a plain command"
        prefix: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, value = words.pop(0).split("=", 1)
            prefix[name] = value
        assert words[0] == "ibkr-worker", command
        jobs.append([prefix, words[1:]])
    if not jobs:
        return []
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(jobs),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert driver.returncode == 0, driver.stderr
    return [
        (command, subprocess.CompletedProcess(command.text, code, out, err))
        for command, (code, out, err) in zip(commands, json.loads(driver.stdout), strict=True)
    ]


def run_sandbox(command: DocCommand, work: Path, env: dict[str, str]) -> None:
    """Start the sandbox as the docs show, read the environment it prints, stop it (SIGTERM)."""
    text = command.text
    port_match = re.search(r"--port (\d+)", text)
    if port_match and not port_free(int(port_match.group(1))):
        text = text.replace(port_match.group(0), "--port 0")  # the docs' port is taken here
    process = subprocess.Popen(
        ["bash", "-c", f"exec {text}"],
        cwd=work,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        printed: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while "IBKR_HONOR_DOWNTIME" not in printed and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if re.match(r"[A-Z_]+=", line):  # the environment lines, not the log lines
                key, value = line.strip().split("=", 1)
                printed[key] = value
        assert set(printed) == {
            "IBKR_BASE_URL",
            "IBKR_CLIENT_ID",
            "IBKR_KEY_ID",
            "IBKR_PRIVATE_KEY_FILE",
            "IBKR_HONOR_DOWNTIME",
        }, (command, printed)
        assert printed["IBKR_HONOR_DOWNTIME"] == "false"
        if port_match and "--port 0" not in text:
            assert printed["IBKR_BASE_URL"] == f"http://127.0.0.1:{port_match.group(1)}"
        assert Path(printed["IBKR_PRIVATE_KEY_FILE"]).is_file()
        shutil.rmtree(Path(printed["IBKR_PRIVATE_KEY_FILE"]).parent, ignore_errors=True)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, f"{command}: exit {code} on SIGTERM"


# --- PostgreSQL clients -----------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_commands_run_against_a_seeded_database(pg_url: str, tmp_path: Path) -> None:
    commands = commands_of("postgres")
    missing = sorted({c.program[0] for c in commands if shutil.which(c.program[0]) is None})
    if missing:
        message = f"PostgreSQL client programs not installed: {missing}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: required)", pytrace=False)
        pytest.skip(message)
    seed(pg_url)
    env = clean_env()
    for command in commands:
        assert DOCS_PG_URL in command.text, f"{command}: expected the docs' example database URL"
        done = sh(command.text.replace(DOCS_PG_URL, libpq_url(pg_url)), tmp_path, env)
        assert done.returncode == 0, explain(command, done)
        if command.program == ("psql",):
            assert "U46377" in done.stdout and '"amount": 123.45' in done.stdout, done.stdout
        if command.program == ("pg_dump",):
            [target] = re.findall(r"--file=(\S+)", command.text)
            assert (tmp_path / target).stat().st_size > 0


# --- the pipeline: broker, worker, scheduler, sandbox ------------------------------------------


def submit_entries() -> list[dict[str, Any]]:
    """Every JSON example a producer may hand to `submit`: producing.md's request bodies and
    keyword arguments, and the README's transfer.json."""
    entries = []
    for _line, value in json_blocks(ROOT / "docs" / "producing.md"):
        if "queue_name" not in value:
            entries.append(value)
    entries.extend(value for _line, value in json_blocks(ROOT / "README.md"))
    return entries


def write_submit_files(work: Path) -> None:
    """The files the docs' submit commands name: transfer.json is the README's example,
    requests.json the request bodies of producing.md, requests.jsonl its keyword-argument form."""
    [(_line, transfer)] = json_blocks(ROOT / "README.md")
    producing = [
        v for _l, v in json_blocks(ROOT / "docs" / "producing.md") if "queue_name" not in v
    ]
    (work / "transfer.json").write_text(json.dumps(transfer, indent=2))
    (work / "requests.json").write_text(
        json.dumps([v for v in producing if "instructionType" in v], indent=2)
    )
    (work / "requests.jsonl").write_text(
        "".join(json.dumps(v) + "\n" for v in producing if "request" in v)
    )


def publish_like_the_docs(broker_url: str, message: dict[str, Any]) -> None:
    """producing.md's plain-AMQP recipe: default exchange, confirms, mandatory, persistent."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange="",
            routing_key="ibkr.instructions",
            body=json.dumps(message).encode("utf-8"),
            properties=pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=message["message_id"]
            ),
            mandatory=True,
        )
    finally:
        connection.close()


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, logs: Callable[[], str]
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs()}")


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_broker_commands_run_through_the_pipeline(
    empty_pg_url: str, fresh_amqp_url: str, rsa_key_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from ibkr_sandbox import Timings
    from tests.integration.pipeline import Pipeline, make_sandbox

    private_key, public_key = rsa_key_files
    logs = tmp_path / "logs"
    logs.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    write_submit_files(work)
    # Withdrawals take 5 minutes there by default; 30 s (half a second here) is enough to show one
    # reaching PROCESSED.
    timings = dataclasses.replace(Timings(), withdrawal_s=30.0)
    sandbox = make_sandbox(public_key.read_bytes(), speed=60.0, timings=timings)
    pipe = Pipeline(empty_pg_url, fresh_amqp_url, sandbox, private_key, logs)
    env = {**pipe.env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    commands = commands_of("pipeline")
    started: list[tuple[DocCommand, subprocess.Popen[bytes]]] = []
    log_files: list[Any] = []
    try:
        # README step 4: migrate first (here on an empty database), then the long-running ones.
        done = sh("ibkr-worker migrate", work, env)
        assert done.returncode == 0, explain("ibkr-worker migrate", done)
        for command in commands:
            if command.program in LONG_RUNNING:
                log = open(logs / f"{len(started)}-{command.program[1]}.log", "wb")
                log_files.append(log)
                process = subprocess.Popen(
                    ["bash", "-c", f"exec {command.text}"],
                    cwd=work,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                started.append((command, process))
        assert {c.program for c, _p in started} == LONG_RUNNING

        def queue_declared() -> bool:
            connection = pika.BlockingConnection(pika.URLParameters(fresh_amqp_url))
            try:
                connection.channel().queue_declare("ibkr.instructions", passive=True)
                return True
            except pika.exceptions.ChannelClosedByBroker:
                return False
            finally:
                if connection.is_open:
                    connection.close()

        wait_for(queue_declared, 60, "a worker to declare the queue", pipe.logs)
        # Dead letters for `dead-letters replay 1 2`: as many undecodable messages as it names.
        replays = [c for c in commands if c.program == ("ibkr-worker", "dead-letters", "replay")]
        letters = max(
            (int(w) for c in replays for w in shlex.split(c.text) if w.isdigit()), default=0
        )
        pipe.publish_raw([f"not a message {n}".encode() for n in range(letters)])
        # producing.md's plain message, published the way it says.
        [message] = [
            v for _l, v in json_blocks(ROOT / "docs" / "producing.md") if "queue_name" in v
        ]
        publish_like_the_docs(fresh_amqp_url, message)

        filled: dict[str, str] = {}
        runs: list[tuple[DocCommand, subprocess.CompletedProcess[str]]] = []
        blocks = {c.block for c in commands}
        in_order = [
            c
            for c in doc_commands()
            if c.block in blocks and c.program not in LONG_RUNNING and classify(c) != "allowed"
        ]
        seen: set[str] = set()
        for command in in_order:
            if command.text in seen or command.program == ("ibkr-worker", "migrate"):
                continue
            seen.add(command.text)
            text = command.text
            for placeholder in command.placeholders:
                key = "messageId" if "messageId" in placeholder else "clientInstructionId"
                assert key in filled, f"{command}: nothing printed before fills {placeholder}"
                text = text.replace(placeholder, filled[key])
            if command.program == ("ibkr-worker", "dead-letters", "replay"):
                wait_for(
                    lambda: len(pipe.query("SELECT id FROM dead_letters")) >= letters,
                    60,
                    f"{letters} dead letters",
                    pipe.logs,
                )
            done = sh(text, work, env)
            deadline = time.monotonic() + 60
            while command.program == ("ibkr-worker", "status") and done.returncode == 1:
                # Unknown until a worker has stored the request.
                assert time.monotonic() < deadline, explain(command, done) + pipe.logs()
                time.sleep(0.5)
                done = sh(text, work, env)
            assert done.returncode == 0, explain(command, done) + pipe.logs()
            runs.append((command, done))
            if command.program == ("ibkr-worker", "submit"):
                printed = json_lines(done.stdout)
                assert printed and all(
                    set(line) == {"clientInstructionId", "messageId"} for line in printed
                )
                filled["messageId"] = printed[-1]["messageId"]
            if command.program == ("ibkr-worker", "status") and "--json" not in text:
                found = re.search(r"^clientInstructionId\s+(\d+)$", done.stdout, flags=re.M)
                assert found, explain(command, done)
                filled["clientInstructionId"] = found.group(1)
            if command.program == ("ibkr-worker", "health"):
                assert done.stdout.startswith("healthy"), explain(command, done)
            if command.program == ("ibkr-worker", "dead-letters", "replay"):
                assert all(line["replayed"] for line in json_lines(done.stdout))
        ran = {c.program for c, _d in runs}
        assert {p for p in PIPELINE if p not in LONG_RUNNING} <= ran, ran

        # Every example reached IBKR (the sandbox) and was accepted; a representative subset
        # of the request families ends PROCESSED, queries with their result.
        examples = {
            v["instruction"]["clientInstructionId"]: v["instructionType"]
            for v in json.loads((work / "requests.json").read_text())
            if "clientInstructionId" in v.get("instruction", {})
        }
        examples[message["kwargs"]["request"]["instruction"]["clientInstructionId"]] = message[
            "kwargs"
        ]["request"]["instructionType"]

        def settled() -> dict[int, str] | None:
            statuses = pipe.statuses()
            for cid, kind in examples.items():
                status = statuses.get(cid)
                if status is None or status in NOT_ACCEPTED:
                    return None
                if kind in MUST_BE_PROCESSED and status not in FINAL:
                    return None
            return statuses

        statuses = wait_for(settled, 60, "the examples to settle", pipe.logs)
        results = {
            int(cid): result
            for cid, result in pipe.query(
                "SELECT client_instruction_id, result FROM client_instructions"
                " WHERE duplicate_of_id IS NULL"
            )
        }
        for cid, kind in examples.items():
            if kind in MUST_BE_PROCESSED:
                assert statuses[cid] == "PROCESSED", (cid, kind, statuses[cid])
                if kind.startswith("QUERY_"):
                    assert results[cid], (cid, kind, "no result")
            else:
                assert statuses[cid] not in NOT_ACCEPTED, (cid, kind, statuses[cid])
        # The README's first transfer, followed by its id: PROCESSED (an internal transfer).
        readme_transfer = int(filled["clientInstructionId"])
        wait_for(
            lambda: pipe.statuses().get(readme_transfer) == "PROCESSED",
            30,
            "the README's transfer",
            pipe.logs,
        )
        trail = sh("ibkr-worker audit --correlation-id qa-first-transfer --json", work, env)
        assert [e["toStatus"] for e in json_lines(trail.stdout)][-1] == "PROCESSED"
    finally:
        for _command, process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for command, process in started:
            try:
                codes[command.text] = process.wait(45)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[command.text] = None
        for log in log_files:
            log.close()
        pipe.stop_all()
        sandbox.stop()
    assert all(code == 0 for code in codes.values()), f"exit codes after SIGTERM: {codes}"
