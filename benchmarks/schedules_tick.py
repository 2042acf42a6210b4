"""Cost of warm-floor rules at 10k functions (docs/schedules.md): matching rules to functions, the floor at a tick,
and `ScheduledPolicy.decide` over a policy that does nothing itself (so the wrapper's own cost is what is timed).

    .venv/bin/python benchmarks/schedules_tick.py [--functions 10000] [--rules 100] [--ticks 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from prewarmer.observation import Observation
from prewarmer.policies.keepalive import KeepAlivePolicy
from prewarmer.policies.scheduled import ScheduledPolicy
from prewarmer.schedules import RuleIndex, parse_rules
from prewarmer.workloads.base import FunctionTable

EPOCH = 1.717e9  # a Monday in June 2024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=10_000)
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=300)
    args = ap.parse_args()
    n = args.functions
    names = [f"fn-{i:05d}" for i in range(n)]
    # Each rule: a name prefix (1% of the functions), a daily window in Berlin time and a quarter-hourly one on
    # weekdays, and a cold-start target (so every function is steered: the wrapper's worst case).
    rules = parse_rules({"rules": [{"selector": {"matchNames": [f"fn-{k:02d}*"]}, "schedule": [
        {"cron": f"{k % 60} {k % 24} * * *", "duration": "3h", "timeZone": "Europe/Berlin", "minWarm": 1 + k % 3},
        {"cron": "*/15 8-18 * * 1-5", "duration": "10m", "minWarm": 1}], "target": {"coldStartPct": 2.0}}
        for k in range(args.rules)]})
    t = time.perf_counter()
    index = RuleIndex(rules, 70.0)
    index.bind(names, [{}] * n)
    print(f"bind {args.rules} rules to {n} functions: {1e3 * (time.perf_counter() - t):.1f} ms")
    t = time.perf_counter()
    index.floor(EPOCH)
    print(f"first floor (a week of every entry's windows): {1e3 * (time.perf_counter() - t):.1f} ms")
    ticks = EPOCH + np.arange(1, 1441) * 60.0
    t = time.perf_counter()
    for x in ticks:
        index.floor(float(x))
    print(f"floor per tick, a day of minute ticks: {1e6 * (time.perf_counter() - t) / len(ticks):.0f} us")

    table = FunctionTable(names=names, apps=np.arange(n, dtype=np.int32), app_names=names,
                          memory_mb=np.full(n, 256.0), cold_start_s=np.full(n, np.nan))
    zero = np.zeros(n, np.int64)

    def observation(now: float) -> Observation:
        arrivals = np.random.default_rng(int(now)).poisson(0.5, n)
        return Observation(now=now, dt=60.0, arrivals=arrivals, cold_starts=(arrivals > 1).astype(np.int64),
                           completions=arrivals, timed_out=zero, alive=zero + 1, starting=zero, busy=zero,
                           idle_warm=zero + 1, in_flight=zero, peak_in_flight=arrivals, concurrency=np.zeros(n),
                           wasted_gb_s=np.full(n, 10.0), busy_gb_s=np.zeros(n), memory_mb=np.full(n, 256.0),
                           idle_time_func=np.zeros(0, np.int32), idle_time_s=np.zeros(0), epoch_s=EPOCH)

    observations = [observation(60.0 * k) for k in range(1, args.ticks + 1)]
    for label, policy in (("fixed", KeepAlivePolicy()), ("fixed under the rules", ScheduledPolicy(KeepAlivePolicy(),
                                                                                                    rules))):
        policy.reset(table, 0.0)
        t = time.perf_counter()
        for o in observations:
            policy.decide(o.now, o)
        print(f"decide, {label}: {1e3 * (time.perf_counter() - t) / len(observations):.2f} ms per tick")


if __name__ == "__main__":
    main()
