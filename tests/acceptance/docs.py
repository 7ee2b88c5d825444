"""The docs cannot rot: every shell command they show is run by the `test_docs_*` modules, or
allow-listed with the test that covers it instead, and every JSON example is checked against
the code.

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

This module reads the docs and classifies their commands; `doc_runs` runs them.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_FENCES = frozenset({"sh", "bash", "console", "shell"})
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>]*>")

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


def fences(path: Path) -> Iterator[tuple[str, int, list[tuple[int, str]]]]:
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
        for language, block, lines in fences(path):
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
    for language, _block, lines in fences(path):
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
