"""Alembic upgrade and downgrade with the migrations shipped inside the package.

The configuration is built in code (no `alembic.ini` is read), so `ibkr-worker migrate` works
from any working directory. Database errors leave as the store's (`worker.store.errors`). Each
run happens in one transaction: on PostgreSQL it first takes a transaction-level advisory lock,
so concurrent runs wait for each other and the later ones find the schema already at head; on
SQLite the engine's `BEGIN IMMEDIATE` serialises them.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

import migrations
from models.db import make_engine, normalise_url
from worker.store.errors import translated

# Arbitrary but fixed key of the PostgreSQL advisory lock held while migrating ("ibkrmigr").
MIGRATION_LOCK_KEY = 0x69626B726D696772


def migrations_directory() -> Path:
    """The installed `migrations` package (env.py, script.py.mako, versions/)."""
    # `__path__` rather than `__file__`: an editable install may present it as a namespace.
    for entry in migrations.__path__:
        candidate = Path(entry)
        if (candidate / "env.py").is_file():
            return candidate.resolve()
    raise RuntimeError(
        "the packaged migrations (migrations/env.py) are missing; reinstall ibkr-worker"
    )


def alembic_config(url: str) -> Config:
    """An Alembic configuration for `url` that uses the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    # Passed as an attribute, not an option: URL passwords may hold `%`, which options interpolate.
    config.attributes["url"] = normalise_url(url)
    return config


def head_revision() -> str | None:
    """The newest revision the package ships."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Released at commit or rollback; an ordinary user may take advisory locks.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def _run(url: str, target: str, *, upgrade: bool) -> None:
    config = alembic_config(url)
    engine = make_engine(url, pool_size=1)
    try:
        with translated(), engine.begin() as connection:
            _lock(connection)
            config.attributes["connection"] = connection
            if upgrade:
                command.upgrade(config, target)
            else:
                command.downgrade(config, target)
    finally:
        engine.dispose()


def upgrade_to_head(url: str) -> None:
    """Bring the database at `url` to the newest schema. Safe to run again, and concurrently."""
    _run(url, "head", upgrade=True)


def downgrade_to_base(url: str) -> None:
    """Undo every migration: drops every table, index, sequence and trigger they created."""
    _run(url, "base", upgrade=False)


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at, or None if it was never migrated."""
    engine = make_engine(url, pool_size=1)
    try:
        with translated(), engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str) -> bool:
    """True when the database at `url` is at the newest revision the package ships."""
    return current_revision(url) == head_revision()
