"""Builds the policy's `Observation` from invocation events and the platform's replica counts.

The simulator knows every instance; the sidecar knows what the events say (arrival, duration,
start-up wait, cold flag, instance) and what the platform reports (replicas, ready replicas).
Per tick it produces the same arrays the simulator does, estimating what it cannot see: busy
instances from the time-averaged concurrency, idle waste from ready-but-idle replicas × memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from prewarmer.observation import Observation
from prewarmer.sidecar.inflight import InFlight

#: The start-up time assumed for a function until one of its cold starts is measured (as replay's default).
DEFAULT_STARTUP_S = 1.0


class LiveObserver:
    def __init__(self, memory_mb: np.ndarray, epoch_s: float) -> None:
        self.memory_mb = np.asarray(memory_mb, np.float64).copy()
        self.epoch_s = epoch_s
        n = len(self.memory_mb)
        self.last_done = np.full(n, -np.inf)
        self.startup_s = np.full(n, np.nan)  # EWMA of observed cold start-up times
        self.last_tick: float | None = None
        self._new_tick(n)

    def _new_tick(self, n: int) -> None:
        self.arrivals = np.zeros(n, np.int64)
        self.cold = np.zeros(n, np.int64)
        self.failed = np.zeros(n, np.int64)
        self.busy_s = np.zeros(n)
        # Time requests spent in the system (waiting or executing), the engine's concurrency; `busy_s` leaves out
        # the wait of a request that ended within the tick.
        self.system_s = np.zeros(n)
        self.it_f: list[np.ndarray] = []
        self.it_v: list[np.ndarray] = []
        self.spans: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (function, arrival, done) per batch

    def __setstate__(self, state: dict) -> None:
        # A checkpoint of before `system_s` (same checkpoint version): the tick it was taken in counts the time in
        # the system from the busy time, as it then did; the next tick counts it in full.
        if "system_s" not in state:
            state["system_s"] = np.array(state["busy_s"], copy=True)
        self.__dict__.update(state)

    def grow(self, memory_mb: np.ndarray) -> None:
        add = len(memory_mb) - len(self.memory_mb)
        if add <= 0:
            return
        self.memory_mb = np.asarray(memory_mb, np.float64).copy()
        for name, fill, dt in (("last_done", -np.inf, np.float64), ("startup_s", np.nan, np.float64),
                               ("arrivals", 0, np.int64), ("cold", 0, np.int64), ("failed", 0, np.int64),
                               ("busy_s", 0.0, np.float64), ("system_s", 0.0, np.float64)):
            setattr(self, name, np.concatenate([getattr(self, name), np.full(add, fill, dt)]))

    def arrived(self, func: np.ndarray) -> None:
        """Requests reported as they arrive (`start` events): counted as arrivals of this tick now; their
        outcome comes with `ingest(..., counted=...)` when they end."""
        self.arrivals += np.bincount(func, minlength=len(self.memory_mb))

    def ingest(self, func: np.ndarray, arrival: np.ndarray, duration: np.ndarray, startup: np.ndarray,
               cold: np.ndarray, status: np.ndarray, counted: np.ndarray | None = None,
               wait: np.ndarray | None = None) -> None:
        """Events of one batch as arrays (policy seconds); any order. With `counted`, the requests were already
        counted as arrivals when they started (`arrived`), and their busy time up to `counted` (by `observe`,
        while they ran): only the rest is added. `wait`: arrival to the start of execution, at least `startup`
        (`ShardAgent.ingest` makes it so; default `startup`);
        a request queued at the platform's instance bound is in the system for its wait too, as in the
        simulator, and ends at arrival + wait + duration."""
        if len(func) == 0:
            return
        n = len(self.memory_mb)
        order = np.lexsort((arrival, func))
        f, a, d, s = func[order], arrival[order], duration[order], startup[order]
        w = s if wait is None else np.asarray(wait, np.float64)[order]
        c = cold[order]
        done = a + w + d
        if counted is None:
            self.arrivals += np.bincount(f, minlength=n)
            self.busy_s += np.bincount(f, weights=d, minlength=n)
            self.system_s += np.bincount(f, weights=done - a, minlength=n)
        else:
            # In flight at a tick, a request counted as busy from its arrival (its start-up wait included).
            since = np.maximum(counted[order], a)
            left = np.where(np.isfinite(counted[order]), done - since, d)
            self.busy_s += np.bincount(f, weights=np.maximum(left, 0.0), minlength=n)
            self.system_s += np.bincount(f, weights=np.maximum(done - since, 0.0), minlength=n)
        self.cold += np.bincount(f, weights=c, minlength=n).astype(np.int64)
        self.failed += np.bincount(f, weights=(status[order] >= 500), minlength=n).astype(np.int64)
        self.spans.append((f, a, done))
        # Idle gap: from the function's previous completion to this arrival (as the simulator logs it).
        prev_done = np.empty_like(done)
        prev_done[1:] = done[:-1]
        first = np.ones(len(f), bool)
        first[1:] = f[1:] != f[:-1]
        prev_done[first] = self.last_done[f[first]]
        gap = a - prev_done
        ok = np.isfinite(gap) & (gap > 0)
        self.it_f.append(f[ok].astype(np.int32))
        self.it_v.append(gap[ok])
        last = first.copy()
        last[:-1] = first[1:]
        last[-1] = True
        np.maximum.at(self.last_done, f[last], done[last])
        if c.any():
            fc = f[c.astype(bool)]
            sc = s[c.astype(bool)]
            cur = self.startup_s[fc]
            self.startup_s[fc] = np.where(np.isnan(cur), sc, 0.8 * cur + 0.2 * sc)

    def startup(self) -> np.ndarray:
        """Each function's start-up time: measured, or `DEFAULT_STARTUP_S` until it is."""
        return np.where(np.isnan(self.startup_s), DEFAULT_STARTUP_S, self.startup_s)

    def observe(self, now: float, replicas: np.ndarray, ready: np.ndarray,
                inflight: InFlight | None = None) -> Observation:
        """Close the tick ending at `now` (policy seconds) given the platform's current replica counts and the
        requests in flight (reported started, not ended): they count as busy, in flight, and in the peak."""
        n = len(self.memory_mb)
        dt = 0.0 if self.last_tick is None else max(now - self.last_tick, 0.0)
        self.last_tick = now
        open_now = np.zeros(n, np.int64)
        if inflight is not None and len(inflight):
            run = np.flatnonzero(inflight.arrival < now)
            f = inflight.func[run]
            open_now = np.bincount(f, minlength=n)
            open_s = np.bincount(f, weights=np.maximum(now - np.maximum(inflight.counted[run], inflight.arrival[run]),
                                                       0.0), minlength=n)
            self.busy_s += open_s
            self.system_s += open_s
            inflight.counted[run] = now
            self.spans.append((f, inflight.arrival[run], np.full(len(run), np.inf)))
        replicas = np.asarray(replicas, np.int64)
        ready = np.minimum(np.asarray(ready, np.int64), replicas)
        concurrency = self.system_s / dt if dt > 0 else np.zeros(n)
        busy = np.minimum(np.maximum(np.ceil(concurrency).astype(np.int64), open_now), ready)
        idle = ready - busy
        mem_gb = self.memory_mb / 1024.0
        obs = Observation(
            now=now, dt=dt, arrivals=self.arrivals, cold_starts=self.cold, completions=self.arrivals.copy(),
            timed_out=self.failed, alive=replicas, starting=replicas - ready, busy=busy, idle_warm=idle,
            in_flight=np.maximum(busy, open_now), peak_in_flight=self._peak_in_flight(n), concurrency=concurrency,
            wasted_gb_s=np.maximum(ready * dt - self.busy_s, 0) * mem_gb,
            busy_gb_s=self.busy_s * mem_gb, memory_mb=self.memory_mb.copy(),
            idle_time_func=np.concatenate(self.it_f) if self.it_f else np.zeros(0, np.int32),
            idle_time_s=np.concatenate(self.it_v) if self.it_v else np.zeros(0),
            memory_used_gb=float((replicas * mem_gb).sum()), startup_s=self.startup(), epoch_s=self.epoch_s)
        self._new_tick(n)
        return obs

    def _peak_in_flight(self, n: int) -> np.ndarray:
        """Most invocations of each function in flight at once, among those reported this tick.

        An invocation reported only when it ends (no `start`) is counted in the tick that reports it; the
        simulator counts it where it runs. One reported as started is counted in every tick it runs in.
        Sweep: +1 at each arrival, -1 at each end, sorted per function by time (ends first on ties), running
        sum per function."""
        if not self.spans:
            return np.zeros(n, np.int64)
        f, arrival, done = (np.concatenate(col) for col in zip(*self.spans, strict=True))
        return _sweep_peaks(n, f.astype(np.int64, copy=False), arrival.astype(np.float64, copy=False),
                            done.astype(np.float64, copy=False))


