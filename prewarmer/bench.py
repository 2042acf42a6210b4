"""`prewarmer bench replay`: simulated invocations per wall-second and peak RSS, per policy and worker count.

Each measurement runs in a fresh child process so that its peak RSS is its own. The compiled
engine is warmed (numba cache) before timing; loading the trace is timed separately. The full trace's
scale (a streamed azure-like workload of 50k functions x 14 days, processes or Ray) is measured by
`benchmarks/replay_scale.py`.
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

from rich.table import Table

from prewarmer.console import wide_console

DEFAULT_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "azure2019-d01-sample1000"


def _child(trace: str, spec: str, workers: int) -> dict:
    from prewarmer.registry import policy_factory
    from prewarmer.sim.replay import ReplayConfig, replay
    from prewarmer.workloads.detect import open_trace

    t0 = time.perf_counter()
    workload = open_trace(trace)
    t1 = time.perf_counter()
    shards: list[dict] = []
    result = replay(workload, policy_factory(spec), ReplayConfig(), workers=workers, stats=shards)
    t2 = time.perf_counter()
    m = result.metrics()
    return {"policy": spec, "workers": workers, "load_s": t1 - t0, "replay_s": t2 - t1, "wall_s": t2 - t0,
            "invocations": m["invocations"], "cold_start_rate": m["cold_start_rate"],
            "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            # each shard's own process (the main one with one worker): peak RSS per worker
            "rss_per_worker_mb": [round(s["peak_rss_mb"], 1) for s in shards]}


def _warm_up() -> float:
    """Compile (or load from cache) the engine so timings measure simulation, not compilation."""
    from prewarmer.registry import policy_factory
    from prewarmer.sim.replay import ReplayConfig, replay
    from prewarmer.workloads.synthetic import azure_like

    t = time.perf_counter()
    w = azure_like(n_functions=5, duration_s=600, seed=1)
    for spec in ("fixed", "hybrid", "kpa"):
        replay(w, policy_factory(spec), ReplayConfig())
    return time.perf_counter() - t


def cmd_bench_replay(args: argparse.Namespace) -> int:
    from prewarmer.registry import BASELINES

    trace = args.trace or str(DEFAULT_TRACE)
    if not Path(trace).exists():
        print(f"prewarmer: error: trace not found: {trace} (give --trace PATH)", file=sys.stderr)
        return 2
    specs = args.policy or list(BASELINES)
    workers = [int(w) for w in str(args.workers).split(",")]
    console = wide_console()
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


def cmd_bench_inference(args: argparse.Namespace) -> int:
    """Latency of one marl control tick (features + one batched forward pass + actions) for N functions."""
    import numpy as np
    import torch

    from prewarmer.agents.action_space import N_CHOICES
    from prewarmer.agents.marl import MARLPolicy
    from prewarmer.agents.network import ActorCritic
    from prewarmer.observation import Observation
    from prewarmer.workloads.base import FunctionTable

    torch.manual_seed(0)
    console = wide_console()
    table = Table(title="marl control tick, one core (median of repeats)")
    for c in ("functions", "tick ms (median)", "p90 ms", "features + actions ms", "forward ms"):
        table.add_column(c, justify="right")
    rng = np.random.default_rng(0)
    for n in [int(x) for x in str(args.functions).split(",")]:
        model = ActorCritic(N_CHOICES) if args.random_model else None
        policy = MARLPolicy(model=model)
        fns = FunctionTable(names=[f"f{i}" for i in range(n)], apps=np.arange(n, dtype=np.int32),
                            app_names=[f"f{i}" for i in range(n)], memory_mb=np.full(n, 256.0),
                            cold_start_s=np.full(n, np.nan))
        policy.reset(fns, 0.0)
        ticks, feat_ms, fwd_ms = [], [], []
        for k in range(args.repeat + 5):
            arr = rng.poisson(0.5, n)
            z = np.zeros(n, np.int64)
            obs = Observation(now=60.0 * (k + 1), dt=60.0, arrivals=arr, cold_starts=z, completions=arr,
                              timed_out=z, alive=z + 1, starting=z, busy=z, idle_warm=z + 1, in_flight=z,
                              peak_in_flight=z,
                              concurrency=np.zeros(n), wasted_gb_s=np.zeros(n), busy_gb_s=np.zeros(n),
                              memory_mb=np.full(n, 256.0), idle_time_func=np.empty(0, np.int32),
                              idle_time_s=np.empty(0), startup_s=np.ones(n))
            t0 = time.perf_counter()
            policy.decide(obs.now, obs)  # the whole tick, as the simulator and the sidecar call it
            t1 = time.perf_counter()
            policy.act(policy.last["features"])  # the forward pass alone, on the same features
            t2 = time.perf_counter()
            if k >= 5:
                ticks.append((t1 - t0) * 1e3)
                fwd_ms.append((t2 - t1) * 1e3)
                feat_ms.append(ticks[-1] - fwd_ms[-1])
        table.add_row(f"{n:,}", f"{statistics.median(ticks):.2f}", f"{sorted(ticks)[int(0.9 * len(ticks))]:.2f}",
                      f"{statistics.median(feat_ms):.2f}", f"{statistics.median(fwd_ms):.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
