"""Shared fixtures: real PostgreSQL and RabbitMQ for the tests that claim their behaviour.

Services are found through TEST_DATABASE_URL and TEST_BROKER_URL. Each run creates (and drops)
its own databases and its own RabbitMQ vhost. Under CI=true a missing service is a failure;
otherwise the tests that need it are skipped and listed at the end of the run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine, text

from tests.services import CI, TEST_BROKER_URL, TEST_DATABASE_URL, rabbitmqctl

RUN_ID = uuid.uuid4().hex[:8]

_not_run: dict[str, str] = {}


def _unavailable(service: str, reason: str) -> None:
    message = f"{service} unavailable: {reason}"
    if CI:
        pytest.fail(f"{message} (CI=true: services are required)", pytrace=False)
    _not_run[service] = reason
    pytest.skip(message)


def _port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true no test is skipped: a skip, wherever it comes from (a fixture, a marker, a
    test's own `pytest.skip`), is reported as a failure with its reason."""
    outcome = yield
    if not CI:
        return
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _not_run:
        terminalreporter.section("not run: services missing")
        for service, reason in sorted(_not_run.items()):
            terminalreporter.write_line(f"{service}: {reason}")


# --- PostgreSQL -----------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """URL of the PostgreSQL maintenance database (the run creates its own databases there)."""
    if not _port_open(TEST_DATABASE_URL, 5432):
        _unavailable("PostgreSQL", f"nothing answers at {urlsplit(TEST_DATABASE_URL).netloc}")
    try:
        engine = create_engine(TEST_DATABASE_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        _unavailable("PostgreSQL", f"cannot connect: {error}")
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def pg_database_factory(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Creates empty PostgreSQL databases on demand; drops them all at the end of the run."""
    created: list[str] = []
    # pre_ping: a test restarts PostgreSQL, and the run must still drop its databases after.
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)

    def create() -> str:
        name = f"ibkr_test_{RUN_ID}_{len(created)}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return _with_database(pg_admin_url, name)

    yield create
    with admin.connect() as connection:
        for name in created:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_pg_url(pg_database_factory: Callable[[], str]) -> str:
    """A new, empty PostgreSQL database."""
    return pg_database_factory()


@pytest.fixture
def pg_url(pg_database_factory: Callable[[], str]) -> str:
    """A new PostgreSQL database with every migration applied."""
    from worker.store.migrate import upgrade_to_head

    url = pg_database_factory()
    upgrade_to_head(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite database file with every migration applied."""
    from worker.store.migrate import upgrade_to_head

    url = f"sqlite:///{tmp_path / 'ibkr.db'}"
    upgrade_to_head(url)
    return url


# --- RabbitMQ -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A broker URL pointing at a vhost of this run's own (deleted at the end)."""
    if not _port_open(TEST_BROKER_URL, 5672):
        _unavailable("RabbitMQ", f"nothing answers at {urlsplit(TEST_BROKER_URL).netloc}")
    vhost = f"ibkr-test-{RUN_ID}"
    if shutil.which("rabbitmqctl") is None:
        # Cannot make a vhost here: use the configured one as it is.
        yield TEST_BROKER_URL
        return
    try:
        rabbitmqctl("add_vhost", vhost)
        parts = urlsplit(TEST_BROKER_URL)
        user = parts.username or "guest"
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    except (subprocess.SubprocessError, OSError) as error:
        _unavailable("RabbitMQ", f"cannot create a test vhost: {error}")
    parts = urlsplit(TEST_BROKER_URL)
    yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    try:
        rabbitmqctl("delete_vhost", vhost)
    except (subprocess.SubprocessError, OSError):
        pass


# --- keys -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsa_private_key() -> object:
    """One 3072-bit RSA key for the whole run (generating one takes about a second)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="session")
def rsa_key_files(
    rsa_private_key: object, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(private PEM path, public PEM path) of `rsa_private_key`."""
    from cryptography.hazmat.primitives import serialization

    key = rsa_private_key
    directory = tmp_path_factory.mktemp("keys")
    private_path = directory / "private.pem"
    public_path = directory / "public.pem"
    private_path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


@pytest.fixture
def fresh_amqp_url(amqp_url: str) -> Iterator[str]:
    """A RabbitMQ vhost of this test's own (queues and exchanges start empty)."""
    if shutil.which("rabbitmqctl") is None:
        yield amqp_url
        return
    vhost = f"ibkr-test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    parts = urlsplit(TEST_BROKER_URL)
    rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
    yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    try:
        rabbitmqctl("delete_vhost", vhost)
    except (subprocess.SubprocessError, OSError):
        pass


# --- the whole pipeline (fault tests) -------------------------------------------------------


@pytest.fixture
def make_pipeline(
    pg_url: str, fresh_amqp_url: str, rsa_key_files: tuple[Path, Path], tmp_path: Path
) -> Iterator[Callable[..., object]]:
    """`make_pipeline(extra_env=None, **sandbox_config)`: a `tests.integration.pipeline.Pipeline`
    on this test's database and vhost, with a sandbox configured by `sandbox_config`; its
    processes are stopped and the sandbox closed at the end of the test.

    The sandbox accepts a re-POST of a used clientInstructionId as a second transaction unless
    the test says otherwise (the worse branch of reference 8.4): a second POST then shows up as
    money applied twice (`ledger_counts`), not as a harmless 422."""
    from tests.integration.pipeline import Pipeline, make_sandbox

    private_key, public_key = rsa_key_files
    made: list[Pipeline] = []

    def make(extra_env: dict[str, str] | None = None, **sandbox_config: object) -> Pipeline:
        sandbox = make_sandbox(
            public_key.read_bytes(), **{"duplicate_post": "accept", **sandbox_config}
        )
        pipe = Pipeline(
            pg_url, fresh_amqp_url, sandbox, private_key, tmp_path, extra_env=dict(extra_env or {})
        )
        made.append(pipe)
        return pipe

    yield make
    for pipe in made:
        try:
            pipe.stop_all()
        finally:
            pipe.sandbox.stop()


@pytest.fixture
def pipeline(make_pipeline: Callable[..., object]) -> object:
    """A `Pipeline` (see `make_pipeline`) whose sandbox runs its clock 60 times faster."""
    return make_pipeline(speed=60.0)
