"""`ibkr-worker migrate`, `status`, `audit` and `dead-letters list`, run as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from models import (
    AuditEvent,
    ClientInstruction,
    DeadLetter,
    Submission,
    make_engine,
    make_session_factory,
)

BIN = Path(sys.executable).parent
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
AUDIT_KEYS = [
    "at",
    "clientInstructionId",
    "instructionId",
    "instructionSetId",
    "fromStatus",
    "toStatus",
    "reason",
    "actor",
    "api",
]


class Cli:
    """Runs `ibkr-worker` in its own directory against one SQLite database."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        self.database_url = database_url

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key != "DATABASE_URL" and not key.startswith("IBKR_")
        }
        env.update(DATABASE_URL=self.database_url, LOG_LEVEL="INFO", LOG_FORMAT="json")
        return subprocess.run(
            [str(BIN / "ibkr-worker"), *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def cli(tmp_path: Path, work: Path) -> Cli:
    """An un-migrated SQLite database and a working directory without a .env file."""
    return Cli(work, f"sqlite:///{tmp_path / 'ibkr.db'}")


@pytest.fixture
def seeded(cli: Cli) -> Cli:
    """A migrated database holding a bulk request, a single one, audit events, a dead letter."""
    result = cli("migrate")
    assert result.returncode == 0, result.stderr
    engine = make_engine(cli.database_url)
    with make_session_factory(engine).begin() as session:
        bulk = Submission(
            message_id="msg-bulk",
            instruction_type="INTERNAL_CASH_TRANSFER",
            is_bulk=True,
            endpoint_path="/gw/api/v1/instructions:bulk",
            request_json="{}",
            created_at=T0,
            updated_at=T0,
        )
        session.add(bulk)
        session.flush()
        for position, client_instruction_id in enumerate((2001, 2002, 2003)):
            session.add(
                _instruction(client_instruction_id, submission_id=bulk.id, position=position)
            )
        session.add(
            _instruction(
                1012983,
                message_id="msg-single",
                status="PROCESSED",
                instruction_id=45123654,
                instruction_set_id=1703,
                correlation_id="abc",
                final_at=T0 + timedelta(minutes=3),
                poll_count=3,
            )
        )
        session.add_all(
            [
                _event(0, to_status="RECEIVED", reason="stored"),
                _event(
                    1,
                    from_status="RECEIVED",
                    to_status="PENDING",
                    reason="accepted (202)",
                    api_method="POST",
                    api_path="/gw/api/v1/instructions",
                    api_http_status=202,
                    api_latency_ms=41.0,
                ),
                _event(3, from_status="PENDING", to_status="PROCESSED", reason="polled"),
            ]
        )
        session.add(
            DeadLetter(
                message_id="bad-1",
                queue_name="ibkr.instructions",
                body='{"not": "a message"\n',
                body_size=20,
                truncated=False,
                reason="not a dramatiq message",
                first_seen_at=T0,
                last_seen_at=T0,
            )
        )
    engine.dispose()
    return cli


def _instruction(client_instruction_id: int, **fields: Any) -> ClientInstruction:
    values: dict[str, Any] = {
        "client_instruction_id": client_instruction_id,
        "instruction_type": "INTERNAL_CASH_TRANSFER",
        "status": "PENDING",
        "account_id": "U46377",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return ClientInstruction(**values)


def _event(minute: int, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "at": T0 + timedelta(minutes=minute),
        "client_instruction_id": 1012983,
        "instruction_id": 45123654 if minute else None,
        "instruction_set_id": 1703 if minute else None,
        "account_id": "U46377",
        "correlation_id": "abc",
        "actor": "worker",
    }
    values.update(fields)
    return AuditEvent(**values)


def _json_lines(stdout: str) -> list[Any]:
    """Every stdout line parsed as JSON (fails if any line is not)."""
    return [json.loads(line) for line in stdout.splitlines()]


# --- migrate ----------------------------------------------------------------------------------


def test_migrate_prints_the_revision_and_is_safe_to_run_again(cli: Cli) -> None:
    first = cli("migrate")
    second = cli("migrate")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    from worker.store.migrate import head_revision

    newest = head_revision()
    assert newest is not None and newest >= "0003"
    assert first.stdout == second.stdout == f"database at revision {newest} (newest)\n"


def test_migrate_reports_a_database_it_cannot_reach(cli: Cli, tmp_path: Path) -> None:
    cli.database_url = f"sqlite:///{tmp_path / 'missing-dir' / 'ibkr.db'}"

    result = cli("migrate")

    assert result.returncode == 1
    assert "migration failed" in result.stderr
    assert result.stdout == ""


# --- status -----------------------------------------------------------------------------------


def test_status_prints_readable_key_values(seeded: Cli) -> None:
    result = seeded("status", "1012983")

    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["clientInstructionId"] == "1012983"
    assert lines["status"] == "PROCESSED"
    assert lines["instructionSetId"] == "1703"
    assert lines["finalAt"] == "2026-11-24T10:03:00Z"
    assert lines["error"] == "-"


def test_status_json_is_one_tracked_state_object_and_nothing_else(seeded: Cli) -> None:
    result = seeded("status", "1012983", "--json")

    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state == {
        "clientInstructionId": 1012983,
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "status": "PROCESSED",
        "instructionId": 45123654,
        "instructionSetId": 1703,
        "ibReferenceId": None,
        "error": None,
        "result": None,
        "correlationId": "abc",
        "accountId": "U46377",
        "createdAt": "2026-11-24T10:00:00Z",
        "updatedAt": "2026-11-24T10:00:00Z",
        "finalAt": "2026-11-24T10:03:00Z",
        "pollCount": 3,
    }


def test_status_by_message_id_of_a_bulk_prints_one_json_line_per_member(seeded: Cli) -> None:
    result = seeded("status", "--message-id", "msg-bulk", "--json")

    assert result.returncode == 0, result.stderr
    states = _json_lines(result.stdout)
    assert [state["clientInstructionId"] for state in states] == [2001, 2002, 2003]


def test_status_by_message_id_of_a_single_request(seeded: Cli) -> None:
    readable = seeded("status", "--message-id", "msg-single")
    as_json = seeded("status", "--message-id", "msg-single", "--json")

    assert readable.returncode == 0, readable.stderr
    assert "1012983" in readable.stdout
    assert _json_lines(as_json.stdout)[0]["status"] == "PROCESSED"


@pytest.mark.parametrize("args", [("status", "999"), ("status", "--message-id", "nope", "--json")])
def test_status_of_an_unknown_instruction_exits_1_with_a_clear_message(
    seeded: Cli, args: tuple[str, ...]
) -> None:
    result = seeded(*args)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "no instruction known" in result.stderr
    assert args[-1 if args[-1] != "--json" else -2] in result.stderr


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "1", "--message-id", "m"), ("status", "not-a-number")],
)
def test_status_usage_errors_exit_2(seeded: Cli, args: tuple[str, ...]) -> None:
    result = seeded(*args)

    assert result.returncode == 2
    assert result.stdout == ""


