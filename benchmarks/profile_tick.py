"""Profile one sidecar control tick (`prewarmer bench tick`'s setup) and break it into phases.

    taskset -c 1 .venv/bin/python benchmarks/profile_tick.py --policy marl --functions 10000 [--pyinstrument]

Phases (median ms over the timed ticks): observe (LiveObserver.observe), decide (the policy), and the
warm fleet's apply (advance: replaying the reported requests through the engine; then apply_actions)
and desired. With --pyinstrument the timed ticks also run under pyinstrument (pip install pyinstrument;
not a dependency) and its call tree is printed.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="marl")
    ap.add_argument("--functions", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--pyinstrument", action="store_true")
    args = ap.parse_args()

    import torch

    from prewarmer.registry import policy_factory
    from prewarmer.sidecar import fleet as fleet_mod
    from prewarmer.sidecar.agent import ShardAgent

    torch.set_num_threads(1)
    n = args.functions
    agent = ShardAgent(0, policy_factory(args.policy), 0.0)
    agent.add_functions(0.0, [f"f{i}" for i in range(n)], ["ns"] * n, [256.0] * n)
    times: dict[str, list[float]] = defaultdict(list)

    def timed(obj, name, label):
        orig = getattr(obj, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                times[label].append((time.perf_counter() - t0) * 1e3)
        setattr(obj, name, wrapper)

    timed(agent.observer, "observe", "observe")
    timed(agent.policy, "decide", "decide")
    timed(agent.fleet.state, "advance", "fleet.state.advance")
    timed(agent.fleet.state, "apply", "fleet.state.apply")
    timed(agent.fleet, "apply", "fleet.apply (advance + apply)")
    timed(agent.fleet, "desired", "fleet.desired")
    del fleet_mod

    rng = np.random.default_rng(0)
    tick_s = agent.policy.tick_s or 60.0
    profiler = None
    total = []
    for k in range(1, args.repeat + 4):
        m = n * 5
        f = rng.integers(0, n, m)
        t = np.sort(rng.uniform((k - 1) * tick_s, k * tick_s, m))
        agent.ingest(f, t, np.full(m, 0.1), np.zeros(m), np.zeros(m, np.int64), np.full(m, 200))
        if k == 4:
            for v in times.values():
                v.clear()
            if args.pyinstrument:
                from pyinstrument import Profiler
                profiler = Profiler(interval=0.0002)
                profiler.start()
        t1 = time.perf_counter()
        agent.tick(k * tick_s, np.ones(n, np.int64), np.ones(n, np.int64))
        agent.desired(k * tick_s, agent.startup_s() + 1.0)
        if k >= 4:
            total.append((time.perf_counter() - t1) * 1e3)
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    print(f"{args.policy} {n} functions: tick + desired median {np.median(total):.1f} ms")
    for label, v in times.items():
        print(f"  {label:32s} {np.median(v):8.2f} ms")


if __name__ == "__main__":
    main()
