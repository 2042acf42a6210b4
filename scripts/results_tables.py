#!/usr/bin/env python3
"""Render the result tables of README.md and docs/ from JSON reports, so they are generated, not pasted.

The index, docs/results.toml, names each report (`[reports.NAME]`: the `prewarmer replay` or
`prewarmer loadtest` command that writes it, its file name, where and when it was measured) and each
table (`[tables.MARKER]`: the Markdown file holding `<!-- results:MARKER -->` ... `<!-- /results:MARKER -->`,
the report it reads, the metrics it shows). The script replaces what is between the two markers with the
table and, under it, the command, the machine and the date.

    .venv/bin/python scripts/results_tables.py --reports DIR        # render from DIR/<file> of each report
    .venv/bin/python scripts/results_tables.py --report NAME=PATH   # render from a report given by path
    .venv/bin/python scripts/results_tables.py --run                # run the commands first, then render

Reports are generated data: keep them out of the repository. The default directory, build/results, is
git-ignored. Before rendering, each report is checked against its command (policies, minutes, memory cap,
seed, workers), so a table cannot be filled from another run's report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "docs" / "results.toml"
DEFAULT_REPORTS = ROOT / "build" / "results"

# Replay metrics as `prewarmer replay` prints them (prewarmer/report.py), in that order.
REPLAY_METRICS = ("invocations", "cold_starts", "cold_start_rate", "p75_function_cold_start_pct", "wasted_gb_s",
                  "busy_gb_s", "p50_latency_ms", "p99_latency_ms", "throughput_rps", "timed_out", "peak_memory_gb",
                  "cold_start_ratio", "waste_ratio")
# Load-test metrics as `prewarmer loadtest` reports them (prewarmer/load/report.py).
LOADTEST_METRICS = ("invocations", "cold_starts", "cold_start_rate", "throughput_rps", "p50_latency_ms",
                    "p99_latency_ms", "errors", "wasted_gb_s", "busy_gb_s", "send_lag_p50_ms", "send_lag_p99_ms",
                    "send_lag_max_ms")
# The policies `prewarmer replay` runs without --policy (prewarmer.registry.BASELINES).
BASELINES = ("fixed", "hybrid", "kpa", "always-warm")


def _int(v: float) -> str:
    return f"{int(round(v)):,}"


FORMATS = {
    "invocations": _int, "cold_starts": _int, "timed_out": _int, "errors": _int,
    "cold_start_rate": lambda v: f"{100 * v:.3f}%",
    "p75_function_cold_start_pct": lambda v: f"{v:.2f}",
    "wasted_gb_s": _int, "busy_gb_s": _int, "peak_memory_gb": _int,
    "p50_latency_ms": lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.1f}",
    "p99_latency_ms": lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.1f}",
    "throughput_rps": lambda v: f"{v:,.3f}",
    "cold_start_ratio": lambda v: f"{v:.3f}", "waste_ratio": lambda v: f"{v:.3f}",
}
# Which way is better, for `bold = true` tables (metrics not listed are never bold).
LOWER_IS_BETTER = {"cold_starts", "cold_start_rate", "p75_function_cold_start_pct", "wasted_gb_s", "p50_latency_ms",
                   "p99_latency_ms", "timed_out", "errors", "cold_start_ratio", "waste_ratio"}
HIGHER_IS_BETTER = {"throughput_rps"}


class ResultsError(Exception):
    """A problem with the index, a report or a Markdown file; the message says which and where."""


@dataclass
class Report:
    name: str
    command: str
    file: str
    machine: str = ""
    date: str = ""


@dataclass
class TableSpec:
    marker: str
    file: str  # Markdown file, relative to the repository root
    report: str  # a key of [reports]
    metrics: list[str] = field(default_factory=list)  # rows, in order (default: all the report's metrics)
    bold: bool = False  # bold the best value of each row


# ---------------------------------------------------------------------------------------------- index
def load_index(path: Path = INDEX) -> tuple[dict[str, Report], dict[str, TableSpec]]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ResultsError(f"{path}: {e}") from None
    reports = {}
    for name, r in doc.get("reports", {}).items():
        try:
            reports[name] = Report(name=name, **r)
        except TypeError as e:
            raise ResultsError(f"{path}: [reports.{name}]: {e}") from None
        if "--json" in shlex.split(reports[name].command):
            raise ResultsError(f"{path}: [reports.{name}]: leave --json out of the command (the script adds it)")
    tables = {}
    for marker, t in doc.get("tables", {}).items():
        try:
            tables[marker] = TableSpec(marker=marker, **t)
        except TypeError as e:
            raise ResultsError(f"{path}: [tables.{marker}]: {e}") from None
        if tables[marker].report not in reports:
            raise ResultsError(f"{path}: [tables.{marker}]: no [reports.{tables[marker].report}]")
    return reports, tables


# ---------------------------------------------------------------------------------------------- reports
def report_kind(doc: dict) -> str:
    """'replay' (`prewarmer replay --json`) or 'loadtest' (`prewarmer loadtest --json`)."""
    if isinstance(doc.get("policies"), dict) and "workload" in doc:
        return "replay"
    if "schedule" in doc and "config" in doc and ("baseline" in doc or "prewarmer" in doc):
        return "loadtest"
    raise ResultsError("not a report of `prewarmer replay --json` or `prewarmer loadtest --json`")


def _command_args(command: str) -> argparse.Namespace:
    argv = shlex.split(command)
    if argv[:1] != ["prewarmer"] or len(argv) < 2 or argv[1] not in ("replay", "loadtest"):
        raise ResultsError(f"not a `prewarmer replay` or `prewarmer loadtest` command: {command}")
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--policy", action="append")
    p.add_argument("--compare")
    p.add_argument("--trace")
    p.add_argument("--minutes")
    p.add_argument("--memory-cap", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int)
    args, _ = p.parse_known_args(argv[2:])
    args.command = argv[1]
    return args


def check_report(command: str, doc: dict) -> None:
    """Raise ResultsError when `doc` cannot be the report `command` wrote."""
    args = _command_args(command)
    kind = report_kind(doc)
    if kind != args.command:
        raise ResultsError(f"the command is `prewarmer {args.command}` but the report is a {kind} report")
    problems = []
    if kind == "replay":
        expected = list(dict.fromkeys(["fixed"] + (args.policy or list(BASELINES))))
        if list(doc["policies"]) != expected:
            problems.append(f"policies {list(doc['policies'])}, the command runs {expected}")
        wl, model = doc.get("workload", {}), doc.get("workload", {}).get("replay_model", {})
        if args.minutes:
            a, b = (int(x) for x in args.minutes.split(":"))
            if (wl.get("start_minute"), wl.get("minutes")) != (a, b - a):
                problems.append(f"minutes {wl.get('start_minute')}+{wl.get('minutes')}, the command asks {a}:{b}")
        if args.trace and Path(str(wl.get("path", ""))).name != Path(args.trace).name:
            problems.append(f"trace {wl.get('path')}, the command replays {args.trace}")
        if model.get("memory_cap_gb") != args.memory_cap:
            problems.append(f"memory cap {model.get('memory_cap_gb')}, the command sets {args.memory_cap}")
        if model.get("seed") != args.seed:
            problems.append(f"seed {model.get('seed')}, the command sets {args.seed}")
        if args.workers:
            workers = {r.get("workers") for r in doc.get("runs", {}).values()}
            if workers != {args.workers}:
                problems.append(f"workers {sorted(workers)}, the command sets {args.workers}")
    else:
        policy = args.compare or (args.policy[0] if args.policy else None)
        if doc["config"].get("policy") != policy:
            problems.append(f"policy {doc['config'].get('policy')}, the command uses {policy}")
        if args.compare and not ("baseline" in doc and "prewarmer" in doc):
            problems.append("the command compares two runs; the report does not have both")
    if problems:
        raise ResultsError("the report does not match its command: " + "; ".join(problems))


def read_report(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: {e}") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"{path}: not a JSON object")
    return doc


# ---------------------------------------------------------------------------------------------- Markdown
def fmt(metric: str, v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    f = FORMATS.get(metric)
    if f is not None:
        return f(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _best(metric: str, values: list[object]) -> set[int]:
    nums = [(i, v) for i, v in enumerate(values) if isinstance(v, int | float) and math.isfinite(v)]
    if metric not in LOWER_IS_BETTER | HIGHER_IS_BETTER or len(nums) < 2:
        return set()
    pick = min if metric in LOWER_IS_BETTER else max
    best = pick(v for _, v in nums)
    if all(v == best for _, v in nums):
        return set()
    shown = fmt(metric, best)
    return {i for i, v in nums if fmt(metric, v) == shown}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _rows(metrics: list[str], columns: list[dict], bold: bool) -> list[list[str]]:
    rows = []
    for m in metrics:
        values = [c.get(m) for c in columns]
        best = _best(m, values) if bold else set()
        cells = [f"**{fmt(m, v)}**" if i in best else fmt(m, v) for i, v in enumerate(values)]
        rows.append([m, *cells])
    return rows


def _describe_replay(doc: dict) -> str:
    wl = doc.get("workload", {})
    model = wl.get("replay_model", {})
    parts = []
    if wl.get("format"):
        what = f"{wl['format']} trace `{Path(str(wl.get('path', ''))).name}`" if wl.get("path") else wl["format"]
        parts.append(what)
    elif wl.get("model"):
        parts.append(f"`{wl['model']}` workload")
    if "functions" in wl:
        parts.append(f"{wl['functions']:,} functions")
    if "start_minute" in wl and "minutes" in wl:
        parts.append(f"minutes {wl['start_minute']}:{wl['start_minute'] + wl['minutes']}")
    if "invocations" in wl:
        parts.append(f"{wl['invocations']:,} invocations")
    if "seed" in model:
        parts.append(f"seed {model['seed']}")
    if model.get("memory_cap_gb") is not None:
        deadline = model.get("queue_deadline_s")
        parts.append(f"memory cap {model['memory_cap_gb']:,.0f} GB"
                     + (f", deadline {deadline:g} s" if isinstance(deadline, int | float) else ""))
    runs = doc.get("runs", {})
    walls = [r.get("wall_s") for r in runs.values()]
    if walls and all(isinstance(w, int | float) for w in walls):
        workers = sorted({r.get("workers") for r in runs.values()})
        parts.append("wall " + " / ".join(f"{w:.1f}" for w in walls) + " s per policy"
                     + (f" with {', '.join(map(str, workers))} worker{'s' if workers != [1] else ''}"
                        if workers else ""))
    return "; ".join(parts)


def _describe_loadtest(doc: dict) -> str:
    s, c = doc.get("schedule", {}), doc.get("config", {})
    parts = []
    if "requests" in s:
        parts.append(f"{s['requests']:,} requests over {s.get('duration_s', 0):.0f} s")
    fns = s.get("functions") or []
    if fns:
        parts.append(f"{len(fns)} functions (" + ", ".join(f"{f.get('name')}: {f.get('sample')}" for f in fns) + ")")
    if c.get("compress"):
        parts.append(f"compressed {c['compress']:g}×")
    if c.get("keep_alive_s") is not None:
        parts.append(f"gateway keep-alive {c['keep_alive_s']:g} s")
    return "; ".join(parts)


def render_table(spec: TableSpec, report: Report, doc: dict) -> str:
    """The Markdown that goes between the table's markers: the table, then how it was measured."""
    if report_kind(doc) == "replay":
        policies = doc["policies"]
        columns = list(policies.values())
        metrics = spec.metrics or [m for m in REPLAY_METRICS if any(m in c for c in columns)]
        header = ["metric", *policies]
        about = _describe_replay(doc)
    else:
        labels = [k for k in ("baseline", "prewarmer") if k in doc]
        columns = [doc[k] for k in labels]
        metrics = spec.metrics or list(LOADTEST_METRICS)
        policy = doc.get("config", {}).get("policy")
        header = ["metric", *("gateway alone" if k == "baseline" else f"with the sidecar ({policy})" for k in labels)]
        about = _describe_loadtest(doc)
    missing = [m for m in metrics if all(m not in c for c in columns)]
    if missing:
        raise ResultsError(f"table {spec.marker}: the report has no {', '.join(missing)}")
    rows = _rows(metrics, columns, spec.bold)
    ratios = doc.get("ratios") if report_kind(doc) == "loadtest" else None
    if ratios:  # prewarmer / baseline, plain numbers whatever the metric
        header.append("ratio")
        for row, m in zip(rows, metrics, strict=True):
            r = ratios.get(m)
            row.append("–" if r is None else f"{r:.3f}")
    prov = doc.get("provenance", {})
    machine = prov.get("machine") or report.machine or "not recorded"
    date = prov.get("date") or report.date or "not recorded"
    commit = f" Code: `{prov['commit']}`." if prov.get("commit") else ""
    note = (f"Command: `{report.command}`" + (f" ({about})." if about else ".")
            + f" Machine: {machine}. Date: {date}.{commit}")
    return (f"<!-- generated by scripts/results_tables.py from report `{report.name}` (docs/results.toml); "
            f"do not edit by hand -->\n{markdown_table(header, rows)}\n\n{note}\n")


