"""Turns a policy's actions into the number of instances each function should hold right now.

The simulator applies `Actions` to individual instances; a live platform only takes a replica
count (OpenFaaS replicas, Knative min-scale, Deployment scale). `WarmFleet` keeps the same
instance-level bookkeeping as the simulator, fed by invocation events (instance id and completion
time), and answers "how many instances would the simulator keep at time t": every instance whose
keep-alive has not run out (the function's last instance under `keep_alive_s`, the others under
`min(keep_alive_s, surplus_keep_alive_s)`), the pre-warmed instance of a function under a
pre-warming window, and instances started by `prewarm` / `scale_to`. The count is the larger of
those at `now` and at `now + lead`, so a pre-warm is requested early enough for the start-up to
finish in time. All times are policy seconds.

Instances and holds live in flat arrays (function, time) so one control tick for 10k functions is
a few numpy passes, not a Python loop over functions.
"""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions


class WarmFleet:
    def __init__(self, n: int) -> None:
        self.n = n
        self.keep_alive = np.full(n, 600.0)
        self.surplus = np.full(n, np.inf)
        self.prewarm_delay = np.zeros(n)
        self.last_done = np.full(n, -np.inf)
        # Awards of a budget coordinator: max_instances, and max_hold (the platform cannot tell idle
        # replicas from busy ones, so an idle-instance award caps the count too).
        self.limit = np.full(n, np.iinfo(np.int64).max)
        self.hold = np.full(n, np.iinfo(np.int64).max)
        self.slot: dict[tuple[int, str], int] = {}  # (function, instance id) -> index into inst_*
        self.inst_func = np.zeros(0, np.int64)
        self.inst_done = np.zeros(0)
        self.hold_func = np.zeros(0, np.int64)  # instances started by prewarm / scale_to, never used yet
        self.hold_until = np.zeros(0)

    def grow(self, n: int) -> None:
        """Room for newly discovered functions (appended at the end, defaults as in the simulator)."""
        add = n - self.n
        if add <= 0:
            return
        self.keep_alive = np.concatenate([self.keep_alive, np.full(add, 600.0)])
        self.surplus = np.concatenate([self.surplus, np.full(add, np.inf)])
        self.prewarm_delay = np.concatenate([self.prewarm_delay, np.zeros(add)])
        self.last_done = np.concatenate([self.last_done, np.full(add, -np.inf)])
        self.limit = np.concatenate([self.limit, np.full(add, np.iinfo(np.int64).max)])
        self.hold = np.concatenate([self.hold, np.full(add, np.iinfo(np.int64).max)])
        self.n = n

    def completed_many(self, func: np.ndarray, instances: list[str], done: np.ndarray) -> None:
        """Instances finished requests at `done` (policy time); any order."""
        new_f, new_d = [], []
        base = len(self.inst_func)
        for f, inst, d in zip(func.tolist(), instances, done.tolist(), strict=True):
            key = (f, inst)
            j = self.slot.get(key)
            if j is None:
                self.slot[key] = base + len(new_f)
                new_f.append(f)
                new_d.append(d)
            elif j >= base:
                new_d[j - base] = max(new_d[j - base], d)
            elif self.inst_done[j] < d:
                self.inst_done[j] = d
        if new_f:
            self.inst_func = np.concatenate([self.inst_func, np.asarray(new_f, np.int64)])
            self.inst_done = np.concatenate([self.inst_done, np.asarray(new_d)])
        if len(func):
            np.maximum.at(self.last_done, np.asarray(func, np.int64), np.asarray(done, np.float64))

    def completed(self, func: int, instance: str, done: float) -> None:
        self.completed_many(np.array([func]), [instance], np.array([done]))

    def apply(self, now: float, actions: Actions) -> None:
        def put(name: str, arr: np.ndarray | None) -> None:
            if arr is not None:
                a = np.asarray(arr, np.float64)
                m = ~np.isnan(a)
                getattr(self, name)[m] = a[m]

        put("keep_alive", actions.keep_alive_s)
        put("surplus", actions.surplus_keep_alive_s)
        put("prewarm_delay", actions.prewarm_delay_s)
        if actions.max_instances is not None:
            m = np.asarray(actions.max_instances, np.int64)
            self.limit = np.where(m >= 0, m, self.limit)
        if actions.max_hold is not None:
            h = np.asarray(actions.max_hold, np.float64)
            big = np.iinfo(np.int64).max
            finite = np.isfinite(h)
            self.hold = np.where(np.isnan(h), self.hold,
                                 np.where(finite, np.maximum(np.where(finite, h, 0), 0).astype(np.int64), big))
        drop = np.zeros(self.n, np.int64)
        if actions.release_idle is not None:
            drop = np.maximum(np.asarray(actions.release_idle, np.int64), 0)
        adds = np.zeros(self.n, np.int64)
        if actions.scale_to is not None:
            target = np.asarray(actions.scale_to, np.int64)
            touched = target >= 0
            if touched.any():
                have = np.where(touched, self.count(now), 0)
                adds = np.where(touched, np.maximum(target - have, 0), 0)
                drop = np.maximum(drop, np.where(touched, have - target, 0))
        if drop.any():
            self._release(drop)
        if actions.prewarm is not None:
            adds += np.maximum(np.asarray(actions.prewarm, np.int64), 0)
        if adds.any():
            f = np.repeat(np.arange(self.n), adds)
            self.hold_func = np.concatenate([self.hold_func, f])
            self.hold_until = np.concatenate([self.hold_until, now + self.keep_alive[f]])

    def _release(self, k: np.ndarray) -> None:
        """Release up to k[f] instances of every function f, oldest first, as the simulator does:
        holds (never used) before used instances. One pass over all functions."""
        def oldest(func: np.ndarray, t: np.ndarray, quota: np.ndarray) -> np.ndarray:
            order = np.lexsort((t, func))
            f = func[order]
            rank = np.arange(len(f)) - np.searchsorted(f, f, side="left")
            hit = np.zeros(len(func), bool)
            hit[order[rank < quota[f]]] = True
            return hit
        k = np.asarray(k, np.int64)
        gone = oldest(self.hold_func, self.hold_until, k)
        k = k - np.bincount(self.hold_func[gone], minlength=self.n)
        self.hold_func, self.hold_until = self.hold_func[~gone], self.hold_until[~gone]
        if (k > 0).any() and len(self.inst_func):
            live = np.flatnonzero(np.isfinite(self.inst_done))
            hit = oldest(self.inst_func[live], self.inst_done[live], k)
            self.inst_done[live[hit]] = -np.inf  # dead slots, removed at the next compaction

    def count(self, t: float | np.ndarray) -> np.ndarray:
        """Instances each function holds at time `t` (scalar or one time per function)."""
        n = self.n
        t = np.broadcast_to(np.asarray(t, np.float64), (n,))
        ka = self.keep_alive
        ka_other = np.minimum(ka, self.surplus)
        out = np.bincount(self.hold_func[self.hold_until > t[self.hold_func]], minlength=n)
        has = np.isfinite(self.last_done)
        delay = self.prewarm_delay
        pw = has & (delay > 0)
        # Under a pre-warming window: released when it idles, a fresh instance from last + delay for ka.
        start = self.last_done + delay
        out += pw & (start <= t) & (t < start + ka)
        plain = has & ~pw
        out += plain & (self.last_done + ka > t)
        f, d = self.inst_func, self.inst_done
        live = np.isfinite(d) & plain[f]
        # Every entry but one per function at its last completion time is surplus.
        is_last = live & (d >= self.last_done[f])
        ties = np.maximum(np.bincount(f[is_last], minlength=n) - 1, 0)
        out += ties * (self.last_done + ka_other > t)
        with np.errstate(invalid="ignore"):
            surplus = live & ~is_last & (d + ka_other[f] > t[f])
        out += np.bincount(f[surplus], minlength=n)
        return out

    def desired(self, now: float, lead: np.ndarray | float = 0.0) -> np.ndarray:
        """Instances each function should hold: held now (keep-alive still running) or needed by
        `now + lead` (a pre-warm must start now). Forgets what has expired by `now`."""
        self._compact(now)
        lead = np.broadcast_to(np.asarray(lead, np.float64), (self.n,))
        return np.minimum(np.maximum(self.count(now), self.count(now + lead)), self.cap())

    def cap(self) -> np.ndarray:
        """The most instances each function may be asked for under its budget awards."""
        return np.minimum(self.limit, self.hold)

    def _compact(self, now: float) -> None:
        keep = self.hold_until > now
        if not keep.all():
            self.hold_func, self.hold_until = self.hold_func[keep], self.hold_until[keep]
        f, d = self.inst_func, self.inst_done
        if not len(f):
            return
        ka_other = np.minimum(self.keep_alive, self.surplus)
        # The most recent entry of a function anchors its windows: it stays whatever its age.
        with np.errstate(invalid="ignore"):  # released slots hold -inf, and -inf + inf is nan (not alive)
            alive = np.isfinite(d) & ((d >= self.last_done[f]) | (d + ka_other[f] > now))
        if alive.sum() < 0.75 * len(f):
            keys = sorted(self.slot.items(), key=lambda kv: kv[1])
            idx = np.flatnonzero(alive)
            remap = np.full(len(f), -1)
            remap[idx] = np.arange(len(idx))
            self.slot = {k: int(remap[j]) for k, j in keys if remap[j] >= 0}
            self.inst_func, self.inst_done = f[idx], d[idx]
