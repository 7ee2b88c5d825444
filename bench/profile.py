"""Sample our processes with py-spy while they work and summarise where their CPU goes.

py-spy samples the processes from outside (no code of ours runs inside them); with `--gil`
only the thread holding the GIL is sampled, so the shares are shares of the processes' Python
CPU time (waiting on PostgreSQL, the sandbox or the GIL is left out). The raw (folded) stacks are
kept next to the logs; only the summary goes into the results.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# First rule that matches any frame of a stack names its category (order matters: logging
# that serialises JSON is logging, a signature that serialises JSON is signing).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("logging (structlog)", ("structlog", "/logging/", "worker/logging.py")),
    ("RS256 signing", ("worker/ibkr/signing.py", "cryptography", "/jwt/")),
    ("HTTP client (httpx)", ("httpx", "httpcore", "h11")),
    ("PostgreSQL driver (psycopg)", ("psycopg",)),
    ("SQLAlchemy (ORM/Core)", ("sqlalchemy",)),
    ("broker (dramatiq/pika)", ("dramatiq", "pika")),
    ("request validation", ("worker/ibkr/requests.py", "jsonschema", "pydantic")),
    ("product code (worker/, models/)", ("/worker/", "/models/")),
]
OTHER = "other (interpreter, stdlib)"


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


@dataclass
class Recorder:
    """One `py-spy record` per pid, stopped together by `stop()`."""

    out_dir: Path
    rate_hz: int = 100
    _running: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, label: str, pid: int) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        out = self.out_dir / f"profile-{label}-{pid}.folded"
        process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate_hz),
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._running.append((label, process, out))

    def stop(self) -> dict[str, list[Path]]:
        outputs: dict[str, list[Path]] = {}
        for _label, process, _out in self._running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for label, process, out in self._running:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
            outputs.setdefault(label, []).append(out)
        self._running.clear()
        return outputs


def read_folded(paths: list[Path]) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            head, _, count = line.rpartition(" ")
            if not head or not count.isdigit():
                continue
            stacks[tuple(head.split(";"))] += int(count)
    return stacks


def _category(stack: tuple[str, ...]) -> str:
    for name, needles in CATEGORIES:
        if any(needle in frame for frame in stack for needle in needles):
            return name
    return OTHER


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({tail})"


def summarise(
    paths: list[Path], *, top: int = 12, inclusive: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Shares of samples per category, the top leaf functions (self time) and the inclusive
    share of the named functions (matched against the frame's function name)."""
    stacks = read_folded(paths)
    total = sum(stacks.values())
    if total == 0:
        return {"samples": 0}
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    including: Counter[str] = Counter()
    for stack, count in stacks.items():
        categories[_category(stack)] += count
        leaves[_short(stack[-1])] += count
        names = {frame.partition(" (")[0] for frame in stack}
        for wanted in inclusive:
            if wanted in names:
                including[wanted] += count
    share = lambda n: round(100.0 * n / total, 1)  # noqa: E731
    return {
        "samples": total,
        "categories": {name: share(n) for name, n in categories.most_common()},
        "top_self": [{"function": name, "pct": share(n)} for name, n in leaves.most_common(top)],
        "inclusive": {name: share(including[name]) for name in inclusive},
    }
