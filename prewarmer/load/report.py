"""The load-test report: the metrics compared (BENCHMARKS.md names), prewarmer/baseline ratios, the table
printed on the terminal, per-second time series of each run and the plot (PNG, or HTML with the table).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

from prewarmer.load.results import per_second
from prewarmer.load.run import RunOutcome

REPORT_METRICS = ("invocations", "cold_starts", "cold_start_rate", "throughput_rps", "p50_latency_ms",
                  "p99_latency_ms", "errors", "wasted_gb_s", "busy_gb_s", "send_lag_p50_ms", "send_lag_p99_ms",
                  "send_lag_max_ms")


def ratios(base: dict, pre: dict) -> dict:
    out = {}
    for k in REPORT_METRICS:
        b, p = base.get(k), pre.get(k)
        out[k] = round(p / b, 4) if isinstance(b, int | float) and isinstance(p, int | float) and b else None
    return out


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def print_table(runs: list[RunOutcome], ratio: dict | None) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("metric")
    for r in runs:
        table.add_column(f"{r.label}" + (f" ({r.policy})" if r.policy else ""), justify="right")
    if ratio is not None:
        table.add_column("ratio", justify="right")
    for k in REPORT_METRICS:
        row = [k] + [_fmt(r.metrics.get(k)) for r in runs]
        if ratio is not None:
            row.append(_fmt(ratio.get(k)))
        table.add_row(*row)
    console = _console()
    console.print("[bold]load test[/]: open loop, latency from the intended send time")
    console.print(table)


def print_simulated(simulated: dict, measured: bool = True) -> None:
    """Predicted (replay of the run's schedule) beside measured cold starts, per run and function; with
    `measured` False (`--simulate-only`), the predictions alone."""
    from rich.table import Table

    warmup = max((sim.get("warmup_s") or 0.0 for sim in simulated.values()), default=0.0)
    title = "cold starts: replay of each run's schedule vs the live run" if measured else \
        "cold starts predicted by replay of the planned schedule (no live run)"
    table = Table(title=title + (f", after a {warmup:g} s warm-up" if warmup else ""))
    # start-up s: each function's own; on the `all` row, what every other worker starting beside one adds.
    cols = ("run", "policy", "function", "start-up s") + (("measured",) if measured else ()) + ("predicted",)
    for c in cols:
        table.add_column(c, justify="left" if c in ("run", "policy", "function") else "right")
    for label, sim in simulated.items():
        for name, f in sim["per_function"].items():
            table.add_row(label, sim["policy"], name, f"{f['startup_s']:.3f}",
                          *((str(f["measured"]),) if measured else ()), str(f["predicted"]))
        verdict = (" (agree)" if sim["agree"] else " (DISAGREE)") if measured else ""
        if sim.get("sidecar_late_s"):
            verdict = f" (sidecar started {sim['sidecar_late_s']:g} s after the first request: not comparable)"
        per = sim.get("startup_per_starting_s") or 0.0
        shown = (str(sim["measured_cold_starts"]),) if measured else ()
        table.add_row(label, sim["policy"], f"all{verdict}", f"+{per:.3f}/other" if per else "", *shown,
                      str(sim["predicted_cold_starts"]), end_section=True)
    _console().print(table)


def _console():
    from rich.console import Console

    return Console(soft_wrap=False, width=max(100, shutil.get_terminal_size((100, 24)).columns))


def series(run: RunOutcome, duration_s: float) -> dict:
    s = per_second(run.results, duration_s=max(duration_s, run.results.get("span_s") or 0.0))
    # Instances were sampled on the wall clock; put them on the schedule's time axis.
    t0 = run.results.get("started_unix") or (run.samples[0]["unix"] if run.samples else 0.0)
    s["instances"] = {"t": [round(x["unix"] - t0, 3) for x in run.samples], "warm": [x["warm"] for x in run.samples],
                      "starting": [x["starting"] for x in run.samples]}
    return s


def write_plot(path: Path, runs: list[RunOutcome], duration_s: float, table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for k, r in enumerate(runs):
        s = series(r, duration_s)
        name, color = r.label + (f" ({r.policy})" if r.policy else ""), f"C{k}"
        # One more edge so that the last second is drawn as wide as the others.
        t = s["t"] + [len(s["t"])]
        if k == 0:  # every run replays the same schedule: draw what was sent once
            axes[0].step(t, s["requests"] + s["requests"][-1:], where="post", color="0.6", label="scheduled")
        axes[0].step(t, s["completed"] + s["completed"][-1:], where="post", color=color, alpha=0.8,
                     label=f"{name} completed")
        axes[1].step(t, s["cold_starts"] + s["cold_starts"][-1:], where="post", color=color, label=name)
        axes[2].plot(s["instances"]["t"], s["instances"]["warm"], color=color, label=f"{name} warm")
        axes[2].plot(s["instances"]["t"], s["instances"]["starting"], color=color, linestyle=":",
                     label=f"{name} starting")
    axes[0].set_ylabel("requests / s")
    axes[1].set_ylabel("cold starts / s")
    axes[2].set_ylabel("instances")
    axes[2].set_xlabel("seconds since the start of the run")
    for ax in axes:
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    if path.suffix.lower() in (".html", ".htm"):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        img = base64.b64encode(buf.getvalue()).decode()
        head = "".join(f"<th>{r.label}{f' ({r.policy})' if r.policy else ''}</th>" for r in runs)
        has_ratio = bool(table.get("ratios"))
        rows = "".join(
            f"<tr><td>{k}</td>" + "".join(f"<td>{_fmt(r.metrics.get(k))}</td>" for r in runs)
            + (f"<td>{_fmt(table['ratios'].get(k))}</td>" if has_ratio else "") + "</tr>"
            for k in REPORT_METRICS)
        html = ("<!doctype html><meta charset='utf-8'><title>prewarmer load test</title>"
                "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}"
                "td:first-child{text-align:left}</style><h1>prewarmer load test</h1>"
                f"<table><tr><th>metric</th>{head}{'<th>ratio</th>' if has_ratio else ''}</tr>{rows}</table>"
                f"<img alt='time series' src='data:image/png;base64,{img}'>"
                f"<pre>{json.dumps(table.get('schedule', {}), indent=1, default=str)[:20000]}</pre>")
        path.write_text(html, encoding="utf-8")
    else:
        fig.savefig(path, dpi=110)
    plt.close(fig)
