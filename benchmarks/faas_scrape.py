"""Scrape cost of the sidecar's OpenTelemetry FaaS families (`faas_*`, one series per function).

    .venv/bin/python benchmarks/faas_scrape.py [--functions 1000,10000] [--repeat 5]

For each function count: fold 100 batches of 1000 events (uniform over the functions, 10 % cold), then time
- A/B, interleaved: every line written through prometheus-client (the same state as CounterMetricFamily /
  HistogramMetricFamily, `generate_latest`) against `FaaSMetrics.exposition()` with every line rewritten;
- steady state: `SidecarMetrics.render()` (the whole /metrics body) with 1000 new events between two scrapes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

from prewarmer.otel_faas import COUNTERS, HISTOGRAMS, FaaSMetrics
from prewarmer.sidecar.metrics import SidecarMetrics


class ThroughPrometheusClient:
    """The faas_* state of `faas` as prometheus-client families (the alternative `FaaSMetrics` replaces)."""

    def __init__(self, faas: FaaSMetrics) -> None:
        self.faas = faas

    def collect(self) -> Iterator[Metric]:
        f, n = self.faas, len(self.faas.names)
        for name, doc in COUNTERS.items():
            fam = CounterMetricFamily(name, doc, labels=["faas_invoked_name"])
            for fn, v in zip(f.names, f.counters[name][:n].tolist(), strict=True):
                fam.add_metric([fn], v)
            yield fam
        for name, h in f.histograms.items():
            fam = HistogramMetricFamily(name, HISTOGRAMS[name], labels=["faas_invoked_name"])
            cumulative = np.cumsum(h.counts[:n], axis=1)
            for i in np.flatnonzero(cumulative[:, -1]).tolist():
                fam.add_metric([f.names[i]], list(zip(h.edges, cumulative[i].tolist(), strict=True)), float(h.sums[i]))
            yield fam


def fold(faas: FaaSMetrics, names: np.ndarray, rng: np.random.Generator, batches: int) -> float:
    """Fold `batches` batches of 1000 events; seconds per event."""
    t = time.perf_counter()
    for _ in range(batches):
        sel = rng.integers(0, len(names), 1000)
        faas.observe(names[sel].tolist(), rng.choice([200, 500, 504], 1000, p=[0.98, 0.01, 0.01]),
                     rng.random(1000) < 0.1, init_s=rng.random(1000) * 2)
    return (time.perf_counter() - t) / (batches * 1000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--functions", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for n in (int(x) for x in args.functions.split(",")):
        metrics = SidecarMetrics()
        names = np.array([f"fn-{i:05d}" for i in range(n)], dtype=object)
        per_event = fold(metrics.faas, names, rng, 100)
        registry = CollectorRegistry()
        registry.register(ThroughPrometheusClient(metrics.faas))
        client, ours = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            generate_latest(registry)
            client.append(time.perf_counter() - t)
            k = len(metrics.faas.names)
            metrics.faas._dirty[:k] = True  # every line rewritten, as on a first scrape
            for h in metrics.faas.histograms.values():
                h.dirty[:k] = h.counts[:k].sum(axis=1) > 0  # the functions it has observed
            t = time.perf_counter()
            metrics.faas.exposition()
            ours.append(time.perf_counter() - t)
        steady = []
        for _ in range(args.repeat):
            fold(metrics.faas, names, rng, 1)
            t = time.perf_counter()
            body = metrics.render()
            steady.append(time.perf_counter() - t)
        lines = body.count(b"\n")
        print(f"{n} functions: fold {per_event * 1e6:.2f} us/event; every line rewritten (interleaved, median of "
              f"{args.repeat}): prometheus-client {np.median(client) * 1e3:.0f} ms, FaaSMetrics "
              f"{np.median(ours) * 1e3:.0f} ms; steady /metrics with 1000 events between scrapes: "
              f"{np.median(steady) * 1e3:.0f} ms ({lines} lines, {len(body) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
