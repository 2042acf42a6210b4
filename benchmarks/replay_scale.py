"""Replay at the full trace's scale: a streamed azure-like workload of 50k functions x 14 days.

    .venv/bin/python benchmarks/replay_scale.py --functions 50000 --days 14 --rate-scale 0.01 \\
        --policy fixed --workers 1,2 [--engine ray] [--json OUT]

Each worker count runs in a fresh child process (its own session, killed at --timeout-s) so that peak
RSS figures are its own: the driver's, and every worker's (the shard's process: forked worker or Ray
worker). The workload is `AzureLikeStream` (generated block by block while replaying), so memory follows
the functions and the simulated rate, not the 14 days. `--rate-scale` scales the HTTP and bursty rates
(timers and rare calls keep theirs): at 1.0 the 50k x 14 d mix is ~1.6e10 invocations, hours on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> dict:
    from prewarmer.registry import policy_factory
    from prewarmer.sim.replay import ReplayConfig, replay
    from prewarmer.workloads.synthetic import AzureLikeStream, azure_like

    warm = azure_like(n_functions=5, duration_s=600, seed=1)  # load the compiled engine before timing
    replay(warm, policy_factory(args.policy), ReplayConfig())
    t0 = time.perf_counter()
    duration_s = args.days * 86400 + args.hours * 3600
    workload = AzureLikeStream(args.functions, duration_s, seed=args.seed, rate_scale=args.rate_scale)
    t1 = time.perf_counter()
    rss_after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats: list[dict] = []
    result = replay(workload, policy_factory(args.policy), ReplayConfig(chunk_s=args.chunk_s),
                    workers=int(args.workers), engine=args.engine, stats=stats,
                    progress=ProgressLines(args.progress_s, f"workers={args.workers}"))
    t2 = time.perf_counter()
    m = result.metrics()
    if args.engine == "ray":
        from prewarmer.sim import ray_engine

        ray_engine.shutdown()
    return {"functions": args.functions, "days": args.days, "hours": args.hours, "rate_scale": args.rate_scale,
            "policy": args.policy, "workers": int(args.workers), "engine": args.engine, "chunk_s": args.chunk_s,
            "build_s": t1 - t0, "replay_s": t2 - t1, "invocations": m["invocations"],
            "invocations_per_s": m["invocations"] / (t2 - t1), "cold_start_rate": m["cold_start_rate"],
            "peak_memory_gb": m["peak_memory_gb"], "rss_driver_after_build_mb": rss_after_build,
            "rss_driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "shards": stats}


class ProgressLines:
    """A line on stderr every `every_s` seconds: invocations replayed so far and the rate since the start (a
    full-volume run takes hours; the total is not known ahead of a streamed workload, so no bar)."""

    def __init__(self, every_s: float, label: str) -> None:
        self.every_s, self.label = every_s, label
        self.done = 0
        self.t0 = self.last = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.every_s > 0 and now - self.last >= self.every_s:
            self.last = now
            print(f"[replay_scale {self.label}] {self.done:,} invocations in {now - self.t0:.0f} s "
                  f"({self.done / (now - self.t0):,.0f}/s)", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--functions", type=int, default=50000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--hours", type=float, default=0.0, help="added to --days")
    p.add_argument("--rate-scale", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--policy", default="fixed")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--engine", choices=["processes", "ray"], default="processes")
    p.add_argument("--chunk-s", type=float, default=900.0, help="replay chunk (arrivals held at once)")
    p.add_argument("--progress-s", type=float, default=60.0, help="seconds between progress lines (0: none)")
    p.add_argument("--timeout-s", type=float, default=2400.0, help="per worker count")
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        cmd = [sys.executable, __file__, "--child", "--functions", str(args.functions), "--days", str(args.days),
               "--hours", str(args.hours), "--rate-scale", str(args.rate_scale), "--seed", str(args.seed),
               "--policy", args.policy, "--workers", str(w), "--engine", args.engine, "--chunk-s", str(args.chunk_s),
               "--progress-s", str(args.progress_s)]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's session: its forked workers too
            proc.communicate()
            print(f"workers={w}: timed out after {args.timeout_s:.0f} s", flush=True)
            rows.append({"workers": w, "timed_out_s": args.timeout_s})
            continue
        if proc.returncode != 0:
            print(f"workers={w}: failed (exit {proc.returncode})", flush=True)
            rows.append({"workers": w, "failed": proc.returncode})
            continue
        r = json.loads(out.strip().splitlines()[-1])
        r["wall_s"] = time.perf_counter() - t
        rows.append(r)
        per_worker = ", ".join(f"{s['peak_rss_mb']:.0f}" for s in r["shards"])
        print(f"workers={w} ({r['engine']}): {r['invocations']:,} invocations in {r['replay_s']:.0f} s replay "
              f"({r['invocations_per_s']:,.0f}/s), build {r['build_s']:.1f} s, wall {r['wall_s']:.0f} s; "
              f"peak RSS driver {r['rss_driver_mb']:.0f} MB, per worker [{per_worker}] MB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}, "runs": rows},
                      f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
