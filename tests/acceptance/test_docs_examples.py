"""The docs' examples are the code's: every JSON example is valid input (and `submit` takes it),
the event, state and audit examples have exactly the keys the code emits, the Python examples
compile and the README's Procfile is the Procfile."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from models import ClientInstruction
from tests.acceptance.doc_runs import T0, clean_env, explain, json_lines, sh, submit_entries
from tests.acceptance.docs import DOC_FILES, ROOT, fences, json_blocks


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


def test_the_python_examples_compile() -> None:
    for path in DOC_FILES:
        for language, _block, lines in fences(path):
            if language == "python":
                source = "\n".join(line for _n, line in lines)
                compile(source, f"{path.name}:{lines[0][0]}", "exec")


def test_the_procfile_shown_in_the_readme_is_the_procfile() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    procfile = (ROOT / "Procfile").read_text(encoding="utf-8").strip()
    assert f"```\n{procfile}\n```" in readme
