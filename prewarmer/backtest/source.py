"""Read one time range from Prometheus into the workload a replay takes, the way the 2019 loader builds one.

Invocations: the preset's counter, read every `step` seconds on a grid anchored at the range start
(`counters` explains the increments, resets and new series), summed per function into per-minute
counts. Durations: percentiles of the latency histogram's increase over the range, per function, when
the histogram has observations for it; else the default. Memory: the preset's memory query at the
range end, when it answers for the function; else the default. Where each figure came from is kept
(`duration_source`, `memory_source`) and written into the report.

The result is a `MinuteCountWorkload` (per-minute counts, duration percentiles, one app per function),
exactly what `prewarmer replay --trace` builds from an Azure 2019 trace, so it runs through the same
replay path.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from prewarmer.backtest import counters
from prewarmer.backtest.presets import MetricPreset
from prewarmer.backtest.promapi import PrometheusClient
from prewarmer.units import parse_duration
from prewarmer.workloads.base import DURATION_QUANTILES, FunctionTable, MinuteCountWorkload

#: Points of the histogram's coarser grid over the whole range (its total increase is all that is used).
HISTOGRAM_POINTS = 2000
#: Longest range read (minutes): 60 days of per-minute counts.
MAX_MINUTES = 60 * 1440
#: Most grid points per series (each is held as a float per series): 60 days at 15 s.
MAX_POINTS = 345_601


class BacktestInputError(ValueError):
    """Bad range, empty result or unusable series: one line for the user."""


@dataclass(frozen=True)
class Window:
    """Minutes [start, start + 60 * minutes) read on a grid of `step` seconds (step divides 60)."""

    start: float
    minutes: int
    step: float

    @property
    def end(self) -> float:
        return self.start + 60.0 * self.minutes

    @property
    def n_points(self) -> int:
        return int(round(60.0 * self.minutes / self.step)) + 1

    def describe(self) -> dict:
        return {"start_unix": self.start, "end_unix": self.end, "minutes": self.minutes, "step_s": self.step,
                "start": _iso(self.start), "end": _iso(self.end)}


_RELATIVE = re.compile(r"^\s*now\s*(?:-\s*(\S+))?\s*$|^\s*-\s*(\S+)\s*$", re.I)


def parse_time(text: str, now: float, what: str) -> float:
    """Unix seconds from `now`, `now-2h`, `-2h`, a Unix timestamp or an RFC 3339 / ISO 8601 time."""
    m = _RELATIVE.match(text)
    if m:
        ago = m.group(1) or m.group(2)
        try:
            return now - (parse_duration(ago) if ago else 0.0)
        except ValueError:
            raise BacktestInputError(f"{what} {text!r}: {ago!r} is not a duration (e.g. now-2h)") from None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BacktestInputError(f"{what} {text!r}: not a time (now, now-2h, a Unix timestamp or "
                                 "2026-01-31T12:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def make_window(start: str | None, end: str | None, length: str | None, step: str, now: float | None = None) -> Window:
    """The range from --start / --end / --range (default: the last hour), rounded up to whole minutes."""
    now = time.time() if now is None else now
    t_end = parse_time(end, now, "--end") if end else now
    if start and length:
        raise BacktestInputError("give --start or --range, not both")
    if start:
        t_start = parse_time(start, now, "--start")
    else:
        try:
            span = parse_duration(length or "1h")
        except ValueError as e:
            raise BacktestInputError(f"--range: {e}") from None
        if not 0 < span < math.inf:
            raise BacktestInputError(f"--range must be a positive duration, got {length!r}")
        t_start = t_end - span
    if not t_end > t_start:
        raise BacktestInputError(f"bad range: the end ({_iso(t_end)}) is not after the start ({_iso(t_start)})")
    if t_start > now:
        raise BacktestInputError(f"bad range: it starts in the future ({_iso(t_start)}; now is {_iso(now)})")
    try:
        step_s = parse_duration(step)
    except ValueError as e:
        raise BacktestInputError(f"--step: {e}") from None
    if not (step_s > 0 and abs(60.0 / step_s - round(60.0 / step_s)) < 1e-9 and step_s <= 60):
        raise BacktestInputError(f"--step must divide a minute (1s, 5s, 15s, 30s, 1m ...), got {step!r}")
    minutes = math.ceil((t_end - t_start) / 60.0 - 1e-9)
    if minutes > MAX_MINUTES:
        raise BacktestInputError(f"bad range: {minutes} minutes is more than the {MAX_MINUTES} (60 days) read at most")
    window = Window(t_start, minutes, step_s)
    if window.n_points > MAX_POINTS:
        raise BacktestInputError(f"--step {step} over {minutes} minutes is {window.n_points:,} points per series "
                                 f"(at most {MAX_POINTS:,}): use a longer --step")
    return window


@dataclass
class Defaults:
    duration_ms: float = 100.0
    memory_mb: float = 256.0


@dataclass
class BacktestData:
    """Per-function minute counts, durations and memory read from Prometheus, with their provenance."""

    names: list[str]
    counts: np.ndarray  # (F, minutes) int64
    duration_pct_ms: np.ndarray  # (F, 7)
    duration_source: list[str]
    memory_mb: np.ndarray
    memory_source: list[str]
    window: Window
    preset: MetricPreset
    prometheus: str
    series: int
    resets: int
    new_series: int
    first_data_unix: float
    warnings: list[str] = field(default_factory=list)
    idle_functions: list[str] = field(default_factory=list)  # series present, no invocation in the range

    def describe(self) -> dict:
        return {"format": "prometheus", "prometheus": self.prometheus, **self.preset.describe(),
                **self.window.describe(), "series": self.series, "counter_resets": self.resets,
                "series_created_in_range": self.new_series, "first_data_unix": self.first_data_unix,
                "functions_without_invocations": self.idle_functions,
                "arrivals_timing": "counted in the minute Prometheus scraped them (one scrape interval late at most)"}

    def workload(self) -> MinuteCountWorkload:
        n = len(self.names)
        table = FunctionTable(names=list(self.names), apps=np.arange(n, dtype=np.int32), app_names=list(self.names),
                              memory_mb=self.memory_mb.astype(np.float64), cold_start_s=np.full(n, np.nan),
                              triggers=["http"] * n)
        return MinuteCountWorkload(table, self.counts, self.duration_pct_ms, start_minute=int(self.window.start // 60),
                                   description=self.describe())


def read(client: PrometheusClient, preset: MetricPreset, window: Window, defaults: Defaults) -> BacktestData:
    """Everything the backtest needs from Prometheus for `window`."""
    series = client.query_range(preset.counter, window.start, window.end, window.step)
    if not series:
        raise BacktestInputError(f"Prometheus at {client.url} has no series for {preset.counter!r} between "
                                 f"{_iso(window.start)} and {_iso(window.end)} (is the target scraped, and the "
                                 "range right?)")
    keys = [preset.function_name(s.labels) for s in series]
    labelled = [i for i, k in enumerate(keys) if k is not None]
    label_list = ", ".join(preset.function_labels)
    if not labelled:
        seen = sorted({k for s in series for k in s.labels})
        raise BacktestInputError(f"the series of {preset.counter!r} have no label {label_list} to name functions "
                                 f"(their labels: {', '.join(seen) or 'none'}); set --function-label")
    warnings = []
    if len(labelled) < len(series):
        warnings.append(f"{len(series) - len(labelled)} series of {preset.counter!r} without {label_list} ignored")
    first_data = _first_data(client, window)
    values = counters.grid_matrix([series[i].t for i in labelled], [series[i].v for i in labelled], window.start,
                                  window.step, window.n_points)
    inc, resets, born = counters.increments(values, first_data)
    names, per_fn = counters.group_rows(counters.per_minute(inc, window.step, window.minutes),
                                        [keys[i] for i in labelled])
    counts = counters.integer_counts(per_fn)
    if counts.sum() == 0:
        raise BacktestInputError(f"{preset.counter!r} counted no invocation between {_iso(window.start)} and "
                                 f"{_iso(window.end)} ({len(names)} functions, {len(labelled)} series)")
    totals = counts.sum(axis=1)
    # Busiest first, as a table reads best. Functions without an invocation in the range are left out:
    # there is nothing to replay for them (only always-warm would hold an instance for them).
    order = [i for i in np.argsort(-totals, kind="stable") if totals[i] > 0]
    idle = [names[i] for i in range(len(names)) if totals[i] == 0]
    names = [names[i] for i in order]
    counts = counts[order]
    pct, dsrc = _durations(client, preset, window, names, first_data, defaults, warnings)
    mem, msrc = _memory(client, preset, window, names, defaults)
    return BacktestData(names, counts, pct, dsrc, mem, msrc, window, preset, client.url, len(labelled),
                        int(resets.sum()), int(born.sum()), window.start + first_data * window.step,
                        warnings + client.warnings, idle)


def _first_data(client: PrometheusClient, window: Window) -> int:
    """The first grid point at which Prometheus had scraped anything (0 if it had before the range)."""
    up = client.query_range("count(up)", window.start, window.end, window.step)
    if not up or not up[0].t:
        return 0
    return max(0, int(math.ceil((min(up[0].t) - window.start) / window.step - 1e-9)))


def _durations(client: PrometheusClient, preset: MetricPreset, window: Window, names: list[str], first_data: int,
               defaults: Defaults, warnings: list[str]) -> tuple[np.ndarray, list[str]]:
    pct = np.full((len(names), len(DURATION_QUANTILES)), float(defaults.duration_ms))
    source = [f"default {defaults.duration_ms:g} ms"] * len(names)
    if preset.histogram is None:
        return pct, source
    span = window.end - window.start
    hstep = max(window.step, math.ceil(span / HISTOGRAM_POINTS / window.step) * window.step)
    series = client.query_range(preset.histogram, window.start, window.end, hstep)
    if not series:
        return pct, source
    n_points = int(math.floor(span / hstep + 1e-9)) + 1
    values = counters.grid_matrix([s.t for s in series], [s.v for s in series], window.start, hstep, n_points)
    first = int(math.ceil(first_data * window.step / hstep - 1e-9))
    totals = counters.increments(values, first)[0].sum(axis=1)
    index = {n: i for i, n in enumerate(names)}
    buckets: dict[int, dict[float, float]] = {}
    for s, total in zip(series, totals, strict=True):
        f = index.get(preset.function_name(s.labels) or "")
        le = s.labels.get("le")
        if f is None or le is None:
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        per = buckets.setdefault(f, {})
        per[bound] = per.get(bound, 0.0) + total
    for f, per in buckets.items():
        bounds = np.array(sorted(per))
        got = counters.histogram_percentiles_ms(bounds, np.array([per[b] for b in bounds]), preset.histogram_unit_s)
        if got is not None:
            pct[f] = got
            source[f] = f"histogram {preset.histogram.removesuffix('_bucket')}"
    return pct, source


def _memory(client: PrometheusClient, preset: MetricPreset, window: Window, names: list[str],
            defaults: Defaults) -> tuple[np.ndarray, list[str]]:
    mem = np.full(len(names), float(defaults.memory_mb))
    source = [f"default {defaults.memory_mb:g} MB"] * len(names)
    if preset.memory is None:
        return mem, source
    index = {n: i for i, n in enumerate(names)}
    for labels, value in client.query(preset.memory, window.end):
        f = index.get(preset.function_name(labels) or "")
        if f is not None and math.isfinite(value) and value > 0:
            mem[f] = value / 2**20
            source[f] = "memory query"
    return mem, source


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
