"""Replay as the simulated `Platform` (observe/apply), with Gymnasium's small reset/step on top.

`observe(now)` runs the simulation to `now` and returns the tick that ends there; `apply(now, actions)`
acts at that instant. Replay of a policy (`run_shard`) and the training loop of learned agents drive
it through `prewarmer.platform.tick`, as the sidecar drives its live fleet; `step` is kept for tests
and tools that want one call per tick.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.sim import engine as E
from prewarmer.sim.result import SAMPLED_COUNTS, ReplayConfig, SimResult, pick_top
from prewarmer.sim.state import SimState
from prewarmer.workloads.base import ArrivalChunk, FunctionTable, Workload


class ReplayEnv:
    """A workload replayed for the functions `idx` (all by default), stepping every `tick_s` seconds.

    `tick_s=None` runs from one step to the horizon (policies that only act at reset).
    """

    def __init__(self, workload: Workload, cfg: ReplayConfig, idx: np.ndarray | None = None,
                 tick_s: float | None = 60.0, top: np.ndarray | None = None,
                 progress: Callable[[int], None] | None = None, record_requests: bool = False) -> None:
        n_all = len(workload.functions)
        self.workload, self.cfg, self.progress = workload, cfg, progress
        self.record_requests = record_requests  # see `SimState.take_requests`
        self.idx = np.arange(n_all) if idx is None else np.asarray(idx, np.int64)
        self.functions: FunctionTable = (workload.functions.subset(self.idx) if len(self.idx) != n_all
                                         else workload.functions)
        self._local = np.full(n_all, -1, np.int64)
        self._local[self.idx] = np.arange(len(self.idx))
        self.top = pick_top(workload, self.idx, cfg.top_functions) if top is None else top
        self.tick_s = tick_s if tick_s else math.inf
        self.horizon = workload.horizon_s
        self.epoch_s = 60.0 * float(getattr(workload, "start_minute", 0) or 0)

    @property
    def n_functions(self) -> int:
        return len(self.idx)

    def reset(self) -> Observation:
        """A fresh simulation at t=0 (nothing arrived yet); returns its empty observation."""
        cfg = self.cfg
        startup, sigma = cfg.startup.per_function(self.functions)
        tenants, quotas = self._tenants()
        self.state = SimState(self.functions.memory_mb, startup, sigma, cfg.container_concurrency,
                              cfg.memory_cap_gb, cfg.queue_deadline_s, tenants=tenants, tenant_quota_gb=quotas,
                              max_instances=cfg.max_instances, record_requests=self.record_requests,
                              startup_per_starting_s=cfg.startup.per_starting_s,
                              startup_by_policy_s=cfg.startup.by_policy_s)
        E.seed_engine(cfg.seed)
        self.now, self._last_tick = 0.0, 0.0
        self._next_tick, self._next_sample = self.tick_s, cfg.sample_s  # (`step` only)
        self._sample_t: list[float] = []
        self._peaks: list[float] = []
        self._alive_tot: list[int] = []
        self._counts: list[np.ndarray] = []  # cumulative arrivals, cold starts, timeouts at each sample
        self._alive_top: list[np.ndarray] = []
        self._chunks: Iterator[ArrivalChunk] = self.workload.chunks(
            cfg.seed, cfg.chunk_s, None if len(self.idx) == len(self.workload.functions) else self.idx)
        self._chunk: ArrivalChunk | None = None
        self._arr_f = np.empty(0, np.int64)
        self._pos = 0
        self.done = False
        return self._observe(0.0)

    def _tenants(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Tenant of each function and every tenant's quota (a share of the cap), when quotas are on."""
        cfg, fns = self.cfg, self.functions
        if cfg.tenant_quota is None:
            return None, None
        if cfg.memory_cap_gb is None:
            raise ValueError("a tenant quota is a share of the memory cap: give --memory-cap too")
        tenants = fns.tenants if fns.tenants is not None else fns.apps  # no owner data: each app is a tenant
        n = int(tenants.max()) + 1 if len(tenants) else 0
        return tenants.astype(np.int64), np.full(n, cfg.tenant_quota * cfg.memory_cap_gb)

    # ------------------------------------------------------------------ the Platform
    def tick_times(self) -> Iterator[float]:
        """The control ticks of the run: every `tick_s` up to and including the horizon."""
        k = 1
        while k * self.tick_s <= self.horizon:
            yield k * self.tick_s
            k += 1

    def observe(self, now: float) -> Observation:
        """Run the simulation to `now` (taking the samples on the way) and observe the tick ending there."""
        self._run_samples(now)
        if now > self.now and not self._run_to(now):
            raise ValueError(f"observe({now}) is past the horizon ({self.horizon} s): call finish()")
        return self._observe(now)

    def apply(self, now: float, actions: Actions) -> None:
        """Actions take effect at the current simulated time (`now` must be it)."""
        if now != self.now:
            raise ValueError(f"apply({now}) while the simulation stands at {self.now}")
        self.state.apply(now, actions)

    def finish(self) -> Observation:
        """Run out the horizon, let running requests complete; returns the last tick's observation."""
        self._run_samples(self.horizon)
        return self._finish_observation()

    def step(self, actions: Actions) -> tuple[Observation, bool]:
        """Gymnasium's contract over the Platform: apply `actions` now, run to the next tick (or the
        end); returns (observation, done)."""
        self.apply(self.now, actions)
        if self._next_tick > self.horizon:
            return self.finish(), True
        obs = self.observe(self._next_tick)
        self._next_tick += self.tick_s
        return obs, False

    # ------------------------------------------------------------------ internals
    def _run_samples(self, until: float) -> None:
        while self._next_sample <= min(until, self.horizon):
            self._run_to(self._next_sample)
            self._sample()

    def _run_to(self, t_stop: float) -> bool:
        """Advance to min(t_stop, horizon) across chunk boundaries; False once past the horizon."""
        st, none_t, none_f = self.state, np.empty(0), np.empty(0, np.int64)
        if t_stop > self.horizon:
            return False
        while True:
            if self._chunk is None:
                self._chunk = next(self._chunks, None)
                if self._chunk is None:
                    st.advance(t_stop, none_t, none_f, none_t, 0)
                    break
                self._arr_f, self._pos = self._local[self._chunk.func], 0
            c = self._chunk
            end = min(c.end, self.horizon)
            self._pos, _ = st.advance(min(t_stop, end), c.t, self._arr_f, c.duration, self._pos)
            if t_stop < end:
                break
            if self.progress is not None:
                self.progress(len(c))
            self._chunk = None
            if t_stop == end:
                break
        self.now = t_stop
        st.touch_all(t_stop)
        return True

    def _observe(self, now: float) -> Observation:
        obs = self.state.observe(now, now - self._last_tick)
        obs.epoch_s = self.epoch_s
        self._last_tick = now
        return obs

    def _sample(self) -> None:
        st = self.state
        self._sample_t.append(self.now)
        self._peaks.append(st.take_peak_memory_gb())
        self._alive_tot.append(int(st.fi[:, E.F_ALIVE].sum()))
        self._counts.append(st.fi[:, SAMPLED_COUNTS].sum(axis=0))
        self._alive_top.append(st.fi[self._local[self.top], E.F_ALIVE].copy())
        self._next_sample += self.cfg.sample_s
        if math.isinf(self.tick_s):
            st.drop_idle_times()

    def _finish_observation(self) -> Observation:
        """Run out the horizon (remaining samples), then let running requests complete."""
        st, none_t, none_f = self.state, np.empty(0), np.empty(0, np.int64)
        self._run_to(self.horizon)
        obs = self._observe(self.horizon)
        # Requests still running at the horizon finish; memory is accounted up to the last completion.
        st.advance(math.inf, none_t, none_f, none_t, 0, drain=True)
        self.t_final = max(self.horizon, float(st.fs[:, E.S_LAST_DONE].max(initial=0.0)))
        st.touch_all(self.t_final)
        self._peaks.append(st.take_peak_memory_gb())  # the tail after the last sample
        self.done = True
        return obs

    def result(self, events: list[str] | None = None, keep_state: bool = False) -> SimResult:
        st = self.state
        return SimResult(
            functions=self.idx, fi=st.fi.copy(), fs=st.fs.copy(), lat_hist=st.lat_hist.copy(),
            horizon_s=self.horizon, t_final=self.t_final, sample_t=np.asarray(self._sample_t),
            interval_peak_gb=np.asarray(self._peaks), alive_total=np.asarray(self._alive_tot), top=self.top,
            alive_top=np.asarray(self._alive_top).reshape(len(self._sample_t), len(self.top)),
            counts_total=np.asarray(self._counts, np.int64).reshape(len(self._sample_t), len(SAMPLED_COUNTS)),
            events=events or [], state=st if keep_state else None)
