"""Fixtures of the acceptance tests, which run the outside contract's commands as processes."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty working directory of the test's own: no `.env` file for a command to read, and
    whatever a command writes there (a default SQLite file, keys) goes when the test ends."""
    directory = tmp_path / "work"
    directory.mkdir()
    return directory
