"""What the benchmark is judged by: the machine it ran on, and the targets with PASS/FAIL."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def machine() -> dict[str, Any]:
    def first(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        return out.strip().splitlines()[0] if out.strip() else "unknown"

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as info:
            kib = int(info.readline().split()[1])
            memory_gib = round(kib / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": memory_gib,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "postgresql": first(["psql", "--version"]),
        "rabbitmq": first(["rabbitmqctl", "-q", "version"]),
        "kernel": platform.release(),
    }


THROUGHPUT_RATIO = 0.5
#: How far below an earlier commit's median ratio (`--compare`) this one may be.
BASELINE_SLACK = 0.03
CALLS_PER_FINAL = 1.5
DRAIN_OVER_LEAST = 1.15
DRAIN_CALLS_PER_INSTRUCTION = 1.6
LIMIT_PER_SECOND = 10
LIMIT_PER_MINUTE = 600
#: "equal within noise": the larger limits may cost at most this much more per reservation.
LIMITER_COST_RATIO = 1.25
RSS_LIMIT_MB = 200.0
QUERY_P95_MS = 50.0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured figure and PASS/FAIL (INFO: reported only)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, target: str, verdict: str) -> None:
        out.append({"target": name, "value": value, "goal": target, "verdict": verdict})

    throughput = results.get("throughput")
    if throughput and "ratio" in throughput:
        ratio = throughput["ratio"]
        add(
            "pipeline / floor throughput",
            ratio,
            f">= {THROUGHPUT_RATIO}",
            _verdict(ratio >= THROUGHPUT_RATIO),
        )
    if throughput and "baseline" in throughput:
        before = throughput["baseline"]
        add(
            f"pipeline / floor against {before['commit'].split()[0]} (medians, same run)",
            f"{before['ratio_now']} vs {before['ratio']}",
            f">= {before['ratio']} - {BASELINE_SLACK}",
            _verdict(before["ratio_now"] >= before["ratio"] - BASELINE_SLACK),
        )
    drain = results.get("drain")
    if drain and "calls" in drain:
        add(
            "drain: wall time / least the limits allow",
            drain["wall_over_least"],
            f"<= {DRAIN_OVER_LEAST}",
            _verdict(drain["wall_over_least"] <= DRAIN_OVER_LEAST),
        )
        add(
            "drain: calls per instruction",
            drain["calls_per_instruction"],
            f"<= {DRAIN_CALLS_PER_INSTRUCTION}",
            _verdict(drain["calls_per_instruction"] <= DRAIN_CALLS_PER_INSTRUCTION),
        )
        add("drain: 429s", drain["throttled_429"], "0", _verdict(drain["throttled_429"] == 0))
        add(
            "drain: most arrivals per endpoint in any second",
            drain["max_per_endpoint_per_second"],
            f"<= {LIMIT_PER_SECOND}",
            _verdict(drain["max_per_endpoint_per_second"] <= LIMIT_PER_SECOND),
        )
        add(
            "drain: most arrivals per client in any minute",
            drain["max_per_client_per_minute"],
            f"<= {LIMIT_PER_MINUTE}",
            _verdict(drain["max_per_client_per_minute"] <= LIMIT_PER_MINUTE),
        )
    limiter = results.get("limiter")
    if limiter and "per_reservation" in limiter:
        costs = limiter["per_reservation"]
        add(
            "limiter: cost per reservation, 1000/60000 over 10/600",
            f"{limiter['large_over_small']} ("
            + " vs ".join(f"{c['alone_us']} us" for c in costs.values())
            + ")",
            f"<= {LIMITER_COST_RATIO} (equal within noise)",
            _verdict(limiter["large_over_small"] <= LIMITER_COST_RATIO),
        )
    polling = results.get("polling")
    if polling and "calls_per_final" in polling:
        calls = polling["calls_per_final"]
        add(
            "API calls per final instruction",
            calls,
            f"<= {CALLS_PER_FINAL}",
            _verdict(calls <= CALLS_PER_FINAL),
        )
        add("429s provoked", polling["throttled_429"], "0", _verdict(polling["throttled_429"] == 0))
        for key in ("lag_singles", "lag_bulk"):
            lag = polling[key]
            add(
                f"lag {key.split('_')[1]} p50 / p99 (s)",
                f"{lag['p50_s']} / {lag['p99_s']}",
                "reported (first measurement sets it)",
                "INFO",
            )
    memory = results.get("memory")
    if memory and "peak_rss_mb" in memory:
        for label, value in memory["peak_rss_mb"].items():
            add(
                f"peak RSS {label} (MB)",
                value,
                f"< {RSS_LIMIT_MB:.0f}",
                _verdict(value < RSS_LIMIT_MB),
            )
    audit = results.get("audit")
    if audit and "queries" in audit:
        for name, timing in audit["queries"].items():
            add(
                f"{name} p95 (ms)",
                timing["p95_ms"],
                f"< {QUERY_P95_MS:.0f}",
                _verdict(timing["p95_ms"] < QUERY_P95_MS),
            )
    return out
