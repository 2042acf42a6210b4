"""Turns a policy's actions into the number of instances each function should hold right now.

The simulator applies `Actions` to individual instances; a live platform only takes a replica count
(OpenFaaS replicas, Knative min-scale, Deployment scale). `WarmFleet` answers "how many instances
would the simulator hold now" by running the simulator itself (`prewarmer.sim.state.SimState`, the
same compiled engine replay uses) on the requests the platform reports: keep-alive, surplus
keep-alive, pre-warming windows, prewarm / scale_to / release, budget awards and the "last instance"
rule have one implementation, in `prewarmer.sim.engine`, for replay and for the live sidecar.

Requests are reported when they complete, so a request still running at a tick is unknown then; it is
replayed when its report comes, from the time the model stands at (see `advance`).
With every request reported the model is exact: the differential test (tests/test_differential.py)
holds it to the replay's instance counts at every tick where no request is in flight.

All times are policy seconds. The model's memory accounting (GB-s) is not used: the platform measures
its own.
"""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.sidecar.observer import DEFAULT_STARTUP_S
from prewarmer.sim import engine as E
from prewarmer.sim.state import SimState

UNLIMITED = E.NO_LIMIT


class WarmFleet:
    def __init__(self, n: int = 0, memory_mb: np.ndarray | None = None) -> None:
        mem = np.full(n, 128.0) if memory_mb is None else np.asarray(memory_mb, np.float64)
        self.state = SimState(mem, np.full(len(mem), DEFAULT_STARTUP_S), np.zeros(len(mem)))
        self.now = -np.inf  # where the model stands (its clock starts at the first call)
        self._behind_until = np.full(len(mem), -np.inf)  # see `behind`
        # Reported requests not yet replayed (arrival, function, execution time).
        self._arr = np.zeros(0)
        self._func = np.zeros(0, np.int64)
        self._dur = np.zeros(0)
        self._batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # reported since; see `_gather`

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
            self.now = now if not len(self._arr) else min(now, float(self._arr.min()))
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
        self.state.advance(now, arr, func, dur, 0)
        self.state.drop_idle_times()  # the engine logs idle times for policies; nobody reads the fleet's
        self.now = now

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
