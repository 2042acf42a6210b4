"""Profile one sidecar control tick (`prewarmer bench tick`'s setup) and break it into phases.

    taskset -c 1 .venv/bin/python benchmarks/profile_tick.py --policy marl --functions 10000 [--pyinstrument]

Phases (median ms over the timed ticks, wall clock and this thread's CPU time: on a shared box the CPU
time is the steadier of the two): observe (LiveObserver.observe), decide (the policy) and, for marl, its
parts (shadow hybrid, peak history, forecaster inputs and forward pass, features, actor), and the warm
fleet's apply (advance: replaying the reported requests through the engine; then apply_actions) and
desired. With --pyinstrument the timed ticks also run under pyinstrument (pip install pyinstrument; not a
dependency) and its call tree is printed.
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

    from prewarmer.forecast import peak as peak_mod
    from prewarmer.registry import policy_factory
    from prewarmer.sidecar.agent import ShardAgent

    torch.set_num_threads(1)
    n = args.functions
    agent = ShardAgent(0, policy_factory(args.policy), 0.0)
    agent.add_functions(0.0, [f"f{i}" for i in range(n)], ["ns"] * n, [256.0] * n)
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)

    def timed(obj, name, label):
        orig = getattr(obj, name)

        def wrapper(*a, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return orig(*a, **k)
            finally:
                wall[label].append((time.perf_counter() - t0) * 1e3)
                cpu[label].append((time.thread_time() - c0) * 1e3)
        setattr(obj, name, wrapper)

    timed(agent.observer, "observe", "observe")
    policy = agent.policy
    timed(policy, "decide", "decide")
    if hasattr(policy, "peaks"):  # marl: its parts
        timed(policy.hybrid, "decide", "  shadow hybrid")
        timed(policy.peaks, "update", "  peak history update")
        timed(peak_mod, "inputs", "  forecaster inputs")
        timed(peak_mod, "_in_instances", "  forecaster forward")
        timed(policy.features, "update", "  features")
        timed(policy, "act", "  actor")
    timed(agent.fleet.state, "advance", "fleet.state.advance")
    timed(agent.fleet.state, "apply", "fleet.state.apply")
    timed(agent.fleet, "apply", "fleet.apply (advance + apply)")
    timed(agent.fleet, "desired", "fleet.desired")

    rng = np.random.default_rng(0)
    tick_s = policy.tick_s or 60.0
    profiler = None
    total, total_cpu = [], []
    for k in range(1, args.repeat + 4):
        m = n * 5
        f = rng.integers(0, n, m)
        t = np.sort(rng.uniform((k - 1) * tick_s, k * tick_s, m))
        agent.ingest(f, t, np.full(m, 0.1), np.zeros(m), np.zeros(m, np.int64), np.full(m, 200))
        if k == 4:
            for d in (wall, cpu):
                for v in d.values():
                    v.clear()
            if args.pyinstrument:
                from pyinstrument import Profiler
                profiler = Profiler(interval=0.0002)
                profiler.start()
        t1, c1 = time.perf_counter(), time.thread_time()
        agent.tick(k * tick_s, np.ones(n, np.int64), np.ones(n, np.int64))
        agent.desired(k * tick_s, agent.startup_s() + 1.0)
        if k >= 4:
            total.append((time.perf_counter() - t1) * 1e3)
            total_cpu.append((time.thread_time() - c1) * 1e3)
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    print(f"{args.policy} {n} functions: tick + desired median {np.median(total):.1f} ms wall, "
          f"{np.median(total_cpu):.1f} ms CPU")
    for label, v in wall.items():
        if not v:  # a phase that did not run in the timed ticks (a policy without a control period decides once)
            continue
        print(f"  {label:32s} {np.median(v):8.2f} ms wall {np.median(cpu[label]):8.2f} ms CPU")


if __name__ == "__main__":
    main()
