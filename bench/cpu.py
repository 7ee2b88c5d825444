"""CPU seconds per part of the stack over a run (this machine's processes), to show where a
run's time goes beyond our own processes: PostgreSQL, RabbitMQ, the sandbox."""

from __future__ import annotations

from collections.abc import Iterable

import psutil

SERVER_NAMES = {"postgres": "PostgreSQL", "beam.smp": "RabbitMQ"}


def family(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes `pids` and all their descendants (those that still exist)."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found[process.pid] = process
            for child in process.children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return float(times.user + times.system)


class CpuMeter:
    """Snapshot CPU seconds of named groups of processes, and of the servers, at start and end."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[tuple[str, int], float] = {}
        self._processes: dict[tuple[str, int], psutil.Process] = {}

    def _snapshot(self) -> dict[tuple[str, int], float]:
        values: dict[tuple[str, int], float] = {}
        for name, pids in self.groups.items():
            for process in family(pids):
                self._processes.setdefault((name, process.pid), process)
        for process in psutil.process_iter(["name"]):
            label = SERVER_NAMES.get(process.info["name"] or "")
            if label is not None:
                self._processes.setdefault((label, process.pid), process)
        for key, process in self._processes.items():
            values[key] = _cpu(process)
        return values

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group (and per server) since `start`."""
        end = self._snapshot()
        totals: dict[str, float] = {}
        for key, value in end.items():
            used = value - self._start.get(key, 0.0)
            totals[key[0]] = round(totals.get(key[0], 0.0) + max(used, 0.0), 2)
        return totals
