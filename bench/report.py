"""The Markdown report of a run (its targets are judged in bench.targets)."""

from __future__ import annotations

from typing import Any


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(results: dict[str, Any]) -> str:
    """The whole run as Markdown: machine, targets, then the figures of each benchmark."""
    m = results["machine"]
    lines = [
        "## ibkr-worker benchmark",
        "",
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, load average "
        f"{' '.join(str(x) for x in m['load_average'])} at start; Python {m['python']}, "
        f"{m['postgresql']}, RabbitMQ {m['rabbitmq']}.",
        "",
        "### Targets",
        "",
        _row("target", "measured", "goal", "verdict"),
        _row("---", "---:", "---", "---"),
    ]
    lines += [_row(t["target"], t["value"], t["goal"], t["verdict"]) for t in results["targets"]]
    for name in ("throughput", "drain", "limiter", "polling", "memory", "audit"):
        if name in results and "error" in results[name]:
            lines += ["", f"**{name} failed:** `{results[name]['error'][:500]}`"]
    throughput = results.get("throughput")
    if throughput and "floor" in throughput:
        floor, pipeline = throughput["floor"], throughput["pipeline"]
        shape = throughput["shape"]
        floors = throughput.get("floors", [floor])
        lines += [
            "",
            f"### Throughput ({pipeline['n']} internal cash transfers answered 201)",
            "",
            _row(
                "run",
                "processes x threads",
                "instructions/s",
                "elapsed s",
                "CPU seconds by process",
            ),
            _row("---", "---:", "---:", "---:", "---"),
        ]
        lines += [
            _row(
                "floor (sign + POST, store nothing)" + (" **best**" if run == floor else ""),
                _shape_of(run, shape),
                run["rate_per_s"],
                run["elapsed_s"],
                _cpu(run["cpu_s"]),
            )
            for run in floors
        ]
        rounds = throughput.get("rounds", [])
        for index, r in enumerate(rounds):
            lines += [
                _row(
                    f"round {index + 1}: floor at its best shape",
                    _shape_of(floor, shape),
                    r["floor_rate_per_s"],
                    r["floor_elapsed_s"],
                    _cpu(r["floor_cpu_s"]),
                ),
                _row(
                    f"round {index + 1}: pipeline (PROCESSED + events published), "
                    f"ratio **{r['ratio']}**",
                    "default",
                    r["pipeline_rate_per_s"],
                    r["pipeline_elapsed_s"],
                    _cpu(r["pipeline_cpu_s"]),
                ),
            ]
            if "baseline_ratio" in r:
                lines.append(
                    _row(
                        f"round {index + 1}: baseline pipeline, ratio {r['baseline_ratio']}",
                        "default",
                        r["baseline_rate_per_s"],
                        r["baseline_elapsed_s"],
                        _cpu(r["baseline_cpu_s"]),
                    )
                )
        lines += [
            "",
            f"pipeline / floor = **{throughput['ratio']}** (the median of the paired rounds; "
            f"the pipeline's best round against the floor's best run of all: "
            f"{throughput.get('ratio_best_against_best')}). Median round's pipeline: events "
            f"published {pipeline['events_published']}, API calls {pipeline['api_calls']} over "
            f"{pipeline.get('connections_opened', '?')} new connections; every instruction of "
            f"every round applied once at the sandbox: {throughput.get('pipeline_exactly_once')}.",
        ]
        if "baseline" in throughput:
            before = throughput["baseline"]
            lines += [
                "",
                f"Baseline `{before['commit']}` (its pipeline in every round, the two taking "
                f"turns going first): median ratio {before['ratio']} against this code's "
                f"{before['ratio_now']} ({before['now_over_baseline']} of it); every baseline "
                f"instruction applied once: {before.get('exactly_once')}.",
            ]
        group = pipeline.get("group_commit") or {}
        if group.get("transactions"):
            lines += [
                "",
                f"The workers' database steps (receive, record) went through "
                f"{group['transactions']} group-committed transactions: "
                f"{group['steps_per_transaction']} steps per transaction on average."
                + _writer_note(group, pipeline["elapsed_s"]),
            ]
        lines += _profile_lines(throughput.get("profile", {}))
        if throughput.get("profile_missing"):
            lines += ["", f"No profile: {throughput['profile_missing']}."]
    drain = results.get("drain")
    if drain and "calls" in drain:
        lines += [
            "",
            f"### Drain ({drain['instructions']} transfers at once, IBKR's limits, default "
            "configuration)",
            "",
            _row("figure", "value"),
            _row("---", "---:"),
            _row("wall time, first publish to last final (s)", drain["drain_s"]),
            _row("least the limits allow: calls / 10 per second (s)", drain["least_s"]),
            _row("calls (as the sandbox counted them, tokens included)", drain["calls"]),
            _row("calls per instruction", drain["calls_per_instruction"]),
            _row("most arrivals per endpoint in any 1 s", drain["max_per_endpoint_per_second"]),
            _row("most arrivals of the client in any 60 s", drain["max_per_client_per_minute"]),
            _row("429s", drain["throttled_429"]),
        ]
        for endpoint, count in sorted(drain["calls_by_endpoint"].items()):
            lines.append(_row(f"`{endpoint}`", count))
    limiter = results.get("limiter")
    if limiter and "per_reservation" in limiter:
        lines += [
            "",
            "### The rate limiter's own cost per reservation (PostgreSQL)",
            "",
            _row("limits", "alone (us)", "16 to a transaction (us each)"),
            _row("---", "---:", "---:"),
        ]
        lines += [
            _row(label, c["alone_us"], c["batched_us"])
            for label, c in limiter["per_reservation"].items()
        ]
    polling = results.get("polling")
    if polling and "api_calls" in polling:
        lines += [
            "",
            f"### Polling ({polling['instructions']} instructions, IBKR's limits on)",
            "",
            _row("figure", "value"),
            _row("---", "---:"),
            _row("API calls (submissions included)", polling["api_calls"]),
            _row(
                "calls per final: all / singles / bulk members",
                f"{polling['calls_per_final']}"
                f" / {polling['singles_calls_per_final']} / {polling['bulk_calls_per_final']}",
            ),
            _row("429s", polling["throttled_429"]),
            _row("token requests", polling["token_requests"]),
            _row("busiest minute (calls)", polling["busiest_minute"]),
            _row("lag singles p50 / p99 / max (s)", _lag(polling["lag_singles"])),
            _row("lag bulk members p50 / p99 / max (s)", _lag(polling["lag_bulk"])),
            _row("all final after (s)", polling["all_final_after_s"]),
        ]
        for endpoint, count in sorted(polling["api_calls_by_endpoint"].items()):
            lines.append(_row(f"`{endpoint}`", count))
    memory = results.get("memory")
    if memory and "peak_rss_mb" in memory:
        lines += [
            "",
            f"### Memory ({memory['pending']} pending; {memory['traffic_processed']} of "
            f"{memory['traffic']} new instructions processed while sampling for "
            f"{memory['seconds']:.0f} s)",
            "",
            _row("process", "peak RSS (MB)"),
            _row("---", "---:"),
        ]
        lines += [_row(k, v) for k, v in memory["peak_rss_mb"].items()]
    audit = results.get("audit")
    if audit and "queries" in audit:
        fill = audit["fill"]
        lines += [
            "",
            f"### Audit at scale ({audit['instructions']:,} instructions, "
            f"{audit['events']:,} audit events; tables {fill['size_client_instructions']} and "
            f"{fill['size_audit_events']}; filled in {fill['timings']})",
            "",
            _row("query", "p50 ms", "p95 ms", "max ms", "rows (mean)"),
            _row("---", "---:", "---:", "---:", "---:"),
        ]
        lines += [
            _row(name, t["p50_ms"], t["p95_ms"], t["max_ms"], t["mean_rows"])
            for name, t in audit["queries"].items()
        ]
        due = audit["due_now"]
        lines += [
            "",
            f'Scheduler\'s "due now" claim: {due["claimed"]} rows claimed in '
            f"{due['claim_due_ms']} ms.",
            "",
            "```",
            due["statement"],
            "",
            *due["plan"],
            "```",
        ]
    return "\n".join(lines)


