"""The backtest's report: the policies ranked, the per-function table, forecast quality, the plot, the JSON.

Ranking (`rank`): by default on `score` = cold_start_ratio + waste_ratio (both against fixed keep-alive
10 min on the same data, so fixed scores 2.0; lower is better), ties broken by the cold-start rate. A
policy is `pareto` when no other has both fewer cold starts and less waste (one strictly). Other keys
(`cold_start_rate`, `wasted_gb_s`, `p99_latency_ms`) rank on that metric alone.

Forecast quality (`forecast_quality`): `prewarmer.forecast.evaluate` per function, warmed up on the
first part of the range (`train_fraction`) and scored on the rest, never on minutes it learned from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from prewarmer.backtest.runner import PolicyRun
from prewarmer.backtest.source import BacktestData
from prewarmer.forecast.evaluate import evaluate
from prewarmer.sim import engine as E
from prewarmer.workloads.base import MinuteCountWorkload

RANK_KEYS = ("score", "cold_start_rate", "wasted_gb_s", "p99_latency_ms")


def rank(metrics: dict[str, dict[str, float]], by: str = "score") -> list[dict]:
    """Policies best first: rank, spec, score, pareto and the metrics it was ranked on."""
    if by not in RANK_KEYS:
        raise ValueError(f"unknown ranking key {by!r} (known: {', '.join(RANK_KEYS)})")
    rows = []
    for spec, m in metrics.items():
        score = m["cold_start_ratio"] + m["waste_ratio"]
        dominated = any(o["cold_start_rate"] <= m["cold_start_rate"] and o["wasted_gb_s"] <= m["wasted_gb_s"]
                        and (o["cold_start_rate"] < m["cold_start_rate"] or o["wasted_gb_s"] < m["wasted_gb_s"])
                        for s, o in metrics.items() if s != spec)
        rows.append({"policy": spec, "score": score, "pareto": not dominated,
                     **{k: m[k] for k in ("cold_starts", "cold_start_rate", "wasted_gb_s", "p99_latency_ms",
                                          "cold_start_ratio", "waste_ratio")}})

    def key(r: dict) -> tuple[float, float]:
        v = r[by]
        return (math.inf if v is None or math.isnan(v) else v, r["cold_start_rate"])

    rows.sort(key=key)
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    return rows


def print_ranking(ranking: list[dict], by: str, console: Console) -> None:
    how = "cold_start_ratio + waste_ratio" if by == "score" else by
    table = Table(title=f"Policies ranked by {how} (lower is better; ratios against fixed keep-alive 10 min)",
                  title_justify="left")
    for col in ("rank", "policy", "cold starts", "cold-start rate", "wasted GB-s", "p99 ms", "cold ratio",
                "waste ratio", "score", "pareto"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in ranking:
        table.add_row(str(r["rank"]), r["policy"], f"{r['cold_starts']:,}", f"{r['cold_start_rate']:.2%}",
                      f"{r['wasted_gb_s']:,.0f}", f"{r['p99_latency_ms']:,.0f}", f"{r['cold_start_ratio']:.3f}",
                      f"{r['waste_ratio']:.3f}", f"{r['score']:.3f}", "yes" if r["pareto"] else "")
    console.print(table)


def function_rows(data: BacktestData, runs: dict[str, PolicyRun]) -> dict[str, dict]:
    """Per function: what Prometheus recorded, the durations and memory used (with their source), and the
    cold starts each policy would have had."""
    out = {}
    for i, name in enumerate(data.names):
        row = data.counts[i]
        out[name] = {
            "invocations": int(row.sum()), "active_minutes": int((row > 0).sum()),
            "peak_per_minute": int(row.max()),
            "duration_pct_ms": [round(float(x), 3) for x in data.duration_pct_ms[i]],
            "duration_source": data.duration_source[i],
            "memory_mb": round(float(data.memory_mb[i]), 1), "memory_source": data.memory_source[i],
            "cold_starts": {spec: int(r.result.fi[i, E.F_COLD]) for spec, r in runs.items()},
            "per_minute": row.tolist(),
        }
    return out


def print_functions(functions: dict[str, dict], specs: Sequence[str], console: Console, limit: int) -> None:
    table = Table(title=f"Functions (busiest {min(limit, len(functions))} of {len(functions)}): what Prometheus "
                        "recorded, and the cold starts each policy would have had", title_justify="left")
    for col in ("function", "invocations", "active min", "p50 ms", "memory MB"):
        table.add_column(col, justify="left" if col == "function" else "right")
    for spec in specs:
        table.add_column(spec, justify="right")
    for name, f in list(functions.items())[:limit]:
        table.add_row(name, f"{f['invocations']:,}", str(f["active_minutes"]),
                      f"{f['duration_pct_ms'][3]:,.1f}" + ("" if f["duration_source"].startswith("histogram") else "*"),
                      f"{f['memory_mb']:,.0f}" + ("" if f["memory_source"] == "memory query" else "*"),
                      *[f"{f['cold_starts'][s]:,}" for s in specs])
    console.print(table)
    console.print("* a default, not read from a metric (see --default-duration, --default-memory)")


def forecast_quality(workload: MinuteCountWorkload, forecasters: Sequence[str], ks: Sequence[int],
                     train_fraction: float) -> dict | None:
    """Scores per function and for all functions together; None when the range has fewer than 2 minutes."""
    n_min = workload.counts.shape[1]
    if n_min < 2:
        return None
    b = min(n_min - 1, max(1, int(round(n_min * train_fraction))))
    train, test = (0, b), (b, n_min)
    per_function = {}
    for i, name in enumerate(workload.functions.names):
        one = MinuteCountWorkload(workload.functions.subset(np.array([i])), workload.counts[i:i + 1],
                                  workload.duration_pct_ms[i:i + 1], start_minute=workload.start_minute)
        per_function[name] = _scores(evaluate(one, train, test, forecasters, ks=ks))
    together = _scores(evaluate(workload, train, test, forecasters, ks=ks))
    return {"train_minutes": list(train), "test_minutes": list(test), "ks": list(ks), "all_functions": together,
            "per_function": per_function}


def _scores(results: dict) -> dict:
    return {name: {k: v for k, v in r.items() if k not in ("timing", "forecaster")} for name, r in results.items()}


def print_forecast(quality: dict | None, console: Console, limit: int) -> None:
    if quality is None:
        console.print("forecast quality: the range has fewer than 2 minutes, nothing to score")
        return
    ks = quality["ks"]
    k = ks[0]
    names = list(quality["all_functions"])
    a, b = quality["test_minutes"]
    table = Table(title=f"Forecast quality per function: warmed up on minutes {quality['train_minutes'][0]}:"
                        f"{quality['train_minutes'][1]}, scored on {a}:{b} (MAE of the next minute's count; "
                        f"'invoked within {k} min': precision / recall)", title_justify="left")
    table.add_column("function")
    for n in names:
        table.add_column(f"{n} MAE", justify="right")
        table.add_column(f"{n} prec/rec", justify="right")
    rows = [("all functions", quality["all_functions"])]
    rows += list(quality["per_function"].items())[:limit]
    for fname, scores in rows:
        cells = [fname]
        for n in names:
            s = scores[n]
            w = s.get(f"k={k}", {})
            cells += [_fmt(s["mae"], 3), f"{_fmt(w.get('precision'), 2)} / {_fmt(w.get('recall'), 2)}"]
        table.add_row(*cells)
    console.print(table)


def _fmt(v: float | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def write_json(path: str | Path, doc: dict) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def plot(path: str | Path, data: BacktestData, runs: dict[str, PolicyRun], ranking: list[dict]) -> None:
    """What Prometheus recorded, and per policy: cold starts and instances over time, and the trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = data.window.start
    colors = {spec: f"C{i}" for i, spec in enumerate(runs)}
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    ax = axes[0, 0]
    ax.stairs(data.counts.sum(axis=0), np.arange(data.counts.shape[1] + 1), color="black", lw=1)
    ax.set_title(f"invocations per minute (Prometheus, {len(data.names)} functions)")
    ax.set_xlabel("minutes since the range start")
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    for spec, r in runs.items():
        ax.step(r.result.sample_t / 60.0, r.cold_cumulative, where="post", label=spec, lw=1, color=colors[spec])
    ax.set_title("cold starts so far")
    ax.set_xlabel("minutes since the range start")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0, 2]
    for spec, r in runs.items():
        ax.step(r.result.sample_t / 60.0, r.result.alive_total, where="post", label=spec, lw=1, color=colors[spec])
    ax.set_title("instances alive, all functions")
    ax.set_xlabel("minutes since the range start")
    ax.grid(alpha=0.3)
    ax = axes[1, 0]
    points: dict[tuple[float, float], list[str]] = {}  # policies on the same point share one label
    for r in ranking:
        xy = (max(r["wasted_gb_s"], 1e-6), 100 * r["cold_start_rate"])
        ax.scatter(*xy, s=60, color=colors[r["policy"]])
        points.setdefault(xy, []).append(f"#{r['rank']} {r['policy']}")
    ax.set_xscale("log")
    # Labels of points close to one another are stacked downwards instead of printed over each other.
    xs = np.log10([xy[0] for xy in points])
    ys = np.array([xy[1] for xy in points])
    span_x, span_y = max(np.ptp(xs), 1e-9), max(np.ptp(ys), 1e-9)
    placed: list[tuple[float, float]] = []
    for (xy, labels), nx, ny in zip(points.items(), (xs - xs.min()) / span_x, (ys - ys.min()) / span_y, strict=True):
        near = sum(abs(nx - px) < 0.15 and abs(ny - py) < 0.08 for px, py in placed)
        placed.append((nx, ny))
        ax.annotate(", ".join(labels), xy, textcoords="offset points", xytext=(5, 5 - 12 * near), fontsize=9)
    ax.set_xlabel("wasted memory (GB-s, log scale)")
    ax.set_ylabel("cold-start rate (%)")
    ax.set_title("cold starts vs waste (lower-left is better)")
    ax.grid(alpha=0.3)
    first = next(iter(runs.values())).result
    for k, ax in enumerate([axes[1, 1], axes[1, 2]]):
        if k >= len(first.top):
            ax.axis("off")
            continue
        fn = int(first.top[k])
        for spec, r in runs.items():
            col = list(r.result.top).index(fn)
            ax.step(r.result.sample_t / 60.0, r.result.alive_top[:, col], where="post", label=spec, lw=1,
                    color=colors[spec])
        ax.set_title(f"warm instances: {data.names[fn][:40]}", fontsize=9)
        ax.set_xlabel("minutes since the range start")
        ax.grid(alpha=0.3)
    fig.suptitle(f"prewarmer backtest: {data.prometheus}, from "
                 f"{datetime.fromtimestamp(t0, UTC):%Y-%m-%d %H:%M:%S} UTC, {data.counts.shape[1]} min")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
