"""The one-shot operating commands: `submit`, `health`, `dead-letters replay`, `demo` (the
long-running `worker` and `scheduler` are in `worker.cli_processes`)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from worker.cli_settings import fail, settings_or_exit
from worker.config import Settings
from worker.ibkr.requests import RequestValidationError, parse_request
from worker.logging import get_logger
from worker.store import Store
from worker.store.errors import DatabaseError
from worker.store.migrate import is_up_to_date

log = get_logger(__name__)
OUTBOX_MAX_AGE_S = 60.0


def _settings() -> Settings:
    return settings_or_exit()


def read_entries(raw_text: str) -> list[Any]:
    """One JSON object, a JSON array, or JSON Lines -> the list of entries (ValueError names the
    line that is not JSON)."""
    stripped = raw_text.strip()
    if not stripped:
        raise ValueError("the input is empty")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        entries = []
        for number, line in enumerate(stripped.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number}: not valid JSON ({error.msg})") from None
        return entries
    return whole if isinstance(whole, list) else [whole]


def entry_kwargs(number: int, entry: Any) -> dict[str, Any]:
    """The actor's keyword arguments for one entry, validated (ValueError names entry and field)."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry {number}: must be a JSON object")
    if "instructionType" in entry:
        kwargs: dict[str, Any] = {"request": entry}
    elif "request" in entry:
        unexpected = sorted(set(entry) - {"request", "correlation_id"})
        if unexpected:
            raise ValueError(f"entry {number}: unexpected keys {', '.join(unexpected)}")
        kwargs = dict(entry)
        correlation_id = kwargs.get("correlation_id")
        if correlation_id is not None and (
            not isinstance(correlation_id, str)
            or len(correlation_id) > 128
            or not correlation_id.isascii()
        ):
            raise ValueError(
                f"entry {number}: correlation_id must be an ASCII string of at most 128 characters"
            )
        if correlation_id is None:
            kwargs.pop("correlation_id", None)
    else:
        raise ValueError(
            f"entry {number}: neither a request body (with instructionType) nor "
            '{"request": ..., "correlation_id": ...}'
        )
    try:
        parse_request(kwargs["request"])
    except RequestValidationError as error:
        raise ValueError(f"entry {number}: {error}") from None
    return kwargs


def member_ids(request: dict[str, Any]) -> list[Any]:
    members = request["instructions"] if "instructions" in request else [request["instruction"]]
    return [member.get("clientInstructionId") for member in members]


@click.command("submit")
@click.argument("source", default="-", type=click.File("r", encoding="utf-8"))
def submit_command(source: Any) -> None:
    """Publish instruction requests from FILE (or - for standard input) to `ibkr.instructions`.

    FILE holds one JSON object, a JSON array, or JSON Lines; each entry is a bare IBKR request
    body or {"request": ..., "correlation_id": ...}. Prints one JSON line per request member:
    its clientInstructionId (null when the worker assigns it) and the messageId. Invalid input
    exits 2 naming the entry and field, and nothing is published.
    """
    settings = _settings()
    try:
        entries = read_entries(source.read())
        all_kwargs = [entry_kwargs(number, entry) for number, entry in enumerate(entries, start=1)]
    except ValueError as error:
        fail(f"invalid input: {str(error).rstrip('.')}; nothing was published", 2)
    from worker.broker import build_message, make_broker

    broker = make_broker(settings.broker_url)
    try:
        for kwargs in all_kwargs:
            message = build_message(kwargs)
            broker.enqueue(message)
            for client_instruction_id in member_ids(kwargs["request"]):
                if isinstance(client_instruction_id, str) and client_instruction_id.isdigit():
                    client_instruction_id = int(client_instruction_id)
                click.echo(
                    json.dumps(
                        {
                            "clientInstructionId": client_instruction_id,
                            "messageId": message.message_id,
                        }
                    )
                )
    finally:
        broker.close()


@click.command("health")
def health_command() -> None:
    """Exit 0 when the database and the broker answer and the outbox is flowing (no event
    older than a minute waits); otherwise exit 1 with the reasons."""
    settings = _settings()
    from worker.broker import broker_reachable
    from worker.store import events

    problems: list[str] = []
    store = Store.connect(settings.database_url)
    try:
        if not is_up_to_date(settings.database_url):
            problems.append("database: schema not up to date (run `ibkr-worker migrate`)")
            oldest = None
        else:
            with store.transaction() as tx:
                oldest = events.oldest_unpublished_at(tx)
        if oldest is not None:
            age = (datetime.now(UTC) - oldest).total_seconds()
            if age > OUTBOX_MAX_AGE_S:
                problems.append(
                    f"outbox: the oldest unpublished event waits for {age:.0f} s "
                    "(is a scheduler running?)"
                )
    except DatabaseError as error:  # the driver's own words, without SQL
        problems.append(f"database: unreachable ({error})")
    finally:
        store.close()
    broker_problem = broker_reachable(settings.broker_url)
    if broker_problem is not None:
        problems.append(f"broker: unreachable ({broker_problem})")
    if problems:
        for problem in problems:
            click.echo(f"unhealthy: {problem}")
        sys.exit(1)
    click.echo("healthy: database, broker and outbox OK")


@click.command("replay")
@click.argument("ids", nargs=-1, required=True, type=int)
def replay_command(ids: tuple[int, ...]) -> None:
    """Re-enqueue the dead letters IDS (from `dead-letters list`) to `ibkr.instructions`: the
    original bytes, unchanged, with the message's failure count reset."""
    settings = _settings()
    from worker.broker import publish_raw
    from worker.tracking.deadletters import letters_to_replay, mark_replayed

    store = Store.connect(settings.database_url)
    try:
        with store.transaction() as tx:
            replays = letters_to_replay(tx, list(ids))
            # Reset first: a worker may take the message as soon as it is published.
            mark_replayed(tx, replays, datetime.now(UTC))
            publish_raw(settings.broker_url, [replay.original for replay in replays])
    except (LookupError, ValueError) as error:
        fail(str(error), 1)
    finally:
        store.close()
    for letter_id in ids:
        click.echo(json.dumps({"id": letter_id, "replayed": True}))


@click.command("demo")
@click.option(
    "--database-url", help="Use this database instead of SQLite in a temporary directory."
)
@click.option("--broker-url", help="Use this RabbitMQ instead of the in-process broker.")
def demo_command(database_url: str | None, broker_url: str | None) -> None:
    """The whole pipeline on embedded defaults (sandbox, SQLite, in-process broker): a
    back-office morning, live progress, the final table and one audit trail. Exit 0 only if
    every outcome was the expected one."""
    from worker.demo import run_demo
    from worker.logging import configure_logging

    configure_logging("WARNING", "console")
    sys.exit(run_demo(database_url, broker_url))
