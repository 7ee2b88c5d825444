"""The docs cannot rot: every shell command they show is run here, or allow-listed with the test
that covers it instead (see `tests/acceptance/docs.py` for how commands are read and classified).
Here: the classification itself, every subcommand's help, the local commands against SQLite and
the PostgreSQL clients; the broker commands run in `test_docs_pipeline.py`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.acceptance.doc_runs import (
    DOCS_PG_URL,
    SEED_CORRELATION_ID,
    SEED_ID,
    T0,
    clean_env,
    explain,
    json_lines,
    libpq_url,
    run_in_one_process,
    run_sandbox,
    seed,
    sh,
)
from tests.acceptance.docs import ALLOWED, ROOT, classify, commands_of, doc_commands


def test_every_command_in_the_docs_is_run_or_allow_listed() -> None:
    commands = doc_commands()
    assert commands, "no shell commands found in the docs"
    unclassified = [str(c) for c in commands if classify(c) == "unclassified"]
    assert not unclassified, (
        "commands in the docs that no test runs; add them to a runner (tests/acceptance/"
        "test_docs_*.py) or to ALLOWED in tests/acceptance/docs.py (with the reason and the "
        "test that covers them):\n" + "\n".join(unclassified)
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


# --- local commands: SQLite, keys, the sandbox -------------------------------------------------


def test_local_commands_run_against_a_sqlite_database(work: Path) -> None:
    """Run verbatim in a working directory of their own; `DATABASE_URL` left unset means the
    default `sqlite:///ibkr_worker.db` there, the same file the explicit ones name."""
    from worker.audit import audit_event_json

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
