"""Running the docs' commands: a clean environment, a shell, a seeded database, one interpreter
for many local commands, the sandbox as the docs start it, and the files and messages the docs'
producer examples make."""

from __future__ import annotations

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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika

from tests.acceptance.docs import ROOT, DocCommand, json_blocks
from worker.tracking.record import ApiCall, change_status

BIN = Path(sys.executable).parent
# The docs' example host and database; the tests put their own database in its place.
DOCS_PG_URL = "postgresql://ibkr@127.0.0.1/ibkr_worker"

# The instruction the docs look up (README, operating.md, audit.md), seeded before they run.
SEED_ID = 1012983
SEED_MESSAGE_ID = "4f7a2c8e-2b0e-4a51-9a43-0b7d5c1e9f10"
SEED_CORRELATION_ID = "payroll-2026-11"
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


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
