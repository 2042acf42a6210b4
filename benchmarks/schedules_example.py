"""Warm-floor rules on the shared Azure day (docs/schedules.md): cold starts and idle memory with and without them.

Two rule sets, each replayed around several policies next to the plain policy:
- floor: the K functions most invoked in trace minutes [0, 480) (the night before the window, so the choice does
  not look at what is measured) each get, from 08:00 for 10 hours (`0 8 * * *`, UTC: trace minute m is 1970-01-01
  00:00 UTC + m minutes), a floor of the instances their busiest (`--night-stat max`) or median night minute
  kept busy on average (invocations x median duration / 60 s, rounded up) plus `--spare` (1), at least
  `--min-warm` (2): one rule per function.
  Reported: all functions over the day, and the chosen functions within the window (trace minutes 480..1080:
  cold starts and idle GB-s from the per-tick observations).
- target: every function `coldStartPct` (default 2%), steered (docs/schedules.md), with `--budget` GB-s per hour
  if given: the p75 of per-function cold-start % over the day, and the waste.

    .venv/bin/python benchmarks/schedules_example.py [--trace DIR] [--top 20] [--spare 1] [--policy fixed ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from prewarmer.platform import begin, tick
from prewarmer.registry import policy_factory
from prewarmer.schedules import parse_rules
from prewarmer.sim import engine as E
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.replay import ReplayConfig
from prewarmer.workloads import detect

TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "azure2019-d01-sample1000"
WINDOW = (480.0 * 60, 1080.0 * 60)


def run(workload, spec: str, rules, chosen: np.ndarray) -> dict:
    """One replay in this process, tick by tick, so that cold starts inside the window can be counted."""
    policy = policy_factory(spec, rules=rules)()
    env = ReplayEnv(workload, ReplayConfig(), tick_s=policy.tick_s or 60.0)
    env.reset()
    begin(policy, env, env.functions, 0.0)
    in_window = np.zeros(len(workload.functions))
    arrivals_in_window = np.zeros(len(workload.functions))
    waste_in_window = 0.0
    t = time.perf_counter()
    for now in env.tick_times():
        d = tick(policy, env, now)
        if WINDOW[0] < now <= WINDOW[1]:
            in_window += d.obs.cold_starts
            arrivals_in_window += d.obs.arrivals
            waste_in_window += float(d.obs.wasted_gb_s[chosen].sum())
    env.finish()
    m = env.result().metrics()
    r = env.result()
    return {"cold_starts": m["cold_starts"], "cold_start_rate_pct": 100 * m["cold_start_rate"],
            "p75_function_cold_start_pct": m["p75_function_cold_start_pct"], "wasted_gb_s": m["wasted_gb_s"],
            "chosen_cold_in_window": int(in_window[chosen].sum()),
            "chosen_arrivals_in_window": int(arrivals_in_window[chosen].sum()),
            "chosen_waste_in_window_gb_s": waste_in_window,
            "chosen_cold_day": int(r.fi[chosen, E.F_COLD].sum()), "wall_s": time.perf_counter() - t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--min-warm", type=int, default=2)
    ap.add_argument("--spare", type=int, default=1)
    ap.add_argument("--night-stat", choices=("max", "median"), default="max")
    ap.add_argument("--budget", type=float, help="idle GB-s per hour per function, with the target")
    ap.add_argument("--sets", default="floor,target", help="which rule sets to run next to the plain policy")
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--policy", action="append", default=[])
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    workload = detect.open_trace(args.trace)
    counts = workload.counts[:, :480].sum(axis=1)
    chosen = np.sort(np.argsort(-counts, kind="stable")[:args.top])
    names = [workload.functions.names[i] for i in chosen]
    night = workload.counts[chosen, :480]
    per_minute = night.max(axis=1) if args.night_stat == "max" else np.median(night, axis=1)
    busy = per_minute * workload.duration_pct_ms[chosen, 3] / 60_000.0
    min_warm = np.maximum(np.ceil(busy).astype(int) + args.spare, args.min_warm)
    floor = parse_rules({"rules": [{"selector": {"matchNames": [name]}, "schedule": [
        {"cron": "0 8 * * *", "duration": "10h", "timeZone": "UTC", "minWarm": int(m)}]}
        for name, m in zip(names, min_warm, strict=True)]})
    print(f"floors of the {args.top} functions: {sorted(min_warm.tolist())}", file=sys.stderr)
    steer = {"selector": {}, "target": {"coldStartPct": args.target}}
    if args.budget:
        steer["budget"] = {"idleGbSecondsPerHour": args.budget}
    target = parse_rules({"rules": [steer]})
    sets = [("plain", None)] + [(k, {"floor": floor, "target": target}[k]) for k in args.sets.split(",") if k]
    out = {}
    for spec in args.policy or ["fixed", "hybrid", "marl"]:
        for label, rules in sets:
            out[f"{spec} {label}"] = row = run(workload, spec, rules, chosen)
            print(f"{spec:>8} {label:>6}: cold {row['cold_starts']:>7,} ({row['cold_start_rate_pct']:.3f}%), "
                  f"p75 {row['p75_function_cold_start_pct']:6.2f}%, waste {row['wasted_gb_s']:>12,.0f} GB-s | "
                  f"chosen in window: cold {row['chosen_cold_in_window']:>5,} of "
                  f"{row['chosen_arrivals_in_window']:,}, waste {row['chosen_waste_in_window_gb_s']:>10,.0f} GB-s "
                  f"({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"top": args.top, "min_warm": min_warm.tolist(), "target": args.target,
                                               "chosen": names, "runs": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