def replace_block(text: str, marker: str, body: str, where: str = "text") -> str:
    """`text` with what is between `<!-- results:MARKER -->` and `<!-- /results:MARKER -->` replaced by `body`."""
    start, end = f"<!-- results:{marker} -->", f"<!-- /results:{marker} -->"
    for m in (start, end):
        n = text.count(m)
        if n != 1:
            raise ResultsError(f"{where}: {m} occurs {n} times (expected once)")
    i = text.index(start) + len(start)
    j = text.index(end)
    if j < i:
        raise ResultsError(f"{where}: {end} comes before {start}")
    return text[:i] + "\n" + body.strip("\n") + "\n" + text[j:]


# ---------------------------------------------------------------------------------------------- running
def machine() -> str:
    """Cores, CPU model and memory of this machine, as the notes under the tables state them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    model, mem_gib = platform.processor() or platform.machine(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    return f"{cores} cores ({model})" + (f", {mem_gib:.0f} GiB RAM" if mem_gib else "")


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def run_report(report: Report, path: Path) -> None:
    """Run the report's command (`prewarmer` = this interpreter's `-m prewarmer`) from the repository root,
    writing the report to `path` with a `provenance` entry: command, date, machine, commit."""
    argv = shlex.split(report.command)
    tmp = path.with_name(path.name + ".partial")
    cmd = [sys.executable, "-m", "prewarmer", *argv[1:], "--json", str(tmp), "--quiet"]
    print(f"running {report.name}: {report.command}", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr)  # its table too: stdout is for nothing else
    if done.returncode != 0:
        raise ResultsError(f"{report.name}: the command exited with {done.returncode}: {report.command}")
    doc = read_report(tmp)
    doc["provenance"] = {"command": report.command, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
                         "machine": machine(), "commit": _commit()}
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fill the result tables of README.md and docs/ from JSON reports.")
    p.add_argument("--index", type=Path, default=INDEX, help="the index of reports and tables (docs/results.toml)")
    p.add_argument("--reports", type=Path, default=DEFAULT_REPORTS,
                   help="directory of the reports, each under its index file name (build/results, git-ignored)")
    p.add_argument("--report", action="append", default=[], metavar="NAME=PATH",
                   help="read report NAME from PATH instead (repeatable)")
    p.add_argument("--only", action="append", default=[], metavar="MARKER", help="only these tables (repeatable)")
    p.add_argument("--run", action="store_true", help="run the reports' commands first (writes into --reports)")
    p.add_argument("--root", type=Path, default=ROOT, help="where the Markdown files are (the repository)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        reports, tables = load_index(args.index)
        given = {}
        for item in args.report:
            name, sep, path = item.partition("=")
            if not sep or name not in reports:
                raise ResultsError(f"--report {item}: expected NAME=PATH with NAME one of {', '.join(reports)}")
            given[name] = Path(path)
        unknown = [m for m in args.only if m not in tables]
        if unknown:
            raise ResultsError(f"--only: no table {', '.join(unknown)} in {args.index}")
        chosen = [tables[m] for m in (args.only or tables)]
        paths = {name: given.get(name, args.reports / r.file) for name, r in reports.items()}
        if args.run:
            for name in dict.fromkeys(t.report for t in chosen):
                run_report(reports[name], paths[name])
        rendered, skipped = 0, []
        for spec in chosen:
            path = paths[spec.report]
            if not path.exists():
                if args.only or spec.report in given:
                    raise ResultsError(f"table {spec.marker}: no report {spec.report} at {path}")
                skipped.append(f"{spec.marker} (no {path})")
                continue
            doc = read_report(path)
            try:
                check_report(reports[spec.report].command, doc)
            except ResultsError as e:
                raise ResultsError(f"{path}: {e}") from None
            md = args.root / spec.file
            text = md.read_text(encoding="utf-8")
            new = replace_block(text, spec.marker, render_table(spec, reports[spec.report], doc), str(md))
            if new != text:
                md.write_text(new, encoding="utf-8")
            print(f"{spec.file}: {spec.marker} {'updated' if new != text else 'unchanged'} from {path}",
                  file=sys.stderr)
            rendered += 1
        if skipped:
            print("left as they are: " + ", ".join(skipped) + " (use --run, --reports DIR or --report NAME=PATH)",
                  file=sys.stderr)
        if not rendered:
            raise ResultsError("no table rendered: no report found")
    except ResultsError as e:
        print(f"results_tables: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
