"""Settings for a command: read once at its start, or one clear line and exit 2."""

from __future__ import annotations

import sys

import click

from worker.config import ConfigError, Settings, load_settings
from worker.logging import configure_logging


def settings_or_exit() -> Settings:
    """Load the settings, or stop with one clear line naming the bad setting (exit 2)."""
    try:
        settings = load_settings()
    except ConfigError as error:
        click.echo(f"ibkr-worker: configuration error: {error}", err=True)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    return settings
