"""The store's door: SQLAlchemy and Alembic are imported only by `models/`, `migrations/` and
`worker/store/` (and by the tests and benchmarks, which look at the tables directly). Every
other module gets rows and errors from the store, so a statement cannot creep back into a
service unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATABASE_LIBRARIES = {"sqlalchemy", "alembic"}
#: Where they may be imported (paths relative to the repository).
ALLOWED = ("models/", "migrations/", "worker/store/", "tests/", "bench/")


def python_files() -> list[Path]:
    """The repository's own modules (virtualenvs, caches and build output left out)."""
    return sorted(
        path
        for path in ROOT.rglob("*.py")
        if not any(
            part.startswith(".")
            or part in {"build", "dist", "__pycache__"}
            or part.endswith(".egg-info")
            for part in path.relative_to(ROOT).parts[:-1]
        )
    )


def database_imports(path: Path) -> list[str]:
    """`line: import` for each import of SQLAlchemy or Alembic in the module at `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in DATABASE_LIBRARIES:
                found.append(f"{node.lineno}: {name}")
    return found


def test_the_walk_finds_the_modules_and_their_imports() -> None:
    files = {path.relative_to(ROOT).as_posix() for path in python_files()}
    assert {"worker/tracking/poll.py", "worker/store/database.py", "models/tables.py"} <= files
    assert database_imports(ROOT / "worker/store/database.py")  # the store does import it
    assert not database_imports(ROOT / "worker/tracking/poll.py")


def test_sqlalchemy_and_alembic_are_imported_only_behind_the_store() -> None:
    offenders = [
        f"{relative}:{where}"
        for path in python_files()
        if not (relative := path.relative_to(ROOT).as_posix()).startswith(ALLOWED)
        for where in database_imports(path)
    ]
    assert offenders == [], (
        "SQLAlchemy/Alembic imported outside models/, migrations/ and worker/store/: "
        + ", ".join(offenders)
    )
