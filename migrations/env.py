"""Alembic environment: runs the revisions against the database the caller names.

Where the database comes from, first match wins:

1. `config.attributes["connection"]`: an open SQLAlchemy connection (``worker.store.migrate`` passes
   one that already holds the migration lock; the caller commits);
2. `config.attributes["url"]`: a URL set in code;
3. the `sqlalchemy.url` option of the configuration;
4. the `DATABASE_URL` environment variable, then the product's default.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from models import Base, make_engine, normalise_url

DEFAULT_DATABASE_URL = "sqlite:///ibkr_worker.db"

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    return normalise_url(str(url))


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else (url or "").split(":")[0]
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later revisions rewrite tables in batch mode.
        render_as_batch=dialect.startswith("sqlite"),
        compare_type=True,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (`alembic upgrade head --sql`)."""
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the revisions on a live connection, all in one transaction."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_database_url(), pool_size=1)
    try:
        with engine.connect() as own_connection:
            _configure(connection=own_connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
