"""`ibkr-worker demo` as a new user runs it: no services, exit 0, the expected outcomes shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_the_demo_reaches_every_expected_outcome_without_outside_services(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BROKER_URL": "amqp://nobody@127.0.0.1:1/%2F",
        "DATABASE_URL": "sqlite:////nonexistent/x.db",
    }
    result = subprocess.run(
        [str(BIN / "ibkr-worker"), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "every outcome was the expected one" in out
    for expected in (
        "CONFLICT",
        "FAILED",
        "PENDING_VERIFICATION",
        "Audit trail of clientInstructionId",
    ):
        assert expected in out
    assert "UNEXPECTED" not in out
    # The embedded defaults leave nothing behind in the working directory.
    assert list(tmp_path.iterdir()) == []
