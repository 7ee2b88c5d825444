"""The read-side commands: `migrate`, `status`, `audit` and `dead-letters list`.

Each parses its arguments, opens the database the settings name, calls `worker.store.migrate` or
`worker.audit`, and prints: command output to stdout (with `--json` nothing but JSON), errors
and logs to stderr. Exit codes: 0 success, 1 nothing found or the database failed, 2 bad usage.
`dead_letters` is a group so that `dead-letters replay` can be added where the broker lives.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

import click

from worker import audit as queries
from worker import jsontext
from worker.cli_settings import settings_or_exit
from worker.config import Settings
from worker.ibkr import ids
from worker.store import Store, Tx
from worker.store.errors import DatabaseError

STATUS_FIELDS = (
    "clientInstructionId",
    "instructionType",
    "status",
    "instructionId",
    "instructionSetId",
    "ibReferenceId",
    "error",
    "result",
    "correlationId",
    "accountId",
    "createdAt",
    "updatedAt",
    "finalAt",
    "pollCount",
)
# Longest body shown in the readable dead-letter table (`--json` shows it whole).
BODY_PREVIEW_CHARS = 60


def _settings() -> Settings:
    return settings_or_exit()


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ibkr-worker: {message}", err=True)
    sys.exit(code)


@contextmanager
def _reading(settings: Settings) -> Iterator[Tx]:
    """A transaction on the configured database; a database error (the driver's own message,
    one line) ends the command with exit 1."""
    store = Store.connect(settings.database_url, pool_size=1)
    try:
        with store.transaction() as tx:
            yield tx
    except DatabaseError as error:
        _fail(
            f"cannot read the database ({error}); check DATABASE_URL and run `ibkr-worker migrate`"
        )
    finally:
        store.close()


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return jsontext.dumps(value)
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is left ragged."""
    rows = [[" ".join(cell.split()) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _print_json_lines(items: Sequence[dict[str, Any]]) -> None:
    for item in items:
        click.echo(jsontext.dumps(item))


def _id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """An id of the domain `worker.ibkr.ids` states (signed, |id| <= 2**53 - 1), or None.

    A malformed value fails the command with exit code 2, naming the parameter.
    """
    if value is None:
        return None
    try:
        return ids.read_id(value)
    except ids.IdError as error:
        raise click.BadParameter(f"{value!r} is not an id: it {error}") from None


_NEGATIVE_NUMBER = re.compile(r"-[0-9]+")


class SignedIdCommand(click.Command):
    """A command whose ID argument may be negative: `status -1988905739` reads the number as
    the argument, where click alone would take it for an option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {
            name
            for param in self.params
            if isinstance(param, click.Option) and not param.is_flag and not param.count
            for name in param.opts
        }
        options: list[str] = []
        numbers: list[str] = []
        rest: list[str] = []
        after_option = False
        for index, arg in enumerate(args):
            if arg == "--":
                rest = args[index + 1 :]
                break
            if not after_option and _NEGATIVE_NUMBER.fullmatch(arg):
                numbers.append(arg)
            else:
                options.append(arg)
            after_option = not after_option and arg in takes_value
        # Everything after "--" is an argument, whatever it looks like.
        return super().parse_args(ctx, [*options, "--", *numbers, *rest])


# --- migrate ----------------------------------------------------------------------------------


@click.command("migrate")
def migrate() -> None:
    """Bring the database (DATABASE_URL) to the newest schema.

    Safe to run again, and from several hosts at once. Prints the revision reached.
    """
    # Imported here: Alembic is only needed by this command.
    from worker.store.migrate import current_revision, upgrade_to_head

    settings = _settings()
    try:
        upgrade_to_head(settings.database_url)
        revision = current_revision(settings.database_url)
    except DatabaseError as error:
        _fail(f"migration failed ({error}); check DATABASE_URL and that the user owns the database")
    click.echo(f"database at revision {revision} (newest)")


# --- status -----------------------------------------------------------------------------------


def _print_state(state: dict[str, Any]) -> None:
    width = max(len(name) for name in STATUS_FIELDS)
    for name in STATUS_FIELDS:
        value = state.get(name)
        if name == "error" and isinstance(value, dict):
            text = f"{value.get('code')}: {value.get('message')}"
        else:
            text = _text(value)
        click.echo(f"{name.ljust(width)}  {text}")


@click.command("status", cls=SignedIdCommand)
@click.argument("client_instruction_id", required=False, callback=_id)
@click.option("--message-id", help="The message id `submit` printed, instead of an id.")
@click.option("--json", "as_json", is_flag=True, help="Print only JSON (one line per member).")
def status(client_instruction_id: int | None, message_id: str | None, as_json: bool) -> None:
    """The tracked state of one instruction, by CLIENT_INSTRUCTION_ID or by --message-id.

    A bulk request's message id shows every member. Exits 1 if the instruction is unknown.
    CLIENT_INSTRUCTION_ID may be negative (IBKR's ids are signed): `status -1988905739`.
    """
    if (client_instruction_id is None) == (message_id is None):
        raise click.UsageError("give exactly one of CLIENT_INSTRUCTION_ID and --message-id")
    settings = _settings()
    with _reading(settings) as tx:
        if message_id is not None:
            states = queries.find_statuses_by_message_id(tx, message_id)
            unknown = f"no instruction known for message id {message_id!r}"
        else:
            state = queries.find_status(tx, client_instruction_id=client_instruction_id)
            states = [state] if state is not None else []
            unknown = f"no instruction known with clientInstructionId {client_instruction_id}"
    if not states:
        _fail(unknown)
    if as_json:
        _print_json_lines(states)
        return
    for index, state in enumerate(states):
        if index:
            click.echo()
        _print_state(state)


# --- audit ------------------------------------------------------------------------------------


def _iso8601(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time (`2026-11-24`, `2026-11-24T10:00:00Z`); naive means UTC.

    A malformed value fails the command with exit code 2, naming the option.
    """
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-11-24T10:00:00Z)"
        ) from None


def _audit_row(event: dict[str, Any]) -> list[str]:
    api = event["api"]
    api_text = "-"
    if api is not None:
        latency = api["latencyMs"]
        latency_text = f" {latency:.0f}ms" if isinstance(latency, int | float) else ""
        api_text = f"{api['method'] or ''} {api['path'] or ''} {_text(api['httpStatus'])}"
        api_text += latency_text
    transition = f"{event['fromStatus'] or '-'} -> {event['toStatus'] or '-'}"
    return [
        event["at"] or "-",
        _text(event["clientInstructionId"]),
        _text(event["instructionId"]),
        _text(event["instructionSetId"]),
        transition,
        event["actor"],
        api_text.strip(),
        event["reason"],
    ]


AUDIT_HEADERS = (
    "AT",
    "CLIENT_INSTRUCTION_ID",
    "INSTRUCTION_ID",
    "SET_ID",
    "STATUS",
    "ACTOR",
    "API",
    "REASON",
)


@click.command("audit")
@click.option(
    "--client-instruction-id",
    metavar="ID",
    callback=_id,
    help="Events of this clientInstructionId (may be negative).",
)
@click.option(
    "--instruction-id", metavar="ID", callback=_id, help="Events of this IBKR instructionId."
)
@click.option(
    "--instruction-set-id",
    metavar="ID",
    callback=_id,
    help="Events of this IBKR instructionSetId.",
)
@click.option("--account", "account_id", help="Events of instructions on this account.")
@click.option("--correlation-id", help="Events carrying this correlation id.")
@click.option(
    "--since",
    metavar="ISO8601",
    callback=_iso8601,
    help="Events at or after this time (inclusive).",
)
@click.option(
    "--until", metavar="ISO8601", callback=_iso8601, help="Events before this time (exclusive)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=queries.DEFAULT_AUDIT_LIMIT,
    show_default=True,
    help="At most this many events (the oldest).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines, one event a line.")
def audit(
    client_instruction_id: int | None,
    instruction_id: int | None,
    instruction_set_id: int | None,
    account_id: str | None,
    correlation_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail, oldest first: every event matching all the filters given.

    Times without a zone are UTC. Prints nothing (exit 0) when no event matches.
    """
    settings = _settings()
    with _reading(settings) as tx:
        events = queries.audit_trail(
            tx,
            client_instruction_id=client_instruction_id,
            instruction_id=instruction_id,
            instruction_set_id=instruction_set_id,
            account_id=account_id,
            correlation_id=correlation_id,
            since=since,
            until=until,
            limit=limit,
        )
    if as_json:
        _print_json_lines(events)
        return
    if not events:
        click.echo("no audit events match", err=True)
        return
    click.echo(_table(AUDIT_HEADERS, [_audit_row(event) for event in events]))


# --- dead letters -----------------------------------------------------------------------------


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages that could not be processed (set aside with the reason)."""


def _preview(body: str) -> str:
    flat = " ".join(body.split())
    if len(flat) <= BODY_PREVIEW_CHARS:
        return flat
    return flat[: BODY_PREVIEW_CHARS - 3] + "..."


@dead_letters.command("list")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=queries.DEFAULT_DEAD_LETTER_LIMIT,
    show_default=True,
    help="At most this many (the oldest).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines, one dead letter a line.")
def list_command(limit: int, as_json: bool) -> None:
    """Dead letters, oldest first: id, message id, when seen, reason and the raw body."""
    settings = _settings()
    with _reading(settings) as tx:
        letters = queries.list_dead_letters(tx, limit=limit)
    if as_json:
        _print_json_lines(letters)
        return
    if not letters:
        click.echo("no dead letters", err=True)
        return
    rows = [
        [
            str(letter["id"]),
            letter["seenAt"] or "-",
            _text(letter["messageId"]),
            str(letter["replayCount"]),
            letter["reason"],
            _preview(letter["body"]),
        ]
        for letter in letters
    ]
    click.echo(_table(("ID", "SEEN_AT", "MESSAGE_ID", "REPLAYS", "REASON", "BODY"), rows))
