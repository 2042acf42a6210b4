"""Replay reports: the metrics table, the JSON document, the per-minute series and the plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from prewarmer.sim.replay import SimResult
from prewarmer.sim.result import SAMPLED_NAMES

REFERENCE = "fixed"  # fixed keep-alive 10 minutes: every ratio is against it (BENCHMARKS.md)

METRICS = ("invocations", "cold_starts", "cold_start_rate", "p75_function_cold_start_pct", "wasted_gb_s",
           "busy_gb_s", "p50_latency_ms", "p99_latency_ms", "throughput_rps", "timed_out", "peak_memory_gb")


def with_ratios(results: dict[str, SimResult]) -> dict[str, dict[str, float]]:
    """Metrics per policy plus cold_start_ratio and waste_ratio against the reference."""
    out = {spec: r.metrics() for spec, r in results.items()}
    ref = out[REFERENCE]
    for m in out.values():
        m["cold_start_ratio"] = _ratio(m["cold_start_rate"], ref["cold_start_rate"])
        m["waste_ratio"] = _ratio(m["wasted_gb_s"], ref["wasted_gb_s"])
    return out


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


_FORMATS = {"invocations": "{:,}", "cold_starts": "{:,}", "cold_start_rate": "{:.4%}",
            "p75_function_cold_start_pct": "{:.2f}", "wasted_gb_s": "{:,.0f}", "busy_gb_s": "{:,.0f}",
            "p50_latency_ms": "{:,.1f}", "p99_latency_ms": "{:,.0f}", "throughput_rps": "{:,.3f}",
            "timed_out": "{:,}", "peak_memory_gb": "{:,.1f}", "cold_start_ratio": "{:.3f}", "waste_ratio": "{:.3f}"}


def print_table(metrics: dict[str, dict[str, float]], console: Console | None = None) -> None:
    """One row per metric, one column per policy (stays readable in an 80-column terminal)."""
    console = console or Console()
    table = Table(title="Replay metrics (ratios against fixed keep-alive 10 min; < 1 is better)")
    table.add_column("metric")
    for spec in metrics:
        table.add_column(spec, justify="right")
    for key, fmt in _FORMATS.items():
        table.add_row(key, *[fmt.format(m[key]) for m in metrics.values()])
    console.print(table)


def write_json(path: str | Path, workload: dict, metrics: dict[str, dict[str, float]], runs: dict) -> None:
    doc = {"workload": workload, "policies": metrics, "runs": runs}
    Path(path).write_text(json.dumps(doc, indent=2, default=_jsonable, allow_nan=True) + "\n")


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


SERIES_COLUMNS = ("policy", "t_s", *SAMPLED_NAMES, "instances_alive", "peak_memory_gb")
REPORT_TOTALS = {"arrivals": "invocations", "cold_starts": "cold_starts", "timed_out": "timed_out"}  # series -> report


def write_series(path: str | Path, results: dict[str, SimResult], metrics: dict[str, dict[str, float]]) -> None:
    """Every policy's fleet over time, one row per sample interval ending at `t_s`: the arrivals, cold starts and
    timeouts in it, the instances alive at its end and the peak memory within it. A last row at the run's end
    holds the tail (requests still running at the horizon, and what timed out while they drained), so each
    column sums to the report's total."""
    with open(path, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(SERIES_COLUMNS)
        for spec, r in results.items():
            total = [metrics[spec][REPORT_TOTALS[name]] for name in SAMPLED_NAMES]
            counts = np.diff(np.vstack([r.counts_total, total]), axis=0, prepend=0)
            # `interval_peak_gb` has one entry per sample interval and one for the tail.
            for t, c, alive, peak in zip([*r.sample_t, r.t_final], counts, [*r.alive_total, ""], r.interval_peak_gb,
                                         strict=True):
                w.writerow([spec, f"{t:g}", *(int(x) for x in c), alive, f"{peak:.3f}"])


def plot(path: str | Path, results: dict[str, SimResult], metrics: dict[str, dict[str, float]],
         names: list[str]) -> None:
    """Cold-start rate vs wasted GB-s per policy, instances alive and cold starts per hour over time, and the warm
    instances of the busiest functions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    first = next(iter(results.values()))
    n_top = min(3, len(first.top))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    ax = axes[0, 0]
    widest = max(m["wasted_gb_s"] for m in metrics.values())
    for spec, m in metrics.items():
        ax.scatter(m["wasted_gb_s"], 100 * m["cold_start_rate"], s=60)
        right = m["wasted_gb_s"] == widest and len(metrics) > 1  # keep the rightmost label inside the axes
        ax.annotate(spec, (m["wasted_gb_s"], 100 * m["cold_start_rate"]), textcoords="offset points",
                    xytext=(-5 if right else 5, 5), ha="right" if right else "left", fontsize=9)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("wasted memory (GB-s, log scale)")
    ax.set_ylabel("cold-start rate (%)")
    ax.set_title("cold starts vs waste (lower-left is better)")
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    for spec, r in results.items():
        ax.plot(r.sample_t / 3600, r.alive_total, label=spec, lw=1)
    ax.set_title("instances alive, all functions")
    ax.set_xlabel("trace time (h)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0, 2]
    bin_s = 3600.0 if first.horizon_s >= 3 * 3600.0 else 600.0  # a run of hours in hours, a short one in 10 minutes
    for spec, r in results.items():
        if len(r.counts_total) < 2:
            continue
        # Cold starts per bin, from the cumulative counts sampled every minute: where in the run a policy gains.
        t, cold = r.sample_t, r.counts_total[:, SAMPLED_NAMES.index("cold_starts")]
        step = max(1, int(round(bin_s / (t[1] - t[0]))))
        ends = np.arange(min(step, len(t)) - 1, len(t), step)
        ax.stairs(np.diff(cold[ends], prepend=0), np.concatenate([[0.0], t[ends]]) / 3600, baseline=None,
                  label=spec, lw=1)
    ax.set_title(f"cold starts per {'hour' if bin_s == 3600.0 else '10 minutes'}, all functions")
    ax.set_xlabel("trace time (h)")
    ax.grid(alpha=0.3)
    for k, ax in enumerate([axes[1, 0], axes[1, 1], axes[1, 2]]):
        if k >= n_top:
            ax.axis("off")
            continue
        for spec, r in results.items():
            col = list(r.top).index(first.top[k])
            ax.step(r.sample_t / 3600, r.alive_top[:, col], where="post", label=spec, lw=1, alpha=0.8)
        ax.set_title(f"warm instances: {_short(names[int(first.top[k])])} (#{k + 1} busiest)", fontsize=9)
        ax.set_xlabel("trace time (h)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str) -> str:
    return name if len(name) <= 20 else name[:12] + "…"
