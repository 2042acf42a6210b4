"""Trace replay: drives one policy over a workload's arrivals and collects the BENCHMARKS.md metrics.

The loop stops the compiled engine at every control tick of the policy (all functions decide at
once) and every sample interval (warm-instance time series). Without a memory cap functions are
independent, so long runs split the functions across worker processes and merge the results.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from prewarmer.policies.base import Policy
from prewarmer.sim import engine as E
from prewarmer.sim.startup import StartupModel
from prewarmer.sim.state import SimState
from prewarmer.workloads.base import Workload


class ReplayConfig(BaseModel):
    """Replay model parameters (BENCHMARKS.md defaults); all of them go into the report."""

    seed: int = 0
    startup: StartupModel = Field(default_factory=StartupModel)
    container_concurrency: int = Field(1, ge=1)
    memory_cap_gb: float | None = Field(None, gt=0)
    queue_deadline_s: float | None = Field(None, gt=0)
    sample_s: float = Field(60.0, gt=0)
    chunk_s: float = Field(3600.0, gt=0)
    top_functions: int = Field(6, ge=0)

    model_config = {"arbitrary_types_allowed": True}

    def describe(self) -> dict:
        return {"seed": self.seed, "arrivals": "uniform within each minute (count traces)",
                "startup": self.startup.describe(), "container_concurrency": self.container_concurrency,
                "memory_cap_gb": self.memory_cap_gb, "queue_deadline_s": self.queue_deadline_s,
                "instance_selection": "most recently used idle instance",
                "memory": "app AverageAllocatedMb held for the instance's whole life"}


@dataclass
class SimResult:
    """Raw outcome of one replay (possibly merged from shards); `metrics()` turns it into the report."""

    functions: np.ndarray  # global function indices, aligned with the per-function arrays
    fi: np.ndarray
    fs: np.ndarray
    lat_hist: np.ndarray
    horizon_s: float
    t_final: float
    sample_t: np.ndarray
    interval_peak_gb: np.ndarray  # peak memory within each sample interval
    alive_total: np.ndarray  # instances alive at each sample
    top: np.ndarray  # global indices of the sampled busiest functions
    alive_top: np.ndarray  # (samples, len(top))
    events: list[str] = field(default_factory=list)
    #: The shard's simulator, kept (parallel replay only) so that it can be run on to the merged end.
    state: SimState | None = field(default=None, repr=False, compare=False)

    def extend_to(self, t_end: float) -> None:
        """Run this shard on to t_end, a later shard's end: no arrivals, but instances still expire
        (or get prewarmed) and hold memory, exactly as in a single-process run that ends at t_end."""
        st = self.state
        if st is None or t_end <= self.t_final:
            return
        none_t = np.empty(0)
        st.advance(t_end, none_t, np.empty(0, np.int64), none_t, 0)
        st.touch_all(t_end)
        self.fi, self.fs, self.t_final = st.fi.copy(), st.fs.copy(), t_end
        self.interval_peak_gb[-1] = max(self.interval_peak_gb[-1], st.take_peak_memory_gb())

    # ------------------------------------------------------------------ merging shards
    @staticmethod
    def merge(parts: list[SimResult]) -> SimResult:
        if len(parts) == 1:
            return parts[0]
        top = np.concatenate([p.top for p in parts])
        return SimResult(
            functions=np.concatenate([p.functions for p in parts]),
            fi=np.concatenate([p.fi for p in parts]), fs=np.concatenate([p.fs for p in parts]),
            lat_hist=np.sum([p.lat_hist for p in parts], axis=0), horizon_s=parts[0].horizon_s,
            t_final=max(p.t_final for p in parts), sample_t=parts[0].sample_t,
            interval_peak_gb=np.sum([p.interval_peak_gb for p in parts], axis=0),
            alive_total=np.sum([p.alive_total for p in parts], axis=0),
            top=top, alive_top=np.concatenate([p.alive_top for p in parts], axis=1),
            events=[e for p in parts for e in p.events])

    # ------------------------------------------------------------------ metrics
    def latency_percentile_ms(self, q: float) -> float:
        total = self.lat_hist.sum()
        if total == 0:
            return float("nan")
        b = int(np.searchsorted(np.cumsum(self.lat_hist), q * total, side="left"))
        lo = E.LAT_MIN_EXP + b / E.LAT_BINS_PER_DECADE
        return float(10 ** (lo + 0.5 / E.LAT_BINS_PER_DECADE))

    def metrics(self) -> dict[str, float | int]:
        fi, fs = self.fi, self.fs
        inv = int(fi[:, E.F_ARRIVALS].sum())
        cold = int(fi[:, E.F_COLD].sum())
        invoked = fi[:, E.F_ARRIVALS] > 0
        pct = 100.0 * fi[invoked, E.F_COLD] / fi[invoked, E.F_ARRIVALS]
        return {
            "invocations": inv,
            "cold_starts": cold,
            "cold_start_rate": cold / inv if inv else 0.0,
            "p75_function_cold_start_pct": float(np.percentile(pct, 75)) if len(pct) else 0.0,
            "wasted_gb_s": float(fs[:, E.S_WASTE].sum()),
            "busy_gb_s": float(fs[:, E.S_BUSY].sum()),
            "p50_latency_ms": self.latency_percentile_ms(0.50),
            "p99_latency_ms": self.latency_percentile_ms(0.99),
            "throughput_rps": int(fi[:, E.F_DONE].sum()) / self.horizon_s if self.horizon_s else 0.0,
            "timed_out": int(fi[:, E.F_TIMEOUT].sum()),
            "peak_memory_gb": float(self.interval_peak_gb.max()) if len(self.interval_peak_gb) else 0.0,
        }

    def per_function_cold_start_pct(self) -> np.ndarray:
        arr = self.fi[:, E.F_ARRIVALS]
        return np.where(arr > 0, 100.0 * self.fi[:, E.F_COLD] / np.maximum(arr, 1), np.nan)


def _pick_top(workload: Workload, idx: np.ndarray, k: int) -> np.ndarray:
    per = getattr(workload, "counts", None)
    if k <= 0:
        return np.empty(0, np.int64)
    if per is not None:
        totals = per[idx].sum(axis=1)
        return idx[np.argsort(-totals, kind="stable")[:k]]
    return idx[:k]


def run_shard(workload: Workload, policy: Policy, cfg: ReplayConfig, idx: np.ndarray | None = None,
              top: np.ndarray | None = None, progress: Callable[[int], None] | None = None,
              keep_state: bool = False) -> SimResult:
    """Replay the functions `idx` (all by default) under `policy` in this process.

    The shard ends at max(horizon, its own last completion); `keep_state` keeps the simulator in the
    result so that `SimResult.extend_to` can carry it on to the end of the whole run.
    """
    n_all = len(workload.functions)
    idx = np.arange(n_all) if idx is None else np.asarray(idx, np.int64)
    table = workload.functions.subset(idx) if len(idx) != n_all else workload.functions
    local = np.full(n_all, -1, np.int64)
    local[idx] = np.arange(len(idx))
    top = _pick_top(workload, idx, cfg.top_functions) if top is None else top
    top_local = local[top]

    startup, sigma = cfg.startup.per_function(table)
    st = SimState(table.memory_mb, startup, sigma, cfg.container_concurrency, cfg.memory_cap_gb,
                  cfg.queue_deadline_s)
    E.seed_engine(cfg.seed)
    st.apply(0.0, policy.reset(table, 0.0))
    tick = policy.tick_s if policy.tick_s else math.inf
    horizon = workload.horizon_s
    next_tick, next_sample, last_tick = tick, cfg.sample_s, 0.0
    sample_t, peaks, alive_tot, alive_top = [], [], [], []

    def stop_at(now: float) -> None:
        nonlocal next_tick, next_sample, last_tick
        st.touch_all(now)
        if now >= next_sample:
            sample_t.append(now)
            peaks.append(st.take_peak_memory_gb())
            alive_tot.append(int(st.fi[:, E.F_ALIVE].sum()))
            alive_top.append(st.fi[top_local, E.F_ALIVE].copy())
            next_sample += cfg.sample_s
            if policy.tick_s is None:
                st.drop_idle_times()
        if now >= next_tick:
            obs = st.observe(now, now - last_tick)
            last_tick = now
            st.apply(now, policy.decide(now, obs))
            next_tick += tick

    for chunk in workload.chunks(cfg.seed, cfg.chunk_s, None if len(idx) == n_all else idx):
        arr_f = local[chunk.func]
        end = min(chunk.end, horizon)
        pos = 0
        while True:
            t_stop = min(next_tick, next_sample, end)
            pos, _ = st.advance(t_stop, chunk.t, arr_f, chunk.duration, pos)
            if t_stop >= min(next_tick, next_sample):
                stop_at(t_stop)
            if t_stop >= end:
                break
        if progress is not None:
            progress(len(chunk))
    none_t, none_f = np.empty(0), np.empty(0, np.int64)
    while min(next_tick, next_sample) <= horizon:
        t_stop = min(next_tick, next_sample)
        st.advance(t_stop, none_t, none_f, none_t, 0)
        stop_at(t_stop)
    # Requests still running at the horizon finish; memory is accounted up to the last completion.
    st.advance(math.inf, none_t, none_f, none_t, 0, drain=True)
    t_final = max(horizon, float(st.fs[:, E.S_LAST_DONE].max(initial=0.0)))
    st.touch_all(t_final)
    peaks.append(st.take_peak_memory_gb())  # the tail after the last sample
    return SimResult(
        functions=idx, fi=st.fi.copy(), fs=st.fs.copy(), lat_hist=st.lat_hist.copy(), horizon_s=horizon,
        t_final=t_final, sample_t=np.asarray(sample_t), interval_peak_gb=np.asarray(peaks),
        alive_total=np.asarray(alive_tot), top=top,
        alive_top=np.asarray(alive_top).reshape(len(sample_t), len(top)),
        events=list(getattr(policy, "events", [])), state=st if keep_state else None)


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
    top_all = _pick_top(workload, np.arange(len(workload.functions)), cfg.top_functions)
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
