"""The sandbox is a package of its own: the product reaches it only from the demo and the
command line, and the sandbox uses of the product only IBKR's wire format and small shared
helpers. An import-lint over the source, not a convention."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The only product modules that may import the sandbox.
SANDBOX_USERS = {"worker/demo.py", "worker/cli.py"}
#: What the sandbox may import from the product (a module or a package and what is below it).
SANDBOX_MAY_USE = ("worker.ibkr", "worker.jsontext", "worker.http_server", "worker.logging")


def _imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_only_the_demo_and_the_command_line_import_the_sandbox() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "worker").rglob("*.py")
        if str(path.relative_to(ROOT)) not in SANDBOX_USERS
        and any(_within(name, ("ibkr_sandbox",)) for name in _imports(path))
    )
    assert offenders == []


def test_the_sandbox_uses_only_the_wire_format_and_shared_helpers_of_the_product() -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "ibkr_sandbox").rglob("*.py")
        for name in _imports(path)
        if _within(name, ("worker", "models", "migrations"))
        and not _within(name, SANDBOX_MAY_USE)
        # `from worker import jsontext` names the package first, then the module.
        and name != "worker"
    )
    assert offenders == []


def test_the_lint_sees_imports() -> None:
    """Guard against a lint that passes because it reads nothing."""
    assert "ibkr_sandbox" in set(_imports(ROOT / "worker" / "demo.py"))
    assert "worker.ibkr.calendar" in set(
        name for path in (ROOT / "ibkr_sandbox").rglob("*.py") for name in _imports(path)
    )
