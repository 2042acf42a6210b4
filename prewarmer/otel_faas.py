"""OpenTelemetry FaaS metrics (semantic conventions `faas.*`) in Prometheus exposition, per invoked function.

The conventions (https://opentelemetry.io/docs/specs/semconv/faas/faas-metrics/) name what a FaaS instance
records; OTel's Prometheus compatibility rules turn the names into Prometheus ones: dots become underscores, a
UCUM unit is appended (`s` -> `_seconds`), a unit in braces (`{coldstart}`) is dropped, and a counter ends in
`_total`:

| OTel metric            | instrument, unit        | Prometheus                                  |
|------------------------|-------------------------|---------------------------------------------|
| `faas.invocations`     | counter, `{invocation}` | `faas_invocations_total`                    |
| `faas.errors`          | counter, `{error}`      | `faas_errors_total`                         |
| `faas.timeouts`        | counter, `{timeout}`    | `faas_timeouts_total`                       |
| `faas.coldstarts`      | counter, `{coldstart}`  | `faas_coldstarts_total`                     |
| `faas.init_duration`   | histogram, `s`          | `faas_init_duration_seconds` (`_bucket` ..) |
| `faas.invoke_duration` | histogram, `s`          | `faas_invoke_duration_seconds` (`_bucket` ..) |

A FaaS instance's metrics name their function in the resource (`faas.name`); the sidecar and the gateway
report for many functions from outside them, so each series carries `faas_invoked_name` (the attribute whose
value "SHOULD be equal to the `faas.name` resource attribute of the invoked function") and, where the trigger is
known, `faas_trigger` (`http` at the gateway). The histograms use the conventions' bucket boundaries.

One invocation lands in exactly one of `faas_invocations_total` (HTTP status < 500: the conventions count
successful invocations), `faas_timeouts_total` (504, what the gateway answers when a function runs past its
execution timeout) and `faas_errors_total` (any other status >= 500).

`FaaSMetrics` is not a set of prometheus-client metrics. The sidecar folds events in batches, so the counts live
in numpy arrays indexed by function and a batch is added with a few vectorized calls, no Python per event. And
it writes its own exposition text (the text format 0.0.4 prometheus-client writes, which `render()` of the
sidecar and the gateway append to the registry's): prometheus-client formats about 20 us per sample, and
these families have one series per function (17 for a histogram), so at 10 000 functions a scrape through it
took seconds, during which the control loop, on the same event loop, stood still. Writing from cached
label strings is about 10x cheaper, and a scrape rewrites only the lines of the functions invoked since the
previous one (benchmarks/faas_scrape.py; figures in docs/observability.md). A histogram's series exist only
for the functions that have had an observation: functions that never start cold cost no
`faas_init_duration_seconds` series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The conventions' ExplicitBucketBoundaries for faas.init_duration and faas.invoke_duration, in seconds.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

TIMEOUT_STATUS = 504


def prometheus_name(otel_name: str, unit: str, counter: bool) -> str:
    """The Prometheus name OTel's compatibility rules give `otel_name` (the units used here: `s` and `{...}`)."""
    name = otel_name.replace(".", "_")
    if unit == "s":
        name += "" if name.endswith("_seconds") else "_seconds"
    elif not (unit.startswith("{") and unit.endswith("}")):
        raise ValueError(f"unit {unit!r} has no Prometheus suffix here")
    return name + "_total" if counter else name


