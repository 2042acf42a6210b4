"""Trace replay: drives one policy over a workload's arrivals and collects the BENCHMARKS.md metrics.

The loop stops the compiled engine at every control tick of the policy (all functions decide at
once) and every sample interval (warm-instance time series). Without a memory cap functions are
independent, so long runs split the functions across workers and merge the results: local worker
processes (`engine="processes"`) or Ray tasks (`engine="ray"`, `prewarmer.sim.ray_engine`). Both
engines run the same shards with the same per-function seeds and merge them in the same way, so
their reports are identical.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from prewarmer.platform import begin, tick
from prewarmer.policies.base import Policy
from prewarmer.sim import engine as E
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.result import ReplayConfig, SimResult, pick_top
from prewarmer.workloads.base import Workload

__all__ = ["ReplayConfig", "SimResult", "run_shard", "replay", "shard_functions", "default_workers", "ENGINES"]

#: Where the shards of a parallel replay run.
ENGINES = ("processes", "ray")


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


def _shard_worker(i: int) -> tuple[SimResult, dict]:
    w = _WORK
    return run_shard_measured(w["workload"], w["make_policy"], w["cfg"], w["shards"][i], w["tops"][i], i,
                              progress=lambda n: w["counter"].__setitem__(i, w["counter"][i] + n))


def run_shard_measured(workload: Workload, make_policy: Callable[[], Policy], cfg: ReplayConfig, idx: np.ndarray,
                       top: np.ndarray, shard: int,
                       progress: Callable[[int], None] | None = None) -> tuple[SimResult, dict]:
    """One shard of a parallel replay (simulator kept for `extend_to`), with what it cost the worker."""
    t = time.perf_counter()
    result = run_shard(workload, make_policy(), cfg, idx, top, progress=progress, keep_state=True)
    return result, {"shard": shard, "functions": len(idx), "invocations": int(result.fi[:, E.F_ARRIVALS].sum()),
                    "wall_s": time.perf_counter() - t, "pid": os.getpid(),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def shard_functions(workload: Workload, workers: int) -> list[np.ndarray]:
    """Split functions into `workers` groups of similar invocation counts (longest first, greedy).

    A workload generated in groups of consecutive functions (`group_size`, e.g. `AzureLikeStream`) is
    split in whole groups, so that no worker generates arrivals another worker replays."""
    n = len(workload.functions)
    counts = getattr(workload, "counts", None)
    unit = 1
    if counts is not None:
        weight = counts.sum(axis=1).astype(float) + 1.0
    elif hasattr(workload, "function_weights"):  # streamed workloads: expected invocations per function
        weight = np.asarray(workload.function_weights(), float) + 1.0
        unit = max(1, int(getattr(workload, "group_size", 1)))
    else:
        weight = np.ones(n)
    if unit > 1 and n // unit >= 2 * workers:
        weight = np.add.reduceat(weight, np.arange(0, n, unit))
    else:
        unit = 1
    load = np.zeros(workers)
    groups: list[list[int]] = [[] for _ in range(workers)]
    for u in np.argsort(-weight, kind="stable"):
        g = int(np.argmin(load))
        groups[g].extend(range(int(u) * unit, min(n, (int(u) + 1) * unit)))
        load[g] += weight[u]
    return [np.sort(np.asarray(g, np.int64)) for g in groups if g]


def parallel(workload: Workload, cfg: ReplayConfig, workers: int) -> bool:
    """Whether a replay with `workers` splits the functions (else it runs as one shard).

    A memory cap couples all functions (they compete for the same memory), so a capped replay is
    never split."""
    return workers > 1 and cfg.memory_cap_gb is None and len(workload.functions) >= 2 * workers


def plan_shards(workload: Workload, cfg: ReplayConfig, workers: int) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                                np.ndarray]:
    """The shards of a parallel replay, the sampled busiest functions of each, and of the whole run."""
    shards = shard_functions(workload, workers)
    top_all = pick_top(workload, np.arange(len(workload.functions)), cfg.top_functions)
    return shards, [np.intersect1d(top_all, s) for s in shards], top_all


def merge_shards(parts: list[SimResult], cfg: ReplayConfig, top_all: np.ndarray) -> SimResult:
    """Merge shard results (each with its simulator kept) as one process running all functions would report."""
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


def replay(workload: Workload, make_policy: Callable[[], Policy], cfg: ReplayConfig, workers: int = 1,
           progress: Callable[[int], None] | None = None, engine: str = "processes", address: str | None = None,
           stats: list[dict] | None = None) -> SimResult:
    """Replay with `workers` workers (functions are independent unless a memory cap is set).

    `engine="processes"` forks local worker processes; `engine="ray"` runs the same shards as Ray tasks
    (a local Ray instance with `workers` CPUs, or the cluster at `address`), with identical results.
    `stats`, if given, receives one dict per shard: functions, invocations, wall_s, peak_rss_mb, pid.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    if address is not None and engine != "ray":
        raise ValueError("an address is for the ray engine")
    if engine == "ray":
        from prewarmer.sim import ray_engine

        return ray_engine.replay(workload, make_policy, cfg, workers, progress=progress, address=address,
                                 stats=stats)
    if not parallel(workload, cfg, workers):
        t = time.perf_counter()
        result = run_shard(workload, make_policy(), cfg, progress=progress)
        if stats is not None:
            stats.append({"shard": 0, "functions": len(workload.functions),
                          "invocations": int(result.fi[:, E.F_ARRIVALS].sum()), "wall_s": time.perf_counter() - t,
                          "pid": os.getpid(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        return result
    shards, tops, top_all = plan_shards(workload, cfg, workers)
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
            done = [f.result() for f in futures]
            if progress is not None and sum(counter) > seen:
                progress(sum(counter) - seen)
    finally:
        _WORK.clear()
    if stats is not None:
        stats.extend(st for _, st in done)
    return merge_shards([p for p, _ in done], cfg, top_all)


def _wait_any(futures, timeout: float) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
