"""The packaged migrations build exactly the schema the models declare, on both databases."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from models import Base, make_engine
from worker.store.migrate import (
    current_revision,
    downgrade_to_base,
    head_revision,
    is_up_to_date,
    upgrade_to_head,
)

PARTIAL_INDEXES = {
    "uq_client_instructions_owner": "duplicate_of_id IS NULL",
    "ix_client_instructions_due": "next_poll_at IS NOT NULL",
    "ix_outbox_unpublished": "published_at IS NULL",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("empty_pg_url"))
    return f"sqlite:///{tmp_path / 'empty.db'}"


def _schema_diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _index_definitions(url: str) -> dict[str, str]:
    """Index name -> its SQL definition as the database keeps it."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                rows = connection.execute(
                    text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
                )
            else:
                rows = connection.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
                )
            return {name: definition or "" for name, definition in rows}
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_models_schema(empty_url: str) -> None:
    upgrade_to_head(empty_url)

    assert _schema_diff(empty_url) == []
    expected_tables = set(Base.metadata.tables)
    assert _table_names(empty_url) == expected_tables | {"alembic_version"}
    assert current_revision(empty_url) == head_revision()
    assert is_up_to_date(empty_url)


def test_every_model_index_exists_and_partial_ones_are_partial(empty_url: str) -> None:
    upgrade_to_head(empty_url)
    definitions = _index_definitions(empty_url)

    for table in Base.metadata.tables.values():
        for index in table.indexes:
            assert index.name in definitions, f"{index.name} missing"
    for name, condition in PARTIAL_INDEXES.items():
        assert condition.lower() in definitions[name].lower().replace("(", "").replace(")", "")


def test_downgrade_to_base_leaves_no_tables_and_upgrade_works_again(empty_url: str) -> None:
    upgrade_to_head(empty_url)

    downgrade_to_base(empty_url)

    assert _table_names(empty_url) <= {"alembic_version"}
    assert [name for name in _index_definitions(empty_url) if "alembic_version" not in name] == []
    assert current_revision(empty_url) is None
    assert not is_up_to_date(empty_url)
    upgrade_to_head(empty_url)
    assert _schema_diff(empty_url) == []


def test_migrating_twice_changes_nothing(empty_url: str) -> None:
    upgrade_to_head(empty_url)
    upgrade_to_head(empty_url)

    assert current_revision(empty_url) == head_revision()
    assert _schema_diff(empty_url) == []


def test_downgrade_on_postgresql_drops_sequence_function_and_triggers(empty_pg_url: str) -> None:
    upgrade_to_head(empty_pg_url)
    downgrade_to_base(empty_pg_url)

    engine = create_engine(empty_pg_url)
    with engine.connect() as connection:
        sequences = connection.execute(
            text("SELECT count(*) FROM pg_class WHERE relkind = 'S'")
        ).scalar_one()
        functions = connection.execute(
            text(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'public'"
            )
        ).scalar_one()
    engine.dispose()
    assert (sequences, functions) == (0, 0)


def test_concurrent_migrate_on_postgresql_all_succeed(empty_pg_url: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade_to_head(empty_pg_url)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert current_revision(empty_pg_url) == head_revision()
    assert _schema_diff(empty_pg_url) == []


@pytest.fixture
def owner_only_pg_url(pg_admin_url: str) -> Iterator[str]:
    """A database owned by an ordinary role (no superuser, no CREATEDB, no CREATEROLE)."""
    suffix = uuid.uuid4().hex[:8]
    role, database, password = f"ibkr_owner_{suffix}", f"ibkr_owned_{suffix}", uuid.uuid4().hex
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            text(
                f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"
                " NOSUPERUSER NOCREATEDB NOCREATEROLE"
            )
        )
        connection.execute(text(f"CREATE DATABASE {database} OWNER {role}"))
    parts = urlsplit(pg_admin_url)
    netloc = f"{role}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    yield urlunsplit((parts.scheme, netloc, "/" + database, "", ""))
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
    admin.dispose()


def test_an_ordinary_database_owner_can_migrate_up_and_down(owner_only_pg_url: str) -> None:
    upgrade_to_head(owner_only_pg_url)
    assert _schema_diff(owner_only_pg_url) == []

    downgrade_to_base(owner_only_pg_url)
    assert _table_names(owner_only_pg_url) <= {"alembic_version"}


def test_migrate_is_independent_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{tmp_path / 'ibkr.db'}"

    upgrade_to_head(url)

    assert current_revision(url) == head_revision()
