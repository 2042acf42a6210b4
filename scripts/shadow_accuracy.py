#!/usr/bin/env python3
"""How close is `marl`'s estimate of what hybrid would have idled (`marl.shadow_hybrid_idle`) to what hybrid idles?

`waste_target` and the cold-share guard's `fair_budget` compare the fleet's idle GB-s with that estimate, made each
tick from the tick's observation alone. Here hybrid itself is replayed on each held-out fold (evaluation minutes),
the estimate is summed over its own ticks, and the two are compared: over the fold, and by how often the
functions are invoked (below 1, 1-10, above 10 calls a minute), with the last instance's and the scale-out's
parts of the estimate apart.

    .venv/bin/python scripts/shadow_accuracy.py --trace ../shared/traces/azure2019-d01-sample1000 --folds 4
"""

from __future__ import annotations

import argparse

import numpy as np

from prewarmer.actions import Actions
from prewarmer.agents.marl import shadow_hybrid_idle_parts
from prewarmer.agents.train import window
from prewarmer.observation import Observation
from prewarmer.policies.hybrid import HybridHistogramPolicy
from prewarmer.sim import engine as E
from prewarmer.sim.replay import ReplayConfig, replay
from prewarmer.workloads.base import MinuteCountWorkload, Workload
from prewarmer.workloads.detect import open_trace, parse_minutes
from prewarmer.workloads.folds import held_out

RATE_CLASSES = ((0.0, 1.0), (1.0, 10.0), (10.0, np.inf))  # calls a minute


class EstimatingHybrid(HybridHistogramPolicy):
    """Hybrid, summing per function the two parts of `shadow_hybrid_idle` over its own ticks, under the windows
    in force during each tick (as `marl` does)."""

    def reset(self, functions, now: float) -> Actions:
        actions = super().reset(functions, now)
        self.in_force = self.current()
        self.last = np.zeros(len(functions))
        self.scale_out = np.zeros(len(functions))
        return actions

    def decide(self, now: float, obs: Observation) -> Actions:
        last, scale_out = shadow_hybrid_idle_parts(obs, self.in_force)
        self.last += last
        self.scale_out += scale_out
        actions = super().decide(now, obs)
        self.in_force = self.current()
        return actions


def measure(workload: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """Per function: hybrid's real idle GB-s and the estimate's two parts, over one replay of `workload`."""
    policies: list[EstimatingHybrid] = []

    def make() -> EstimatingHybrid:
        policies.append(EstimatingHybrid())
        return policies[-1]

    result = replay(workload, make, ReplayConfig(seed=seed), workers=1)
    (policy,) = policies
    return {"real": result.fs[:, E.S_WASTE].copy(), "last": policy.last, "scale_out": policy.scale_out}


def table(workload: MinuteCountWorkload, m: dict[str, np.ndarray]) -> list[str]:
    rate = workload.counts.sum(axis=1) / workload.counts.shape[1]
    rows = []
    for name, sel in [("all", np.ones(len(rate), bool))] + [
            (f"{lo:g}-{hi:g} calls/min", (rate >= lo) & (rate < hi)) for lo, hi in RATE_CLASSES]:
        real, last, out = (float(m[k][sel].sum()) for k in ("real", "last", "scale_out"))
        est = last + out
        ratio = est / real if real else float("nan")
        rows.append(f"| {name} | {int(sel.sum())} | {real:,.0f} | {est:,.0f} | {ratio:.3f} | {last:,.0f} "
                    f"| {out:,.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", required=True)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--only", help="folds to measure, e.g. 0,2 (default: all)")
    ap.add_argument("--minutes", default="720:1440", help="evaluation minutes (default 720:1440)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lo, hi = parse_minutes(args.minutes)
    full = open_trace(args.trace)
    which = [int(x) for x in args.only.split(",")] if args.only else range(args.folds)
    print("| fold / functions | n | hybrid's idle GB-s | estimate | estimate / real | last instance | scale-out |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for fold in which:
        w = window(held_out(full, args.folds, fold), lo, hi)
        for row in table(w, measure(w, args.seed)):
            print(row.replace("| ", f"| {fold}: ", 1), flush=True)


if __name__ == "__main__":
    main()
