"""Turns a policy's actions into the number of instances each function should hold right now.

The simulator applies `Actions` to individual instances; a live platform only takes a replica count
(OpenFaaS replicas, Knative min-scale, Deployment scale). `WarmFleet` answers "how many instances
would the simulator hold now" by running the simulator itself (`prewarmer.sim.state.SimState`, the
same compiled engine replay uses) on the requests the platform reports: keep-alive, surplus
keep-alive, pre-warming windows, prewarm / scale_to / release, budget awards and the "last instance"
rule have one implementation, in `prewarmer.sim.engine`, for replay and for the live sidecar.

A platform that reports requests when they start (the gateway's `start` events) lets the model run a request
from its arrival, before its execution time is known: it runs as a request with no end (`OPEN_S`) and ends
when its `end` is reported (`ended`). A platform that reports requests only when they complete leaves a
request still running at a tick unknown then; it is replayed when its report comes, from the time the model
stands at (see `advance`). With every request reported, the model is exact: the differential test
(tests/test_differential.py) holds it to the replay's instance counts at every tick.

All times are policy seconds. The model's memory accounting (GB-s) is not used: the platform measures
its own.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from prewarmer.actions import Actions
from prewarmer.sidecar.inflight import MAX_OPEN_S, InFlight
from prewarmer.sidecar.observer import DEFAULT_STARTUP_S
from prewarmer.sim import engine as E
from prewarmer.sim.state import SimState

UNLIMITED = E.NO_LIMIT
#: The execution time the model gives a request still running (its end not reported yet): longer than any run,
#: so its end comes only from `ended`; small enough that start + OPEN_S keeps 0.1 ms resolution.
OPEN_S = 1e12


class WarmFleet:
    def __init__(self, n: int = 0, memory_mb: np.ndarray | None = None, max_instances: int | None = None) -> None:
        mem = np.full(n, 128.0) if memory_mb is None else np.asarray(memory_mb, np.float64)
        # `max_instances`: the platform's most replicas per function (replay's `max_instances`): beyond it requests
        # wait for a busy instance, in the model as on the platform.
        self.state = SimState(mem, np.full(len(mem), DEFAULT_STARTUP_S), np.zeros(len(mem)),
                              max_instances=max_instances, latency_histogram=False)
        self.now = -np.inf  # where the model stands (its clock starts at the first call)
        self._behind_until = np.full(len(mem), -np.inf)  # see `behind`
        # Reported requests not yet replayed (arrival, function, execution time).
        self._arr = np.zeros(0)
        self._func = np.zeros(0, np.int64)
        self._dur = np.zeros(0)
        self._batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # reported since; see `_gather`
        self.inflight = InFlight()  # reported as started, not yet as ended

    def __getstate__(self) -> dict:
        self._gather()
        return dict(self.__dict__)

    def _gather(self) -> None:
        """Fold the batches reported since into the arrays of requests not yet replayed (one concatenation per
        tick rather than one of the whole backlog per batch)."""
        if self._batches:
            f, a, d = zip(*self._batches, strict=True)
            self._func = np.concatenate([self._func, *f])
            self._arr = np.concatenate([self._arr, *a])
            self._dur = np.concatenate([self._dur, *d])
            self._batches = []

    @property
    def n(self) -> int:
        return self.state.n

    # ------------------------------------------------------------------ settings, for records and tests
    @property
    def keep_alive(self) -> np.ndarray:
        return self.state.fs[:, E.S_KA]

    @property
    def prewarm_delay(self) -> np.ndarray:
        return self.state.fs[:, E.S_PWD]

    # ------------------------------------------------------------------ inputs
    def grow(self, memory_mb: np.ndarray) -> None:
        """Room for newly discovered functions (`memory_mb` of all functions, the known ones first)."""
        mem = np.asarray(memory_mb, np.float64)
        add = len(mem) - self.n
        if add > 0:
            self.state.grow(mem[self.n:], np.full(add, DEFAULT_STARTUP_S), np.zeros(add))
            self._behind_until = np.concatenate([self._behind_until, np.full(add, -np.inf)])

    def set_startup(self, startup_s: np.ndarray) -> None:
        """Start-up time of each function's new instances (measured live, `LiveObserver.startup`)."""
        self.state.fs[:, E.S_STARTUP] = startup_s

    def reported(self, func: np.ndarray, arrival: np.ndarray, duration: np.ndarray) -> None:
        """Requests the platform reported (any order): arrival and execution time, policy seconds."""
        self._batches.append((np.array(func, np.int64), np.array(arrival, np.float64),
                              np.maximum(np.asarray(duration, np.float64), 0.0)))

    def started(self, func: np.ndarray, arrival: np.ndarray) -> None:
        """Requests the platform reported as they arrived (policy seconds), their end still to come."""
        self.inflight.add(func, arrival)

    def ended(self, func: np.ndarray, arrival: np.ndarray, startup: np.ndarray, duration: np.ndarray,
              fed: np.ndarray) -> None:
        """Requests reported as started have ended after `duration` of execution (the model gives the start-up
        wait its own way). `startup`: the request's wait from arrival to the start of execution (the start-up, or
        a queue at the instance bound), which says which of the model's open requests it is.
        `fed`: the model runs it already (`InFlight.take` says), else it is not replayed yet.
        A request the model runs ends at its start in the model + `duration`, or now if that has passed."""
        fed = np.asarray(fed, bool)
        if (~fed).any():
            self.reported(np.asarray(func)[~fed], np.asarray(arrival)[~fed], np.asarray(duration)[~fed])
        if fed.any():
            _finish_open(np.asarray(func, np.int64)[fed], np.asarray(arrival, np.float64)[fed],
                         np.asarray(startup, np.float64)[fed], np.maximum(np.asarray(duration, np.float64)[fed], 0.0),
                         self.now, self.state.hk,
                         self.state.hp, self.state.gi, self.state.isi, self.state.rqf, self.state.rqi)

    def adopt(self, func: np.ndarray, count: np.ndarray, now: float) -> None:
        """Instances already running when the fleet first meets their functions: counted as just used (a
        request of no duration each, at `now`), so the policy's keep-alive decides their fate rather than an
        abrupt release."""
        f = np.repeat(np.asarray(func, np.int64), np.asarray(count, np.int64))
        self.reported(f, np.full(len(f), now), np.zeros(len(f)))

    # ------------------------------------------------------------------ the model
    def advance(self, now: float) -> None:
        """Run the model to `now` with every request reported so far.

        Requests that arrived before the time the model stands at (still running when it last advanced, or
        a backlog read late) are replayed from that time on, each function's shifted by one amount: they keep
        their order, spacing, durations and overlaps, as they happened, a little later, rather than arriving
        at once as a burst (which would start instances they never needed) or cut short (which would hide
        the instances they kept busy)."""
        self._gather()
        if not np.isfinite(self.now):  # the clock starts: at the first request reported, or now
            self.now = float(np.concatenate([[now], self._arr, self.inflight.arrival]).min())
        elif now <= self.now:
            return
        late = np.flatnonzero(self._arr < self.now)
        if len(late):
            # Per function, the late requests move together, by as much as the earliest of them is late: they
            # keep their overlaps (the instances they needed at once) and their durations.
            f = self._func[late]
            earliest = np.full(self.n, np.inf)
            np.minimum.at(earliest, f, self._arr[late])
            self._arr[late] += self.now - earliest[f]
            np.maximum.at(self._behind_until, f, self._arr[late] + self._dur[late])
        take = self._arr < now
        order = np.flatnonzero(take)[np.argsort(self._arr[take], kind="stable")]
        arr, func, dur = self._arr[order], self._func[order], self._dur[order]
        keep = ~take
        self._arr, self._func, self._dur = self._arr[keep], self._func[keep], self._dur[keep]
        arr, func, dur = self._open_requests(now, arr, func, dur)
        self.state.advance(now, arr, func, dur, 0)
        self.state.drop_idle_times()  # the engine logs idle times for policies; nobody reads the fleet's
        self.now = now

    def _open_requests(self, now: float, arr: np.ndarray, func: np.ndarray,
                       dur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add the requests in flight that arrived before `now` and the model does not run yet to the requests
        to replay, as requests with no end (OPEN_S); end the ones whose end is overdue (lost)."""
        inf = self.inflight
        f_old, a_old, fed_old = inf.expire(now - MAX_OPEN_S)
        if fed_old.any():
            _finish_open(f_old[fed_old], a_old[fed_old], np.zeros(int(fed_old.sum())), np.zeros(int(fed_old.sum())),
                         self.now, self.state.hk,
                         self.state.hp, self.state.gi, self.state.isi, self.state.rqf, self.state.rqi)
        new = np.flatnonzero(~inf.fed & (inf.arrival < now))
        if not len(new):
            return arr, func, dur
        inf.fed[new] = True
        # A start read after the model passed its arrival runs from where the model stands.
        a = np.maximum(inf.arrival[new], self.now)
        arr, func = np.concatenate([arr, a]), np.concatenate([func, inf.func[new]])
        dur = np.concatenate([dur, np.full(len(new), OPEN_S)])
        order = np.argsort(arr, kind="stable")
        return arr[order], func[order], dur[order]

    def apply(self, now: float, actions: Actions) -> None:
        if np.isfinite(self.now):
            self.advance(now)
        # else: a policy's first settings; the model's clock starts with the first requests or `desired`, so
        # that a backlog reported with them replays at the times it happened
        self.state.apply(now, actions)

    def behind(self) -> np.ndarray:
        """Functions whose model is still replaying requests reported late (until the last of them ends in the
        model): it may hold fewer instances than the platform ran for them, and will catch up."""
        return self._behind_until > self.now

    def count(self) -> np.ndarray:
        """Instances each function holds in the model now (starting, idle or busy)."""
        return self.state.fi[:, E.F_ALIVE].copy()

    def desired(self, now: float, lead: np.ndarray | float = 0.0) -> np.ndarray:
        """Instances each function should hold: what the model holds at `now`, plus the pre-warms that its
        pre-warming windows start before `now + lead` (a start-up must begin in time), within budget awards.

        Under a binding award the simulator keeps idle instances beyond it until memory is needed elsewhere
        (the memory cap evicts them); a live platform has no such cap, so the fleet does not ask to hold idle
        instances beyond an award (starting and busy ones stay: they cannot be released)."""
        self.advance(now)
        fi, fs = self.state.fi, self.state.fs
        lead = np.broadcast_to(np.asarray(lead, np.float64), (self.n,))
        due = (fi[:, E.F_PEND] > 0) & (fs[:, E.S_PW_AT] <= now + lead)
        cap = self.cap()
        held = np.minimum(self.count(), np.maximum(cap, fi[:, E.F_STARTING] + fi[:, E.F_BUSY]))
        return held + np.minimum(np.where(due, fi[:, E.F_PEND], 0), np.maximum(cap - held, 0))

    def cap(self) -> np.ndarray:
        """The most instances each function may be asked for under its budget awards (the platform cannot tell
        idle replicas from busy ones, so an award of idle instances caps the count too)."""
        hold = self.state.fs[:, E.S_MAX_HOLD]
        hold = np.where(np.isfinite(hold), np.maximum(hold, 0), UNLIMITED).astype(np.int64)
        return np.minimum(self.limit, hold)

    @property
    def limit(self) -> np.ndarray:
        """Budget award: the most instances each function may run (`UNLIMITED` without one)."""
        return self.state.fi[:, E.F_MAXINST]


@njit(cache=True)
def _finish_open(func, arrival, startup, duration, now, hk, hp, gi, isi, rqf, rqi):
    """End requests the model runs with no end (OPEN_S): each at its start in the model + its duration, or `now`
    if later. The model knows its open requests by function and start of execution: each end goes to the one of
    its function that started closest to its own start (arrival + start-up wait), if running (its completion, in
    the heap, moves up to the new time), or that arrived closest to its arrival, if still waiting for an instance
    (it gets its duration)."""
    for k in range(len(func)):
        f, a, began = func[k], arrival[k], arrival[k] + startup[k]
        best, best_d, in_heap = -1, np.inf, True
        for j in range(gi[E.G_HSIZE]):  # the main heap: completions are there, expiries are not
            p = hp[E.H_MAIN, j]
            if (p >> 60) != E.EV_DONE or hk[E.H_MAIN, j] < 0.5 * OPEN_S or isi[p & 0xFFFFFFFF, E.I_FUNC] != f:
                continue
            d = abs(hk[E.H_MAIN, j] - OPEN_S - began)
            if d < best_d:
                best, best_d = j, d
        for r in range(rqi.shape[0]):
            if rqi[r, E.R_STATE] != E.RQ_FREE and rqi[r, E.R_FUNC] == f and rqf[r, E.R_DUR] >= 0.5 * OPEN_S:
                d = abs(rqf[r, E.R_ARR] - a)
                if d < best_d:
                    best, best_d, in_heap = r, d, False
        if best < 0:
            continue
        if not in_heap:
            rqf[best, E.R_DUR] = duration[k]
            continue
        t = max(hk[E.H_MAIN, best] - OPEN_S + duration[k], now)
        E._sift_up(hk, hp, isi, E.H_MAIN, best, t, hp[E.H_MAIN, best])