# (OTel name, unit, description): the conventions' own, the outcome rule added where it is ours.
COUNTER_SPECS = (
    ("faas.invocations", "{invocation}", "Number of successful invocations (HTTP status < 500)"),
    ("faas.errors", "{error}", "Number of invocation errors (HTTP status >= 500 other than 504)"),
    ("faas.timeouts", "{timeout}", "Number of invocation timeouts (HTTP status 504)"),
    ("faas.coldstarts", "{coldstart}", "Number of invocation cold starts"),
)
HISTOGRAM_SPECS = (
    ("faas.init_duration", "s", "Measures the duration of the function's initialization, such as a cold start"),
    ("faas.invoke_duration", "s", "Measures the duration of the function's logic execution"),
)
# Prometheus family name (a counter's without `_total`, which the exposition adds) -> description
COUNTERS = {prometheus_name(o, u, counter=True).removesuffix("_total"): d for o, u, d in COUNTER_SPECS}
HISTOGRAMS = {prometheus_name(o, u, counter=False): d for o, u, d in HISTOGRAM_SPECS}
INIT, INVOKE = HISTOGRAMS  # faas_init_duration_seconds, faas_invoke_duration_seconds


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(name: str, kind: str, doc: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"  # the descriptions above: no backslash, no newline


class _Histogram:
    """Per-function bucket counts (not cumulative) and sums, in rows of a table that grows with the functions, and
    each function's exposition lines, rewritten only for the functions observed since the last scrape."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, np.float64)
        self.edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        self.counts = np.zeros((0, len(bounds) + 1), np.int64)  # last column: above the highest bound
        self.sums = np.zeros(0, np.float64)
        self.dirty = np.zeros(0, bool)
        self.lines: list[str] = []  # by function; "" until its first observation

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.sums)
        self.counts = np.vstack([self.counts, np.zeros((extra, self.counts.shape[1]), np.int64)])
        self.sums = np.concatenate([self.sums, np.zeros(extra)])
        self.dirty = np.concatenate([self.dirty, np.zeros(extra, bool)])
        self.lines += [""] * extra

    def observe(self, idx: np.ndarray, values: np.ndarray) -> None:
        # `le` buckets: a value equal to a bound belongs to that bound's bucket.
        np.add.at(self.counts, (idx, np.searchsorted(self.bounds, values, side="left")), 1)
        np.add.at(self.sums, idx, values)
        self.dirty[idx] = True

    def text(self, name: str, doc: str, labels: list[str]) -> str:
        rows = np.flatnonzero(self.dirty)
        cumulative = np.cumsum(self.counts[rows], axis=1).tolist()
        for i, counts, total in zip(rows.tolist(), cumulative, self.sums[rows].tolist(), strict=True):
            lab = labels[i]
            bucket = f'{name}_bucket{{{lab},le="'
            self.lines[i] = "".join([f'{bucket}{e}"}} {c}\n' for e, c in zip(self.edges, counts, strict=True)]) + \
                f"{name}_count{{{lab}}} {counts[-1]}\n{name}_sum{{{lab}}} {total!r}\n"
        self.dirty[rows] = False
        return _help(name, "histogram", doc) + "".join(self.lines[:len(labels)])


class FaaSMetrics:
    """The `faas_*` metrics of many functions, as Prometheus exposition text (`exposition()`).

    `trigger`: the `faas_trigger` label of every series, or None to leave it out (the trigger is unknown).
    `invoke_duration`: export `faas_invoke_duration_seconds` too (one histogram per invoked function).
    A scrape rewrites the lines of the functions invoked since the previous one and reuses the others'.
    """

    def __init__(self, trigger: str | None = None, invoke_duration: bool = False) -> None:
        self.trigger = trigger
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self._labels: list[str] = []  # each function's label set, escaped, as it stands between the braces
        self.counters = {name: np.zeros(0, np.int64) for name in COUNTERS}
        self._lines: dict[str, list[str]] = {name: [] for name in COUNTERS}  # by function, as of `_dirty`
        self._dirty = np.zeros(0, bool)  # counters changed since their lines were written
        self.histograms = {INIT: _Histogram(DURATION_BUCKETS_S)}
        if invoke_duration:
            self.histograms[INVOKE] = _Histogram(DURATION_BUCKETS_S)

    def register(self, names: Sequence[str]) -> np.ndarray:
        """Indices of `names` in the function table, adding the new ones (their counters start at zero)."""
        new = [n for n in dict.fromkeys(names) if n not in self.index]
        if new:
            first = len(self.names)
            self.index.update((n, first + i) for i, n in enumerate(new))
            self.names += new
            trigger = f',faas_trigger="{_label_value(self.trigger)}"' if self.trigger else ""
            self._labels += [f'faas_invoked_name="{_label_value(n)}"{trigger}' for n in new]
            capacity = len(self._dirty)
            if len(self.names) > capacity:  # grow by doubling: amortized O(1) per function
                extra = max(2 * capacity, len(self.names), 64) - capacity
                for key, arr in self.counters.items():
                    self.counters[key] = np.concatenate([arr, np.zeros(extra, np.int64)])
                    self._lines[key] += [""] * extra
                self._dirty = np.concatenate([self._dirty, np.zeros(extra, bool)])
                for h in self.histograms.values():
                    h.grow(capacity + extra)
            self._dirty[first:len(self.names)] = True  # their zeros are yet to be written
        return np.fromiter((self.index[n] for n in names), np.int64, len(names))

    def observe(self, names: Sequence[str], status: np.ndarray, cold: np.ndarray,
                init_s: np.ndarray | None = None, invoke_s: np.ndarray | None = None) -> None:
        """Fold a batch of finished invocations: function names, HTTP status, cold (0/1), and for the cold ones the
        initialization they waited for (`init_s`, read only where `cold`); `invoke_s` the execution time, observed
        for the successful ones."""
        if len(names) == 0:
            return
        uniq, inverse = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
        idx = self.register(uniq.tolist())[inverse.reshape(-1)]
        status = np.asarray(status)
        cold = np.asarray(cold).astype(bool)
        ok = status < 500
        timeout = status == TIMEOUT_STATUS
        np.add.at(self.counters["faas_invocations"], idx[ok], 1)
        np.add.at(self.counters["faas_timeouts"], idx[timeout], 1)
        np.add.at(self.counters["faas_errors"], idx[~ok & ~timeout], 1)
        np.add.at(self.counters["faas_coldstarts"], idx[cold], 1)
        self._dirty[idx] = True
        if init_s is not None and cold.any():
            self.histograms[INIT].observe(idx[cold], np.asarray(init_s, np.float64)[cold])
        invoke = self.histograms.get(INVOKE)
        if invoke is not None and invoke_s is not None and ok.any():
            invoke.observe(idx[ok], np.asarray(invoke_s, np.float64)[ok])

    def observe_init(self, name: str, seconds: float) -> None:
        """One initialization of `name` that no invocation may have waited for (a worker started ahead)."""
        idx = self.register([name])
        self.histograms[INIT].observe(idx, np.array([seconds], np.float64))

    def exposition(self) -> bytes:
        """Every family in the Prometheus text format 0.0.4 (HELP and TYPE even with no function yet)."""
        n = len(self.names)
        rows = np.flatnonzero(self._dirty)
        parts = []
        for name, doc in COUNTERS.items():
            total, lines = f"{name}_total", self._lines[name]
            for i, v in zip(rows.tolist(), self.counters[name][rows].tolist(), strict=True):
                lines[i] = f"{total}{{{self._labels[i]}}} {v}\n"
            parts.append(_help(total, "counter", doc) + "".join(lines[:n]))
        self._dirty[rows] = False
        for name, h in self.histograms.items():
            parts.append(h.text(name, HISTOGRAMS[name], self._labels))
        return "".join(parts).encode()
