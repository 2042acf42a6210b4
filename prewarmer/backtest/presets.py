"""What to read from Prometheus for each platform: the invocation counter, the labels naming a function,
the latency histogram (durations) and, where a standard metric exists, the memory limit.

- `openfaas`: `gateway_function_invocation_total{function_name,code}` (the OpenFaaS gateway, and the
  local `prewarmer gateway`); durations from `gateway_functions_seconds` (seconds); memory limits from
  kube-state-metrics (`kube_pod_container_resource_limits`, container = function, in its namespace).
- `knative`: `revision_request_count` of the queue-proxy (one series per pod and response code), the
  function being `service_name.namespace_name`; durations from `revision_request_latencies` (ms).

`--query` replaces the counter expression (any PromQL giving cumulative counters, e.g. with label
matchers), `--function-label` the labels naming a function.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class MetricPreset:
    name: str
    #: PromQL of the cumulative invocation counters (one or more series per function).
    counter: str
    #: Labels whose values, joined by ".", name the function.
    function_labels: tuple[str, ...]
    #: Name of the latency histogram's `_bucket` series (None: no durations from metrics).
    histogram: str | None
    #: Seconds per unit of the histogram's `le` bounds.
    histogram_unit_s: float
    #: Instant PromQL giving each function's memory limit in bytes, labelled like the counter (or None).
    memory: str | None

    def function_name(self, labels: dict[str, str]) -> str | None:
        parts = [labels.get(k, "") for k in self.function_labels]
        return ".".join(parts) if any(parts) else None

    def describe(self) -> dict:
        return {"preset": self.name, "counter": self.counter, "function_labels": list(self.function_labels),
                "histogram": self.histogram, "histogram_unit_s": self.histogram_unit_s, "memory_query": self.memory}


PRESETS = {
    "openfaas": MetricPreset(
        "openfaas", "gateway_function_invocation_total", ("function_name",), "gateway_functions_seconds_bucket", 1.0,
        'label_join(max by (namespace, container) (kube_pod_container_resource_limits{resource="memory"}), '
        '"function_name", ".", "container", "namespace")'),
    "knative": MetricPreset(
        "knative", "revision_request_count", ("service_name", "namespace_name"), "revision_request_latencies_bucket",
        0.001, None),
}


def choose(name: str, query: str | None = None, function_labels: list[str] | None = None,
           histogram: str | None = None, histogram_unit_s: float | None = None,
           memory_query: str | None = None) -> MetricPreset:
    """The preset `name`, with any of its parts replaced by the user's."""
    if name not in PRESETS:
        raise ValueError(f"unknown --metrics {name!r} (known: {', '.join(PRESETS)})")
    p = PRESETS[name]
    changes: dict = {}
    if query:
        changes.update(counter=query, name=f"{name}+query")
    if function_labels:
        labels = tuple(x.strip() for part in function_labels for x in part.split(",") if x.strip())
        if not labels:
            raise ValueError("--function-label names no label")
        changes["function_labels"] = labels
    if histogram is not None:
        changes["histogram"] = None if histogram.lower() == "none" else _bucket_name(histogram)
    if histogram_unit_s is not None:
        if not histogram_unit_s > 0:
            raise ValueError(f"--histogram-unit must be > 0 seconds, got {histogram_unit_s}")
        changes["histogram_unit_s"] = histogram_unit_s
    if memory_query is not None:
        changes["memory"] = None if memory_query.lower() == "none" else memory_query
    return replace(p, **changes)


def _bucket_name(metric: str) -> str:
    return metric if metric.endswith("_bucket") else metric + "_bucket"
