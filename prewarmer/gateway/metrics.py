"""Prometheus metrics of the gateway, in a registry of its own (several gateways can live in one process).

OpenFaaS-compatible names: `gateway_function_invocation_total{function_name,code}`,
`gateway_functions_seconds{function_name,code}` (histogram), `gateway_service_count{function_name}`.
Prewarmer additions: `prewarmer_gateway_cold_starts_total`, `prewarmer_gateway_workers{state}`,
`prewarmer_gateway_idle_gb_seconds_total` / `_busy_gb_seconds_total` (memory limit x time spent ready
and idle / busy), `prewarmer_gateway_events_dropped_total`.
OpenTelemetry FaaS names (`prewarmer.otel_faas`), by `faas_invoked_name` (the bare function name, as in the
events) and `faas_trigger="http"`: `faas_invocations_total` / `faas_errors_total` / `faas_timeouts_total` (the
invocations of `gateway_function_invocation_total` by status), `faas_coldstarts_total` (the same count as
`prewarmer_gateway_cold_starts_total`), `faas_invoke_duration_seconds` (execution time in the worker, successful
invocations) and `faas_init_duration_seconds`: spawn to ready of every worker started, prewarmed ones included.

As in OpenFaaS, `function_name` is `name.namespace` (e.g. `echo.openfaas-fn`). GB-s are not sampled:
the pool adds a worker's time in a state when it leaves that state, and at every scrape it adds the
time elapsed so far (`WorkerPool.account`), so a scrape sees the exact figure up to that instant.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from prewarmer.otel_faas import FaaSMetrics

WORKER_STATES = ("starting", "idle", "busy")


def invoked_name(label: str) -> str:
    """`echo.openfaas-fn` -> `echo`: a namespace is a DNS label, with no dot of its own."""
    return label.rsplit(".", 1)[0]


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.invocations = Counter("gateway_function_invocation_total", "Function invocations by status code",
                                   ["function_name", "code"], registry=r)
        self.seconds = Histogram("gateway_functions_seconds", "Function invocation time at the gateway, seconds",
                                 ["function_name", "code"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.service_count = Gauge("gateway_service_count", "Worker processes of the function (any state)",
                                   ["function_name"], registry=r)
        self.cold_starts = Counter("prewarmer_gateway_cold_starts_total",
                                   "Invocations that waited for a new worker to start", ["function_name"], registry=r)
        self.workers = Gauge("prewarmer_gateway_workers", "Worker processes by state", ["function_name", "state"],
                             registry=r)
        self.idle_gb_s = Counter("prewarmer_gateway_idle_gb_seconds_total",
                                 "GB-seconds of workers that were ready but idle (memory limit x time)",
                                 ["function_name"], registry=r)
        self.busy_gb_s = Counter("prewarmer_gateway_busy_gb_seconds_total",
                                 "GB-seconds of workers that were serving a request (memory limit x time)",
                                 ["function_name"], registry=r)
        self.events_dropped = Counter("prewarmer_gateway_events_dropped_total",
                                      "Invocation events lost (event buffer full while Redis was unreachable)",
                                      registry=r)
        self.faas = FaaSMetrics(trigger="http", invoke_duration=True)
        self._dropped_seen = 0

    def register_function(self, label: str) -> None:
        """Create the function's series at zero so that rates work from the first scrape."""
        self.cold_starts.labels(label)
        self.idle_gb_s.labels(label)
        self.busy_gb_s.labels(label)
        self.service_count.labels(label).set(0)
        self.faas.register([invoked_name(label)])
        for s in WORKER_STATES:
            self.workers.labels(label, s).set(0)

    def observe_invocation(self, label: str, code: int, seconds: float, cold: bool,
                           execution_s: float | None = None) -> None:
        """One answered request: `seconds` at the gateway (waits included), `execution_s` in the worker."""
        self.invocations.labels(label, str(code)).inc()
        self.seconds.labels(label, str(code)).observe(seconds)
        if cold:
            self.cold_starts.labels(label).inc()
        self.faas.observe([invoked_name(label)], np.array([code]), np.array([cold]),
                          invoke_s=None if execution_s is None else np.array([execution_s]))

    def observe_init(self, label: str, seconds: float) -> None:
        """A worker became ready `seconds` after its process was spawned (a cold start or a prewarm)."""
        self.faas.observe_init(invoked_name(label), seconds)

    def add_gb_seconds(self, label: str, state: str, gb_s: float) -> None:
        if gb_s > 0:
            (self.idle_gb_s if state == "idle" else self.busy_gb_s).labels(label).inc(gb_s)

    def set_workers(self, label: str, counts: dict[str, int]) -> None:
        for s in WORKER_STATES:
            self.workers.labels(label, s).set(counts.get(s, 0))
        self.service_count.labels(label).set(sum(counts.get(s, 0) for s in WORKER_STATES))

    def set_events_dropped(self, total: int) -> None:
        """The producer keeps a running total; the counter follows it."""
        if total > self._dropped_seen:
            self.events_dropped.inc(total - self._dropped_seen)
            self._dropped_seen = total

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.faas.exposition()