def _cpu(cpu_s: dict[str, float]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(cpu_s.items(), key=lambda kv: -kv[1]))


def _lag(lag: dict[str, Any]) -> str:
    return f"{lag['p50_s']} / {lag['p99_s']} / {lag['max_s']}"


def _shape_of(run: dict[str, Any], default: Any) -> str:
    del default  # floors always say their shape
    return f"{run.get('processes', '?')}x{run.get('threads', '?')}"


def _writer_note(group: dict[str, Any], elapsed_s: float) -> str:
    """How busy the writer threads were (each process has one), by the clock and by CPU."""
    writers, busy = group.get("writers"), group.get("writer_busy_s")
    if not writers or busy is None or not elapsed_s:
        return ""
    return (
        f" Each process's writer thread was in a transaction {busy / writers:.1f} s of the "
        f"{elapsed_s:.1f} s, using {group['writer_cpu_s'] / writers:.1f} s of CPU itself "
        "(the rest: waiting for PostgreSQL or for the GIL)."
    )


def _profile_lines(profiles: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for label, summary in profiles.items():
        if not summary.get("samples"):
            continue
        categories = ", ".join(f"{k} {v}%" for k, v in summary["categories"].items())
        top = ", ".join(f"`{t['function']}` {t['pct']}%" for t in summary["top_self"][:6])
        steps = ", ".join(f"{k} {v}%" for k, v in summary["inclusive"].items() if v)
        lines += [
            "",
            f"Profile of the {label} (py-spy, {summary['samples']} samples of busy threads): "
            f"{categories}.",
            f"Steps (inclusive): {steps}.",
            f"Top self: {top}.",
        ]
    return lines