def test_negative_ids_are_read_as_ids_not_as_options(seeded: Cli) -> None:
    """IBKR's ids are signed (its examples: -1988905739): `status -1988905739` and
    `audit --client-instruction-id -5` look the ids up. (Drop SignedIdCommand from `status`
    to see click answer "No such option: -1".)"""
    engine = make_engine(seeded.database_url)
    with make_session_factory(engine).begin() as session:
        session.add(_instruction(-1988905739, instruction_set_id=-7))
        session.add(
            _event(
                5,
                client_instruction_id=-5,
                instruction_id=-6,
                instruction_set_id=-7,
                to_status="PENDING",
                reason="negative ids",
            )
        )
    engine.dispose()

    status = seeded("status", "-1988905739", "--json")
    audit = seeded("audit", "--client-instruction-id", "-5", "--json")
    by_set = seeded("audit", "--json", "--instruction-set-id=-7")

    assert status.returncode == 0, status.stderr
    assert _json_lines(status.stdout)[0]["clientInstructionId"] == -1988905739
    assert _json_lines(status.stdout)[0]["instructionSetId"] == -7
    assert audit.returncode == 0, audit.stderr
    assert [e["reason"] for e in _json_lines(audit.stdout)] == ["negative ids"]
    assert [e["instructionId"] for e in _json_lines(by_set.stdout)] == [-6]


