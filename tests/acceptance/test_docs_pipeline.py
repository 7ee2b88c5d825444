"""The docs' broker commands run verbatim through the whole pipeline: `worker` and `scheduler` as
the README starts them, then every other command of their blocks in doc order (placeholders
filled in from what the command before printed) against PostgreSQL, a RabbitMQ vhost and the
sandbox; every example the producer docs show reaches IBKR and is accepted."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pika
import pytest

from tests.acceptance.doc_runs import (
    BIN,
    explain,
    json_lines,
    publish_like_the_docs,
    sh,
    wait_for,
    write_submit_files,
)
from tests.acceptance.docs import (
    LONG_RUNNING,
    PIPELINE,
    ROOT,
    DocCommand,
    classify,
    commands_of,
    doc_commands,
    json_blocks,
)
from tests.integration.pipeline import Pipeline
from worker.status import FINAL
from worker.status import LOCAL as NOT_ACCEPTED

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


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_broker_commands_run_through_the_pipeline(
    empty_pg_url: str,
    fresh_amqp_url: str,
    rsa_key_files: tuple[Path, Path],
    tmp_path: Path,
    work: Path,
) -> None:
    from ibkr_sandbox import Timings
    from tests.integration.pipeline import make_sandbox

    private_key, public_key = rsa_key_files
    logs = tmp_path / "logs"
    logs.mkdir()
    write_submit_files(work)
    # Withdrawals take 5 minutes there by default; 30 s (half a second here) is enough to show one
    # reaching PROCESSED.
    timings = dataclasses.replace(Timings(), withdrawal_s=30.0)
    sandbox = make_sandbox(public_key.read_bytes(), speed=60.0, timings=timings)
    pipe = Pipeline(empty_pg_url, fresh_amqp_url, sandbox, private_key, logs)
    env = {**pipe.env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    commands = commands_of("pipeline")
    try:
        # README step 4: migrate first (here on an empty database), then the long-running ones.
        done = sh("ibkr-worker migrate", work, env)
        assert done.returncode == 0, explain("ibkr-worker migrate", done)
        with long_running(commands, work, env, logs):
            wait_for(
                lambda: queue_declared(fresh_amqp_url),
                60,
                "a worker to declare the queue",
                pipe.logs,
            )
            letters = dead_letters_for_replay(commands, pipe)
            # producing.md's plain message, published the way it says.
            [message] = [
                v for _l, v in json_blocks(ROOT / "docs" / "producing.md") if "queue_name" in v
            ]
            publish_like_the_docs(fresh_amqp_url, message)
            filled = run_in_doc_order(commands, work, env, pipe, letters)
            assert_examples_settle(work, message, pipe)
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
        pipe.stop_all()
        sandbox.stop()


@contextmanager
def long_running(
    commands: list[DocCommand], work: Path, env: dict[str, str], logs: Path
) -> Iterator[None]:
    """The docs' `worker` and `scheduler` commands run verbatim while the block runs; then each
    stopped with SIGTERM, which must end it with exit code 0."""
    started: list[tuple[DocCommand, subprocess.Popen[bytes]]] = []
    log_files: list[IO[bytes]] = []
    try:
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
        yield
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
    assert all(code == 0 for code in codes.values()), f"exit codes after SIGTERM: {codes}"


def queue_declared(broker_url: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_declare("ibkr.instructions", passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def dead_letters_for_replay(commands: list[DocCommand], pipe: Pipeline) -> int:
    """Dead letters for `dead-letters replay 1 2`: as many undecodable messages as it names;
    returns how many."""
    replays = [c for c in commands if c.program == ("ibkr-worker", "dead-letters", "replay")]
    letters = max((int(w) for c in replays for w in shlex.split(c.text) if w.isdigit()), default=0)
    pipe.publish_raw([f"not a message {n}".encode() for n in range(letters)])
    return letters


def run_in_doc_order(
    commands: list[DocCommand], work: Path, env: dict[str, str], pipe: Pipeline, letters: int
) -> dict[str, str]:
    """Every other command of the pipeline commands' blocks, in doc order, each text once, with
    its placeholders filled in from what the commands before printed; returns what was filled."""
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
        check_output(command, text, done, filled)
    ran = {c.program for c, _d in runs}
    assert {p for p in PIPELINE if p not in LONG_RUNNING} <= ran, ran
    return filled


def check_output(
    command: DocCommand, text: str, done: subprocess.CompletedProcess[str], filled: dict[str, str]
) -> None:
    """What a command printed is what the docs promise; ids it printed go into `filled`."""
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


def assert_examples_settle(work: Path, message: dict[str, Any], pipe: Pipeline) -> None:
    """Every example reached IBKR (the sandbox) and was accepted; a representative subset of
    the request families ends PROCESSED, queries with their result."""
    examples = {
        v["instruction"]["clientInstructionId"]: v["instructionType"]
        for v in json.loads((work / "requests.json").read_text())
        if "clientInstructionId" in v.get("instruction", {})
    }
    request = message["kwargs"]["request"]
    examples[request["instruction"]["clientInstructionId"]] = request["instructionType"]

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
