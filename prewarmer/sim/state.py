"""The simulator's arrays and the Python-side calls into the compiled loop (growing pools as needed)."""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.sim import engine as E


class PoolOverflow(RuntimeError):
    pass


class SimState:
    """Every instance, waiting request, pending event and per-function counter of one simulation."""

    def __init__(self, memory_mb: np.ndarray, startup_s: np.ndarray, startup_sigma: np.ndarray,
                 concurrency: int = 1, memory_cap_gb: float | None = None,
                 queue_deadline_s: float | None = None, tenants: np.ndarray | None = None,
                 tenant_quota_gb: np.ndarray | None = None, max_instances: int | None = None,
                 record_requests: bool = False, latency_histogram: bool = True,
                 startup_per_starting_s: float = 0.0, startup_by_policy_s: float = 0.0) -> None:
        self.concurrency, self.max_instances = max(1, int(concurrency)), max_instances
        self.n = 0
        self.fs = np.zeros((0, E.NFS))
        self.fi = np.zeros((0, E.NFI), np.int64)
        self.lh = self.lt = self.qh = self.qt = np.zeros(0, np.int64)
        self._add_functions(np.asarray(memory_mb, np.float64), startup_s, startup_sigma)
        self.fi[:, E.F_TENANT] = -1 if tenants is None or tenant_quota_gb is None else tenants
        self.gi = np.zeros(E.NGI, np.int64)
        n_tenants = 0 if tenant_quota_gb is None else len(tenant_quota_gb)
        self.gf = np.zeros(E.NGF + 2 * n_tenants)
        if n_tenants:
            self.gf[E.NGF + 1::2] = tenant_quota_gb
        self.gi[[E.G_FREE, E.G_RFREE, E.G_QHEAD, E.G_QTAIL, E.G_GHEAD, E.G_GTAIL]] = -1
        self.gf[E.G_CAP] = np.inf if memory_cap_gb is None else memory_cap_gb
        self.gf[E.G_DEADLINE] = np.inf if queue_deadline_s is None else queue_deadline_s
        self.gf[E.G_PER_STARTING] = startup_per_starting_s
        self.gf[E.G_BY_POLICY_S] = startup_by_policy_s
        # The requests' latencies by log-spaced bin, for reports; a state nobody reports on (the sidecar's warm
        # fleet) keeps none, which spares a logarithm per request.
        self.lat_hist = np.zeros(E.LAT_NBINS if latency_histogram else 0, np.int64)
        self.isf = np.zeros((0, E.NIF))
        self.isi = np.zeros((0, E.NII), np.int64)
        self.rqf = np.zeros((0, E.NRF))
        self.rqi = np.zeros((0, E.NRI), np.int64)
        self.hk = np.zeros((2, 0))  # the main heap and the expiry heap (`engine.H_MAIN`, `engine.H_EXPIRE`)
        self.hp = np.zeros((2, 0), np.int64)
        self.it_f = np.zeros(4096, np.int32)
        self.it_v = np.zeros(4096)
        # One row per request that starts executing (function, arrival, start, duration),
        # kept only when asked for: what a live platform reports, for comparing the two.
        self.rlog = np.zeros((4096 if record_requests else 0, E.NRL))
        self.min_free = 256
        self._grow_instances(4096)
        self._grow_requests(4096)
        self._grow_heap(16384)
        self._prev = self._counters()

    def _add_functions(self, memory_mb: np.ndarray, startup_s: np.ndarray, startup_sigma: np.ndarray) -> None:
        """Rows for functions appended after the known ones (no instance, default settings)."""
        add = len(memory_mb)
        fs, fi = np.zeros((add, E.NFS)), np.zeros((add, E.NFI), np.int64)
        fs[:, E.S_MEM_GB] = memory_mb / 1024.0
        fs[:, E.S_STARTUP] = startup_s
        fs[:, E.S_SIGMA] = startup_sigma
        fs[:, E.S_KA] = 600.0
        fs[:, E.S_KA_SURPLUS] = np.inf
        fs[:, E.S_LAST_DONE] = -1.0
        fs[:, E.S_MAX_HOLD] = np.inf
        fi[:, E.F_CC] = self.concurrency
        fi[:, E.F_TENANT] = -1
        fi[:, E.F_MAXINST] = E.NO_LIMIT if self.max_instances is None else int(self.max_instances)
        self.fs, self.fi = np.concatenate([self.fs, fs]), np.concatenate([self.fi, fi])
        self.lh = np.concatenate([self.lh, np.full(add * E.NLISTS, -1, np.int64)])
        self.lt = np.concatenate([self.lt, np.full(add * E.NLISTS, -1, np.int64)])
        self.qh = np.concatenate([self.qh, np.full(add, -1, np.int64)])
        self.qt = np.concatenate([self.qt, np.full(add, -1, np.int64)])
        self.n += add

    def grow(self, memory_mb: np.ndarray, startup_s: np.ndarray, startup_sigma: np.ndarray) -> None:
        """Functions appended after the known ones (a live platform gains functions; replay never does)."""
        self._add_functions(np.asarray(memory_mb, np.float64), startup_s, startup_sigma)
        self._prev = {k: np.concatenate([v, np.zeros(len(memory_mb), v.dtype)]) for k, v in self._prev.items()}

    # ------------------------------------------------------------------ pools
    def _grow_instances(self, new: int) -> None:
        old = self.isi.shape[0]
        self.isf = np.concatenate([self.isf, np.zeros((new - old, E.NIF))])
        add = np.zeros((new - old, E.NII), np.int64)
        add[:, [E.I_PREV, E.I_GPREV, E.I_GNEXT, E.I_BOUND, E.I_LIST, E.I_FUNC, E.I_HPOS]] = -1
        add[:, E.I_NEXT] = np.arange(old + 1, new + 1)
        add[-1, E.I_NEXT] = self.gi[E.G_FREE]
        self.isi = np.concatenate([self.isi, add])
        self.gi[E.G_FREE] = old
        self.gi[E.G_NFREE] += new - old

    def _grow_requests(self, new: int) -> None:
        old = self.rqi.shape[0]
        self.rqf = np.concatenate([self.rqf, np.zeros((new - old, E.NRF))])
        add = np.full((new - old, E.NRI), -1, np.int64)
        add[:, E.R_STATE] = E.RQ_FREE
        add[:, E.R_FNEXT] = np.arange(old + 1, new + 1)
        add[-1, E.R_FNEXT] = self.gi[E.G_RFREE]
        self.rqi = np.concatenate([self.rqi, add])
        self.gi[E.G_RFREE] = old
        self.gi[E.G_NRFREE] += new - old

    def _grow_heap(self, new: int) -> None:
        def g(a):
            b = np.zeros((2, new), a.dtype)
            b[:, : a.shape[1]] = a
            return b
        self.hk, self.hp = g(self.hk), g(self.hp)

    def _ensure(self, extra: int = 0) -> None:
        if self.gi[E.G_OVERFLOW]:
            raise PoolOverflow("simulator pool overflow (an internal bug): please report it")
        need = self.min_free + extra
        if self.gi[E.G_NFREE] < need:
            self._grow_instances(max(2 * self.isi.shape[0], self.isi.shape[0] + need))
        if self.gi[E.G_NRFREE] < need:
            self._grow_requests(max(2 * self.rqi.shape[0], self.rqi.shape[0] + need))
        size = max(self.gi[E.G_HSIZE], self.gi[E.G_ESIZE])
        if size + 4 * need > self.hk.shape[1]:
            self._grow_heap(max(2 * self.hk.shape[1], size + 8 * need))
        if self.gi[E.G_ITN] >= len(self.it_f) - 1:
            self.it_f = np.concatenate([self.it_f, np.zeros_like(self.it_f)])
            self.it_v = np.concatenate([self.it_v, np.zeros_like(self.it_v)])
        if len(self.rlog) and self.gi[E.G_RLN] + need > len(self.rlog):
            self.rlog = np.concatenate([self.rlog, np.zeros_like(self.rlog)])

    # ------------------------------------------------------------------ stepping
    def advance(self, t_end: float, arr_t: np.ndarray, arr_f: np.ndarray, arr_d: np.ndarray,
                pos: int, drain: bool = False) -> tuple[int, float]:
        while True:
            self._ensure()
            # Times go in as floats: an int would compile the whole engine a second time (~45 s).
            pos, status, reached = E.advance(
                float(t_end), arr_t, arr_f, arr_d, pos, self.fs, self.fi, self.isf, self.isi, self.gi, self.gf,
                self.lh, self.lt, self.hk, self.hp, self.rqf, self.rqi, self.qh,
                self.qt, self.lat_hist, self.rlog, self.it_f, self.it_v, self.min_free, drain)
            if status == E.STATUS_DONE:
                return pos, reached

    def touch_all(self, t: float) -> None:
        E.touch_all(self.fs, self.fi, float(t))

    def apply(self, now: float, actions: Actions) -> None:
        actions.validate(self.n)
        extra = 0
        if actions.prewarm is not None:
            extra += int(np.clip(actions.prewarm, 0, None).sum())
        if actions.scale_to is not None:
            extra += int(np.clip(actions.scale_to - self.fi[:, E.F_ALIVE], 0, None).sum())
        if actions.min_instances is not None:
            extra += int(np.clip(actions.min_instances - self.fi[:, E.F_ALIVE], 0, None).sum())
        # Limits lifted or memory freed by these actions let waiting requests start instances at once.
        extra += int(self.fi[:, E.F_QLEN].sum())
        self._ensure(extra)
        e0, i0 = np.empty(0), np.empty(0, np.int64)

        def f64(a):
            return e0 if a is None else np.ascontiguousarray(a, np.float64)

        def i64(a):
            return i0 if a is None else np.ascontiguousarray(a, np.int64)

        E.apply_actions(float(now), f64(actions.keep_alive_s), f64(actions.surplus_keep_alive_s),
                        f64(actions.prewarm_delay_s), i64(actions.prewarm), i64(actions.scale_to),
                        i64(actions.release_idle), f64(actions.max_hold), i64(actions.max_instances),
                        i64(actions.min_instances), self.fs, self.fi, self.isf, self.isi, self.gi, self.gf,
                        self.lh, self.lt, self.hk, self.hp, self.rqi, self.qh, self.qt)

    # ------------------------------------------------------------------ observing
    def _counters(self) -> dict[str, np.ndarray]:
        fi, fs = self.fi, self.fs
        return {"arrivals": fi[:, E.F_ARRIVALS].copy(), "cold": fi[:, E.F_COLD].copy(),
                "done": fi[:, E.F_DONE].copy(), "timeout": fi[:, E.F_TIMEOUT].copy(),
                "conc": fs[:, E.S_CONC].copy(), "waste": fs[:, E.S_WASTE].copy(),
                "busy": fs[:, E.S_BUSY].copy()}

    def observe(self, now: float, dt: float) -> Observation:
        """Counters since the previous call; call `touch_all(now)` first."""
        cur = self._counters()
        prev, self._prev = self._prev, cur
        fi = self.fi
        n_it = int(self.gi[E.G_ITN])
        self.gi[E.G_ITN] = 0
        peak = fi[:, E.F_PEAK].copy()
        fi[:, E.F_PEAK] = fi[:, E.F_REQ]
        return Observation(
            now=now, dt=dt,
            arrivals=cur["arrivals"] - prev["arrivals"], cold_starts=cur["cold"] - prev["cold"],
            completions=cur["done"] - prev["done"], timed_out=cur["timeout"] - prev["timeout"],
            alive=fi[:, E.F_ALIVE].copy(), starting=fi[:, E.F_STARTING].copy(), busy=fi[:, E.F_BUSY].copy(),
            idle_warm=fi[:, E.F_IDLE] - fi[:, E.F_STARTING], in_flight=fi[:, E.F_REQ].copy(), peak_in_flight=peak,
            concurrency=(cur["conc"] - prev["conc"]) / dt if dt > 0 else fi[:, E.F_REQ].astype(float),
            wasted_gb_s=cur["waste"] - prev["waste"], busy_gb_s=cur["busy"] - prev["busy"],
            memory_mb=self.fs[:, E.S_MEM_GB] * 1024.0, startup_s=self.fs[:, E.S_STARTUP].copy(),
            idle_time_func=self.it_f[:n_it].copy(), idle_time_s=self.it_v[:n_it].copy(),
            memory_used_gb=float(self.gf[E.G_MEM]), memory_cap_gb=float(self.gf[E.G_CAP]))

    def take_requests(self) -> np.ndarray:
        """The request log since the previous call (rows: `engine.RL_*` columns); empty unless recording."""
        n = int(self.gi[E.G_RLN])
        self.gi[E.G_RLN] = 0
        return self.rlog[:n].copy()

    def drop_idle_times(self) -> None:
        self.gi[E.G_ITN] = 0

    @property
    def memory_gb(self) -> float:
        return float(self.gf[E.G_MEM])

    def take_peak_memory_gb(self) -> float:
        """Peak total memory since the previous call (per-interval peaks let shards be merged)."""
        peak = float(self.gf[E.G_PEAK])
        self.gf[E.G_PEAK] = self.gf[E.G_MEM]
        return peak
