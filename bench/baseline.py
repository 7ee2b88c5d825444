"""An earlier commit of the product, run beside this one in the same benchmark.

`checkout(rev)` makes a detached git worktree of `rev` in a temporary directory (removed on the
way out); `env_for(checkout, env)` points a product process at it: the same virtualenv and
`ibkr-worker` command, with the checkout's code first on the import path (the installed package
is editable, so the path decides which code runs). `migrate(checkout, env)` brings a database
to the checkout's own newest schema with its own `ibkr-worker migrate`, as its release line
would.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import BIN, REPO


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A worktree of `rev` (a commit, tag or branch of this repository)."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as parent:
        path = Path(parent) / commit[:12]
        _git("worktree", "add", "--detach", str(path), commit)
        try:
            yield path
        finally:
            _git("worktree", "remove", "--force", str(path))


def describe(path: Path) -> str:
    """`<short commit> <subject>` of a checkout."""
    return subprocess.run(
        ["git", "-C", str(path), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def env_for(path: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` with the checkout's code first on the import path instead of this one's."""
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    return {**env, "PYTHONPATH": os.pathsep.join([str(path), *rest])}


def migrate(path: Path, env: dict[str, str]) -> None:
    """Run the checkout's `ibkr-worker migrate` on `env`'s DATABASE_URL."""
    done = subprocess.run(
        [str(BIN / "ibkr-worker"), "migrate"],
        env=env_for(path, env),
        cwd=path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the baseline's migrate failed: {done.stderr.strip()[-500:]}")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout
