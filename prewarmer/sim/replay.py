"""Trace replay: drives one policy over a workload's arrivals and collects the BENCHMARKS.md metrics.

The loop stops the compiled engine at every control tick of the policy (all functions decide at
once) and every sample interval (warm-instance time series). Without a memory cap functions are
independent, so long runs split the functions across worker processes and merge the results.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from prewarmer.platform import begin, tick
from prewarmer.policies.base import Policy
from prewarmer.sim import engine as E
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.result import ReplayConfig, SimResult, pick_top
from prewarmer.workloads.base import Workload

__all__ = ["ReplayConfig", "SimResult", "run_shard", "replay", "shard_functions", "default_workers"]


def run_shard(workload: Workload, policy: Policy, cfg: ReplayConfig, idx: np.ndarray | None = None,
              top: np.ndarray | None = None, progress: Callable[[int], None] | None = None,
              keep_state: bool = False) -> SimResult:
    """Replay the functions `idx` (all by default) under `policy` in this process.

    The shard ends at max(horizon, its own last completion); `keep_state` keeps the simulator in the
    result so that `SimResult.extend_to` can carry it on to the end of the whole run.
    """
    env = ReplayEnv(workload, cfg, idx, tick_s=policy.tick_s, top=top, progress=progress)
    env.reset()
    begin(policy, env, env.functions, 0.0)
    for now in env.tick_times():
        tick(policy, env, now)
    env.finish()
    return env.result(events=list(getattr(policy, "events", [])), keep_state=keep_state)


# ---------------------------------------------------------------------- parallel replay
_WORK: dict = {}


def _shard_worker(i: int) -> SimResult:
    w = _WORK
    return run_shard(w["workload"], w["make_policy"](), w["cfg"], w["shards"][i], w["tops"][i],
                     progress=lambda n: w["counter"].__setitem__(i, w["counter"][i] + n), keep_state=True)


def shard_functions(workload: Workload, workers: int) -> list[np.ndarray]:
    """Split functions into `workers` groups of similar invocation counts (longest first, greedy)."""
    n = len(workload.functions)
    counts = getattr(workload, "counts", None)
    weight = counts.sum(axis=1).astype(float) + 1.0 if counts is not None else np.ones(n)
    load = np.zeros(workers)
    groups: list[list[int]] = [[] for _ in range(workers)]
    for f in np.argsort(-weight, kind="stable"):
        g = int(np.argmin(load))
        groups[g].append(int(f))
        load[g] += weight[f]
    return [np.sort(np.asarray(g, np.int64)) for g in groups if g]


def replay(workload: Workload, make_policy: Callable[[], Policy], cfg: ReplayConfig, workers: int = 1,
           progress: Callable[[int], None] | None = None) -> SimResult:
    """Replay with `workers` processes (functions are independent unless a memory cap is set)."""
    if workers <= 1 or cfg.memory_cap_gb is not None or len(workload.functions) < 2 * workers:
        return run_shard(workload, make_policy(), cfg, progress=progress)
    shards = shard_functions(workload, workers)
    top_all = pick_top(workload, np.arange(len(workload.functions)), cfg.top_functions)
    tops = [np.intersect1d(top_all, s) for s in shards]
    ctx = mp.get_context("fork")
    counter = ctx.Array("q", len(shards), lock=False)
    _WORK.update(workload=workload, make_policy=make_policy, cfg=cfg, shards=shards, tops=tops,
                 counter=counter)
    try:
        with ProcessPoolExecutor(len(shards), mp_context=ctx) as pool:
            futures = [pool.submit(_shard_worker, i) for i in range(len(shards))]
            seen = 0
            while not all(f.done() for f in futures):
                _wait_any(futures, 0.2)
                now = sum(counter)
                if progress is not None and now > seen:
                    progress(now - seen)
                    seen = now
            parts = [f.result() for f in futures]
            if progress is not None and sum(counter) > seen:
                progress(sum(counter) - seen)
    finally:
        _WORK.clear()
    # The run ends at max(horizon, last completion) over all functions, as in one process: shards that
    # finished earlier go on holding (and expiring) instances until then.
    t_end = max(p.t_final for p in parts)
    E.seed_engine(cfg.seed)  # start-up draws of prewarms in these tails (random start-up models)
    for p in parts:
        p.extend_to(t_end)
        p.state = None
    merged = SimResult.merge(parts)
    cols = [int(np.flatnonzero(merged.top == t)[0]) for t in top_all]
    merged.top, merged.alive_top = top_all, merged.alive_top[:, cols]
    order = np.argsort(merged.functions)
    merged.functions, merged.fi, merged.fs = merged.functions[order], merged.fi[order], merged.fs[order]
    return merged


def _wait_any(futures, timeout: float) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