@njit(cache=True)
def _sweep_peaks(n, f, arrival, done):
    """The sweep of `LiveObserver._peak_in_flight`, one function at a time: its arrivals and ends, each
    sorted, merged in time order (an end first on a tie); the peak is the highest running count."""
    m = len(f)
    start = np.zeros(n + 1, np.int64)
    for i in range(m):
        start[f[i] + 1] += 1
    for g in range(n):
        start[g + 1] += start[g]
    pos = start[:n].copy()
    a = np.empty(m)
    d = np.empty(m)
    for i in range(m):
        p = pos[f[i]]
        a[p] = arrival[i]
        d[p] = done[i]
        pos[f[i]] = p + 1
    peak = np.zeros(n, np.int64)
    for g in range(n):
        lo, hi = start[g], start[g + 1]
        if hi == lo:
            continue
        _sort_span(a, lo, hi)
        _sort_span(d, lo, hi)
        i, j = lo, lo
        run = best = 0
        while i < hi:
            if j < hi and d[j] <= a[i]:
                run -= 1
                j += 1
            else:
                run += 1
                i += 1
                if run > best:
                    best = run
        peak[g] = best
    return peak


@njit(cache=True)
def _sort_span(x, lo, hi):
    """Sort x[lo:hi] in place: insertion sort for the few events most functions have in a tick."""
    if hi - lo > 32:
        x[lo:hi].sort()
        return
    for i in range(lo + 1, hi):
        v = x[i]
        j = i - 1
        while j >= lo and x[j] > v:
            x[j + 1] = x[j]
            j -= 1
        x[j + 1] = v
