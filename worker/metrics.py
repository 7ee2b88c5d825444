"""Prometheus metrics for the worker and the scheduler (an HTTP port each, off by default).

Counters and histograms are fed by the tracking observer; the state gauges (instructions by
status, overdue, oldest pending age, dead letters, outbox backlog) are read from the database
when scraped, at most every few seconds.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from worker.ibkr.endpoints import INSTRUCTION_TYPES
from worker.ibkr.responses import ApiResult, Outcome
from worker.redaction import redact_label
from worker.store import Store
from worker.store.metrics import state_figures

_ID_SEGMENT = re.compile(r"/-?\d+(?=/|$)")
#: The label of an instructionType IBKR does not know (a FAILED request can carry any text: as
#: a label it would be shown to every scraper and grow the registry without bound).
OTHER_TYPE = "OTHER"
#: Longest label value kept (an unexpected one is cut, after the redaction).
MAX_LABEL_CHARS = 64


def label(value: str) -> str:
    """A label value as served: redacted (see `worker.redaction`) and at most 64 characters."""
    return redact_label(value)[:MAX_LABEL_CHARS]


def instruction_type_label(instruction_type: str) -> str:
    """The instructionType itself when IBKR knows it, else `OTHER`."""
    return instruction_type if instruction_type in INSTRUCTION_TYPES else OTHER_TYPE


def path_template(path: str) -> str:
    """`/gw/api/v1/client-instructions/123` -> `/gw/api/v1/client-instructions/{id}`."""
    return _ID_SEGMENT.sub("/{id}", path.split("?", 1)[0])


class Metrics:
    """The process's metrics; also the tracking observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.api_calls = Counter(
            "ibkr_api_calls",
            "Calls to IBKR's API by endpoint and HTTP status (or outcome without a response)",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.api_latency = Histogram(
            "ibkr_api_latency_seconds",
            "Latency of calls to IBKR's API",
            ["method", "endpoint"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.throttled = Counter(
            "ibkr_api_throttled", "429 answers from IBKR", registry=self.registry
        )
        self.applied_twice_count = Counter(
            "ibkr_applied_twice_detected",
            "Times this process found IBKR showing two transactions of ours for one instruction",
            ["instruction_type"],
            registry=self.registry,
        )
        self.status_changes = Counter(
            "ibkr_instruction_status_changes",
            "Tracked status changes by instruction type and new status",
            ["instruction_type", "status"],
            registry=self.registry,
        )

    # Observer protocol -------------------------------------------------------------------
    def api_call(self, result: ApiResult) -> None:
        exchange = result.exchange
        endpoint = label(path_template(exchange.path))
        method = label(exchange.method)
        status = (
            str(exchange.http_status) if exchange.http_status is not None else result.outcome.value
        )
        self.api_calls.labels(method, endpoint, label(status)).inc()
        if exchange.latency_ms is not None:
            self.api_latency.labels(method, endpoint).observe(exchange.latency_ms / 1000)
        if result.outcome is Outcome.THROTTLED:
            self.throttled.inc()

    def status_changed(self, instruction_type: str, to_status: str) -> None:
        self.status_changes.labels(instruction_type_label(instruction_type), label(to_status)).inc()

    def applied_twice(self, instruction_type: str) -> None:
        self.applied_twice_count.labels(instruction_type).inc()

    def watch_database(self, store: Store, max_age_s: float = 15.0) -> None:
        """Add the state gauges read from the database."""
        self.registry.register(_StateCollector(store, max_age_s))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve `/metrics` on `host:port` from a daemon thread (`host` from METRICS_HOST:
        loopback unless the operator opens it)."""
        start_http_server(port, addr=host, registry=self.registry)


class _StateCollector:
    def __init__(self, store: Store, max_age_s: float) -> None:
        self._store = store
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._cached_at = 0.0
        self._cached: list[GaugeMetricFamily] = []

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._cached_at > self._max_age_s:
                try:
                    self._cached = self._read()
                except Exception:  # noqa: BLE001 - a scrape must not fail while the database is away
                    self._cached = []
                self._cached_at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[GaugeMetricFamily]:
        now = datetime.now(UTC)
        with self._store.transaction() as tx:
            figures = state_figures(tx)
        by_status = GaugeMetricFamily(
            "ibkr_instructions", "Tracked instructions by status", labels=["status"]
        )
        for status, count in figures.by_status.items():
            by_status.add_metric([label(status)], count)
        oldest = figures.oldest_pending_at
        families = [by_status]
        families.append(
            GaugeMetricFamily(
                "ibkr_instructions_overdue",
                "Instructions past their deadline",
                value=figures.overdue,
            )
        )
        families.append(
            GaugeMetricFamily(
                "ibkr_oldest_pending_age_seconds",
                "Age of the oldest instruction without a final status",
                value=(now - oldest).total_seconds() if oldest else 0.0,
            )
        )
        families.append(
            GaugeMetricFamily("ibkr_dead_letters", "Dead letters kept", value=figures.dead_letters)
        )
        families.append(
            GaugeMetricFamily(
                "ibkr_instructions_applied_twice",
                "Instructions IBKR shows two transactions of ours for: the money may have moved "
                "twice (alert on anything above 0)",
                value=figures.applied_twice,
            )
        )
        families.append(
            GaugeMetricFamily(
                "ibkr_outbox_backlog", "Events not yet published", value=figures.outbox_backlog
            )
        )
        families.append(
            GaugeMetricFamily(
                "ibkr_outbox_oldest_age_seconds",
                "Age of the oldest event not yet published",
                value=(
                    (now - figures.oldest_unpublished_at).total_seconds()
                    if figures.oldest_unpublished_at
                    else 0.0
                ),
            )
        )
        return families
