"""`prewarmer bench replay`: simulated invocations per wall-second and peak RSS, per policy and worker count.

Each measurement runs in a fresh child process so that its peak RSS is its own. The compiled
engine is warmed (numba cache) before timing; loading the trace is timed separately.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEFAULT_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "azure2019-d01-sample1000"


def _child(trace: str, spec: str, workers: int) -> dict:
    from prewarmer.policies import policy_factory
    from prewarmer.sim.replay import ReplayConfig, replay
    from prewarmer.workloads.detect import open_trace

    t0 = time.perf_counter()
    workload = open_trace(trace)
    t1 = time.perf_counter()
    result = replay(workload, policy_factory(spec), ReplayConfig(), workers=workers)
    t2 = time.perf_counter()
    m = result.metrics()
    return {"policy": spec, "workers": workers, "load_s": t1 - t0, "replay_s": t2 - t1, "wall_s": t2 - t0,
            "invocations": m["invocations"], "cold_start_rate": m["cold_start_rate"],
            "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _warm_up() -> float:
    """Compile (or load from cache) the engine so timings measure simulation, not compilation."""
    from prewarmer.policies import policy_factory
    from prewarmer.sim.replay import ReplayConfig, replay
    from prewarmer.workloads.synthetic import azure_like

    t = time.perf_counter()
    w = azure_like(n_functions=5, duration_s=600, seed=1)
    for spec in ("fixed", "hybrid", "kpa"):
        replay(w, policy_factory(spec), ReplayConfig())
    return time.perf_counter() - t


def cmd_bench_replay(args: argparse.Namespace) -> int:
    from prewarmer.policies import BASELINES

    trace = args.trace or str(DEFAULT_TRACE)
    if not Path(trace).exists():
        print(f"prewarmer: error: trace not found: {trace} (give --trace PATH)", file=sys.stderr)
        return 2
    specs = args.policy or list(BASELINES)
    workers = [int(w) for w in str(args.workers).split(",")]
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # a table in a log or CI output should not be squeezed to 80 columns
    console.print(f"warm-up (compile or load the engine): {_warm_up():.1f} s")
    rows = []
    for spec in specs:
        for w in workers:
            runs = []
            for _ in range(args.repeat):
                out = subprocess.run([sys.executable, "-m", "prewarmer.bench", trace, spec, str(w)],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"prewarmer: error: benchmark run failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
                    return 1
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            med = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            med["wall_s_all"] = [round(r["wall_s"], 2) for r in runs]
            med["wall_s_median"] = statistics.median(r["wall_s"] for r in runs)
            rows.append(med)
            console.print(f"{spec} workers={w}: {med['wall_s']:.1f} s")
    table = Table(title=f"replay speed: {trace}")
    for c in ("policy", "workers", "invocations", "load s", "replay s", "wall s", "inv/s (wall)",
              "peak RSS main MB", "peak RSS worker MB"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["policy"], str(r["workers"]), f"{r['invocations']:,}", f"{r['load_s']:.2f}",
                      f"{r['replay_s']:.1f}", f"{r['wall_s_median']:.1f}",
                      f"{r['invocations'] / r['wall_s_median']:,.0f}", f"{r['rss_main_mb']:.0f}",
                      f"{r['rss_worker_mb']:.0f}" if r["workers"] > 1 else "-")
    console.print(table)
    by_workers: dict[int, float] = {}
    for r in rows:
        by_workers[r["workers"]] = by_workers.get(r["workers"], 0.0) + r["wall_s_median"]
    for w, total in sorted(by_workers.items()):
        console.print(f"all {len(specs)} policies with {w} worker(s): {total:.1f} s wall in total")
    if args.json:
        Path(args.json).write_text(json.dumps({"trace": trace, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
