"""Prometheus metrics, on a registry per gateway (no global state).

Labels are regions, item codes, recipients and outcomes: never anything about a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter(
            "tongban_http_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "tongban_http_request_seconds", "HTTP handling time by route", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        self.submitted = Counter(
            "tongban_cases_submitted", "Case submissions by item and result",
            ["item_code", "result"], registry=r,
        )  # fmt: skip
        self.dispatch = Counter(
            "tongban_dispatch_calls", "Partner calls by region and outcome", ["region", "outcome"],
            registry=r,
        )  # fmt: skip
        self.deliveries = Counter(
            "tongban_deliveries", "Callback posts by recipient and result", ["recipient", "result"],
            registry=r,
        )  # fmt: skip
        self.ignored = Counter(
            "tongban_transitions_ignored", "Reports the state machine refused", ["source"],
            registry=r,
        )  # fmt: skip
        self.store = Gauge("tongban_store", "Store gauges", ["what"], registry=r)
        # Each labelled child once: ``labels()`` takes a lock and checks its values every time,
        # a cost on every request. The label sets are as bounded as the metrics' own.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_http(self, route: str, status: int, seconds: float) -> None:
        self._child(self.http, route, str(status)).inc()
        self._child(self.latency, route).observe(seconds)

    def on_submit(self, item_code: str, result: str) -> None:
        self._child(self.submitted, item_code, result).inc()

    def on_dispatch(self, region: str, outcome: str) -> None:
        self._child(self.dispatch, region, outcome).inc()

    def on_delivery(self, recipient: str, ok: bool) -> None:
        self._child(self.deliveries, recipient, "ok" if ok else "error").inc()

    def on_ignored(self, source: str) -> None:
        self._child(self.ignored, source).inc()

    def render(self, store_stats: Mapping[str, float]) -> bytes:
        for what, value in store_stats.items():
            self.store.labels(what).set(value)
        return bytes(generate_latest(self.registry))
