"""Settings for a command: read once at its start, or one clear line and exit 2."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from worker.config import ConfigError, Settings, load_settings
from worker.logging import configure_logging


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop the command with one line on stderr, `ibkr-worker: <message>`, and exit `code`."""
    click.echo(f"ibkr-worker: {message}", err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    """Load the settings, or stop with one clear line naming the bad setting (exit 2)."""
    try:
        settings = load_settings()
    except ConfigError as error:
        click.echo(f"ibkr-worker: configuration error: {error}", err=True)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    return settings
