#!/usr/bin/env python3
"""Replay's prediction for the cells of issue 13's live bar: four function selections of the shared day, 120-s and
10-minute runs, with and without a 30-minute warm-up (`prewarmer loadtest --compare POLICY --simulate-only`), for
one or more policies beside the gateway alone. Seconds per cell instead of minutes; the live runs are what the
bar counts, and `--simulate` on them says whether replay agrees (docs/live-vs-replay.md).

    .venv/bin/python scripts/bar_cells.py --trace ../shared/traces/azure2019-d01-sample1000 marl marl:lag=off
    .venv/bin/python scripts/bar_cells.py ... --startup 0.04s --only periodic marl   # this box's process start-ups

Each cell prints cold starts, their ratio to the gateway alone's (the bar: at most 0.5), and idle GB-s against the
gateway alone's. Reports go to --out (one JSON per cell and policy), which is kept and reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SELECTIONS = {"default": None,
              "periodic": "5f4de4d3,003a9666,f555086a,04bb60c9",
              "bursty": "c21dffbc,f225874d,3c1af6cd,98aa440d",
              "busy": "edfecd92,ccb32589,b7ce505a,a93b4a28"}


def cells() -> list[tuple[str, str, list[str]]]:
    """(selection, run, loadtest options) of every cell. The default selection has no 10-minute cells (its rate is
    above the load test's bounds over 600:900)."""
    out = [("default", "120 s", ["--duration", "120"]),
           ("default", "120 s, warm-up 30m", ["--minutes", "30:60", "--warmup", "30m", "--duration", "60"])]
    for name, functions in SELECTIONS.items():
        if functions is None:
            continue
        sel = ["--functions", functions]
        out += [(name, "120 s", [*sel, "--minutes", "600:630", "--duration", "120"]),
                (name, "120 s, warm-up 30m", [*sel, "--minutes", "600:630", "--warmup", "30m", "--duration", "120"]),
                (name, "10 min", [*sel, "--minutes", "600:900", "--duration", "600"]),
                (name, "10 min, warm-up 30m", [*sel, "--minutes", "600:900", "--warmup", "30m", "--duration", "600"])]
    return out


def predict(trace: str, out: Path, selection: str, run: str, options: list[str], policy: str,
            startup: str | None) -> dict:
    """The `--simulate-only` report of one cell under `policy` (read from `out` if it is there)."""
    tag = "".join(c if c.isalnum() else "_" for c in f"{selection}-{run}-{policy}-{startup or 'default'}")
    path = out / f"{tag}.json"
    if not path.exists():
        cmd = [sys.executable, "-m", "prewarmer.cli", "loadtest", "--trace", trace, "--compare", policy,
               "--simulate-only", "--quiet", "--json", str(path), *options,
               *(["--startup", startup] if startup else [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())["simulated"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("policies", nargs="+", help="policy specs (as for prewarmer loadtest --compare)")
    p.add_argument("--trace", required=True, help="the shared 2019 day (azure2019-d01-sample1000)")
    p.add_argument("--out", default="build/bar-cells", help="reports, kept and reused (build/bar-cells)")
    p.add_argument("--startup", help="the start-up to assume, real seconds (loadtest --startup; default 0.3s)")
    p.add_argument("--only", choices=sorted(SELECTIONS), action="append", help="these selections only")
    p.add_argument("--jobs", type=int, default=2, help="cells replayed at once (2)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in cells() if not args.only or c[0] in args.only]
    jobs = [(c, pol) for c in chosen for pol in args.policies]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        docs = list(pool.map(lambda j: predict(args.trace, out, *j[0], j[1], args.startup), jobs))
    rows: dict[tuple[str, str], dict] = {}
    for ((selection, run, _), policy), doc in zip(jobs, docs, strict=True):
        row = rows.setdefault((selection, run), {"gateway": doc["baseline"]})
        row[policy] = doc["prewarmer"]
    print("| selection | run | gateway alone | " + " | ".join(f"`{p}`" for p in args.policies) + " |")
    print("|---|---|---:|" + "---:|" * len(args.policies))
    for (selection, run), row in rows.items():
        base = row["gateway"]
        cold0, idle0 = base["predicted_cold_starts"], base["predicted_wasted_gb_s"]
        cells_ = []
        for policy in args.policies:
            d = row[policy]
            cold, idle = d["predicted_cold_starts"], d["predicted_wasted_gb_s"]
            ratio = cold / cold0 if cold0 else float("inf") if cold else 1.0
            text = f"{cold} (×{ratio:.2f}) {idle / idle0:.2f}" if idle0 else f"{cold} (×{ratio:.2f})"
            cells_.append(f"**{text}**" if ratio <= 0.5 else text)
        print(f"| {selection} | {run} | {cold0} | " + " | ".join(cells_) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