@pytest.mark.parametrize("value", ["9007199254740992", "1.5", "-"])
def test_ids_outside_the_id_domain_are_usage_errors(seeded: Cli, value: str) -> None:
    result = seeded("audit", "--client-instruction-id", value)

    assert result.returncode == 2
    assert "--client-instruction-id" in result.stderr
    assert result.stdout == ""


def test_status_on_a_database_never_migrated_exits_1_and_says_to_migrate(cli: Cli) -> None:
    result = cli("status", "1")

    assert result.returncode == 1
    assert "ibkr-worker migrate" in result.stderr
    assert result.stdout == ""


# --- audit ------------------------------------------------------------------------------------


def test_audit_json_lines_have_exactly_the_contract_keys_oldest_first(seeded: Cli) -> None:
    result = seeded("audit", "--client-instruction-id", "1012983", "--json")

    assert result.returncode == 0, result.stderr
    events = _json_lines(result.stdout)
    assert [list(event) for event in events] == [AUDIT_KEYS] * 3
    assert [event["toStatus"] for event in events] == ["RECEIVED", "PENDING", "PROCESSED"]
    assert events[1]["api"] == {
        "method": "POST",
        "path": "/gw/api/v1/instructions",
        "httpStatus": 202,
        "latencyMs": 41.0,
    }
    assert events[0]["api"] is None


def test_audit_filters_and_limit_reach_the_query(seeded: Cli) -> None:
    by_set = seeded("audit", "--instruction-set-id", "1703", "--json")
    by_account = seeded("audit", "--account", "U46377", "--limit", "1", "--json")
    windowed = seeded(
        "audit", "--since", "2026-11-24T10:01:00Z", "--until", "2026-11-24T10:03:00Z", "--json"
    )
    other = seeded("audit", "--correlation-id", "other", "--json")

    assert [e["toStatus"] for e in _json_lines(by_set.stdout)] == ["PENDING", "PROCESSED"]
    assert [e["toStatus"] for e in _json_lines(by_account.stdout)] == ["RECEIVED"]
    assert [e["toStatus"] for e in _json_lines(windowed.stdout)] == ["PENDING"]
    assert other.returncode == 0 and other.stdout == ""


def test_audit_without_json_prints_an_aligned_table(seeded: Cli) -> None:
    result = seeded("audit", "--instruction-id", "45123654")

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "AT",
        "CLIENT_INSTRUCTION_ID",
        "INSTRUCTION_ID",
        "SET_ID",
        "STATUS",
        "ACTOR",
        "API",
        "REASON",
    ]
    assert len(rows) == 2
    reason_column = header.index("REASON")
    assert [row[reason_column:] for row in rows] == ["accepted (202)", "polled"]
    assert "POST /gw/api/v1/instructions 202 41ms" in rows[0]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--since", "yesterday"), ("--until", "2026-13-45"), ("--limit", "0")],
)
def test_audit_bad_option_exits_2_naming_it(seeded: Cli, option: str, value: str) -> None:
    result = seeded("audit", option, value, "--json")

    assert result.returncode == 2
    assert option in result.stderr
    assert result.stdout == ""


# --- dead letters -----------------------------------------------------------------------------


def test_dead_letters_list_json_lines(seeded: Cli) -> None:
    result = seeded("dead-letters", "list", "--json")

    assert result.returncode == 0, result.stderr
    (letter,) = _json_lines(result.stdout)
    assert letter["messageId"] == "bad-1"
    assert letter["body"] == '{"not": "a message"\n'
    assert letter["reason"] == "not a dramatiq message"
    assert letter["seenAt"] == "2026-11-24T10:00:00Z"
    assert letter["replayCount"] == 0
    assert isinstance(letter["id"], int)


def test_dead_letters_list_readable(seeded: Cli) -> None:
    result = seeded("dead-letters", "list")

    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "SEEN_AT", "MESSAGE_ID", "REPLAYS", "REASON", "BODY"]
    assert "bad-1" in row and "not a dramatiq message" in row


def test_no_dead_letters_prints_no_json(cli: Cli) -> None:
    assert cli("migrate").returncode == 0

    result = cli("dead-letters", "list", "--json")

    assert result.returncode == 0
    assert result.stdout == ""
