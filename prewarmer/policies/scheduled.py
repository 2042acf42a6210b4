"""`ScheduledPolicy`: any policy under warm-floor rules (`prewarmer.schedules`): scheduled minimum warm counts,
and per-function steering toward a cold-start target within an idle-memory budget.

Floor. Each tick the wrapped policy decides as always; the wrapper adds `Actions.min_instances`, the largest
`minWarm` of the open windows of the function's rules (0 outside them). The engine (replay's simulator and the
live sidecar's warm fleet, the same code) then holds max(floor, what the policy's own verbs keep): missing
instances start at once, idle ones are neither released nor expired below the floor, whatever keep-alive,
pre-warm window, `scale_to` or `release_idle` the policy chose. A window's floor is raised `lead_s` (one tick +
10 s) before it opens, so the instances are warm when it does, and lowered at the first tick after it closes;
the idle instances it held then expire under the policy's keep-alive, counted from when each idled. With a
floor of 0 the engine behaves exactly as without one: outside the windows the policy is untouched.

Steering. A function with a target (`coldStartPct`) or a budget (`idleGbSecondsPerHour`) has a level, moved one
step at a time on what was measured at the current level (since its last change, at least `steer_s`, 10 min,
and `min_arrivals` invocations): up when its cold-start share is above the target and it is within its budget,
down when it is over its budget and at or below the target (or has too few invocations to tell); with a budget
and no target, back up toward 0 once under half the budget. Without a budget a level does not come down: give
one to let steering trade cold starts back for memory. Level 0 is the policy itself; levels 1..5 keep instances
longer (keep-alive and surplus keep-alive at least 10 m, 30 m, 1 h, 2 h, 4 h; no release-on-idle pre-warm
windows) and, from level 3, add to the floor the 50th, 90th or 100th percentile of the function's per-minute
peak of requests in flight over the last hour (the quantile the level provisions); levels -1 and -2 (budget
only) cap its keep-alives at 5 m and 1 m (never 0: releasing every instance as it idles makes every request of a
busy function cold, which no budget is worth). These are verbs every policy's actions use, so
steering works the same around fixed, hybrid, kpa and marl (whose own choices keep deciding above the floor).

Budgets (`+bid`): the wrapper passes bids and awards through; an award's instance limit still caps the floor
(the budget is the harder limit: `_start` refuses beyond it).
"""

from __future__ import annotations

import math

import numpy as np

from prewarmer.actions import Actions
from prewarmer.coord.auction import Award, Bids
from prewarmer.observation import Observation
from prewarmer.policies.base import Policy, pad
from prewarmer.schedules import RuleIndex, RuleSet
from prewarmer.workloads.base import FunctionTable

#: Keep-alive floor (s) of steering levels 1..5, and the peak quantile each provisions (NaN: none).
LEVEL_KEEP_ALIVE_S = np.array([0.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0])
LEVEL_PEAK_Q = np.array([np.nan, np.nan, np.nan, 0.5, 0.9, 1.0])
#: Keep-alive cap (s) of budget levels -1, -2.
LEVEL_KEEP_ALIVE_CAP_S = np.array([np.inf, 300.0, 60.0])
MIN_LEVEL, MAX_LEVEL = -2, 5
PEAK_MINUTES = 60
# The engine's settings before a policy first sets them (`SimState`).
_DEFAULTS = (("keep_alive_s", 600.0), ("surplus_keep_alive_s", np.inf), ("prewarm_delay_s", 0.0))


class ScheduledPolicy(Policy):
    """`inner` under `rules`. Around a bidding policy (`<policy>+bid`) it is a bidding policy too."""

    def __new__(cls, inner: Policy | None = None, rules: RuleSet | None = None, **kwargs: float) -> ScheduledPolicy:
        # Whether the inner policy bids is read off its methods (its `held` appears only at reset). Unpickling
        # calls this without arguments, with the class that was pickled.
        if cls is ScheduledPolicy and all(callable(getattr(type(inner), m, None)) for m in ("bids", "settle")):
            cls = ScheduledBiddingPolicy
        return super().__new__(cls)

    def __init__(self, inner: Policy, rules: RuleSet, lead_s: float | None = None, steer_s: float = 600.0,
                 min_arrivals: int = 5) -> None:
        self.inner = inner
        self.tick_s = inner.tick_s or 60.0  # a floor needs ticks even around a policy that acts only at reset
        self.spec = inner.spec  # the sidecar restores checkpoints by spec: the rules are not part of it
        self.lead_s = self.tick_s + 10.0 if lead_s is None else lead_s
        self.steer_s, self.min_arrivals = steer_s, min_arrivals
        self.rules = rules
        self.index = RuleIndex(rules, self.lead_s)
        self.names: list[str] = []
        self.labels: list[dict[str, str]] = []
        self.last: dict[str, np.ndarray] = {}
        self._start_state()

    @property
    def events(self) -> list[str]:
        return getattr(self.inner, "events", [])

    # ------------------------------------------------------------------ functions and rules
    def reset(self, functions: FunctionTable, now: float) -> Actions:
        actions = self.inner.reset(functions, now)
        self.attach(functions)
        self._track(actions)
        return actions

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        actions = self.inner.grow(functions, now)
        self._pad(len(functions))
        self.bind_functions(functions)
        self._track(actions)
        return actions

    def attach(self, functions: FunctionTable) -> None:
        """Start the wrapper's own state for `functions` around an inner policy that already runs them (reset
        does this too; the sidecar calls it to put rules around a policy restored from a checkpoint)."""
        self._start_state()
        self._pad(len(functions))
        self.bind_functions(functions)

    def _start_state(self) -> None:
        self.n = 0
        self.inner_settings = {name: np.zeros(0) for name, _ in _DEFAULTS}
        self.level = np.zeros(0, np.int64)
        self.restore = np.zeros(0, bool)  # functions whose own settings are to be given back at the next tick
        # Measured since each function's level last changed: invocations, cold starts, idle GB-s, seconds.
        self.arr_s, self.cold_s = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.idle_gb_s, self.secs = np.zeros(0), np.zeros(0)
        self.peaks = np.zeros((0, PEAK_MINUTES), np.int32)
        self.minute_peak = np.zeros(0, np.int64)
        self.minute: int | None = None
        self.steer_floor = np.zeros(0, np.int64)
        self.next_provision = -math.inf

    def _pad(self, n: int) -> None:
        for name, default in _DEFAULTS:
            self.inner_settings[name] = pad(self.inner_settings[name], n, default)
        self.level = pad(self.level, n, 0)
        self.restore = pad(self.restore, n, False)
        self.arr_s, self.cold_s = pad(self.arr_s, n, 0), pad(self.cold_s, n, 0)
        self.idle_gb_s, self.secs = pad(self.idle_gb_s, n, 0.0), pad(self.secs, n, 0.0)
        self.peaks = pad(self.peaks, n, 0)
        self.minute_peak = pad(self.minute_peak, n, 0)
        self.steer_floor = pad(self.steer_floor, n, 0)
        self.n = n

    def bind_functions(self, functions: FunctionTable) -> None:
        """Match the functions (names; labels, live) to the rules again, e.g. after their labels changed."""
        self.names = list(functions.names)
        self.labels = list(functions.labels) if functions.labels else [{} for _ in self.names]
        self.index.bind(self.names, self.labels)
        self._drop_unsteered()

    def set_rules(self, rules: RuleSet) -> None:
        """Swap the rules (live): floors follow from the next tick; functions no longer steered go back to
        their policy's own settings."""
        self.rules = rules
        self.index = RuleIndex(rules, self.lead_s)
        self.index.bind(self.names, self.labels)
        self._drop_unsteered()

    def _drop_unsteered(self) -> None:
        steered = self._steered()
        self.restore |= (self.level != 0) & ~steered
        self.level = np.where(steered, self.level, 0)
        self.steer_floor = np.where(steered, self.steer_floor, 0)
        self.arr_s[~steered], self.cold_s[~steered] = 0, 0  # it measures again from when it is steered
        self.idle_gb_s[~steered], self.secs[~steered] = 0.0, 0.0

    def _steered(self) -> np.ndarray:
        return ~np.isnan(self.index.target_pct) | ~np.isnan(self.index.budget_gb_s_per_h)

    # ------------------------------------------------------------------ the tick
    def decide(self, now: float, obs: Observation) -> Actions:
        actions = self.inner.decide(now, obs)
        self._track(actions)
        floor = self.index.floor(obs.epoch_s + now)
        steered = self._steered()
        changed = np.zeros(self.n, bool)
        if steered.any():
            self._measure(now, obs, steered)
            changed = self._steer(steered)
        if self.restore.any():
            changed |= self.restore
            self.restore = np.zeros(self.n, bool)
        self._override(actions, (self.level != 0) | changed)
        want = np.maximum(floor, self.steer_floor)
        if actions.min_instances is not None:
            want = np.maximum(want, actions.min_instances)
        actions.min_instances = want.astype(np.int64)
        self.last = {"floor": floor, "level": self.level.copy(), "min_instances": actions.min_instances}
        return actions

    def _track(self, actions: Actions) -> None:
        """Remember the inner policy's own settings (NaN / None: unchanged), which the levels start from."""
        for name, _ in _DEFAULTS:
            cur = getattr(actions, name)
            if cur is not None:
                last = self.inner_settings[name]
                last[:] = np.where(np.isnan(cur), last, cur)

    def _measure(self, now: float, obs: Observation, steered: np.ndarray) -> None:
        """Count the tick for the steered functions (the others start from zero when they are steered), and keep
        every function's per-minute peaks (the quantile floors read the last hour of them)."""
        self.arr_s = self.arr_s + np.where(steered, obs.arrivals, 0)
        self.cold_s = self.cold_s + np.where(steered, obs.cold_starts, 0)
        self.idle_gb_s = self.idle_gb_s + np.where(steered, obs.wasted_gb_s, 0.0)
        self.secs = self.secs + np.where(steered, obs.dt, 0.0)
        minute = int(now // 60.0)
        if self.minute is None:
            self.minute = minute
        if minute != self.minute:  # close the minute (and clear the ones no tick saw)
            self.peaks[:, self.minute % PEAK_MINUTES] = np.minimum(self.minute_peak, np.iinfo(np.int32).max)
            for m in range(self.minute + 1, min(minute, self.minute + PEAK_MINUTES + 1)):
                self.peaks[:, m % PEAK_MINUTES] = 0
            self.minute_peak = np.zeros(self.n, np.int64)
            self.minute = minute
        if now >= self.next_provision:
            self._provision()
            self.next_provision = now + self.steer_s
        self.minute_peak = np.maximum(self.minute_peak, obs.peak_in_flight)

    def cold_start_pct(self) -> np.ndarray:
        """Each function's cold-start share (%) since its level last changed (NaN: no invocation since)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.arr_s > 0, 100.0 * self.cold_s / self.arr_s, np.nan)

    def idle_gb_s_per_hour(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.secs > 0, 3600.0 * self.idle_gb_s / self.secs, 0.0)

    def _steer(self, steered: np.ndarray) -> np.ndarray:
        """A step for each steered function whose current level has been measured long enough; returns where
        the level changed (their measurements start over)."""
        target, budget = self.index.target_pct, self.index.budget_gb_s_per_h
        has_target, has_budget = ~np.isnan(target), ~np.isnan(budget)
        ripe = steered & (self.secs >= self.steer_s)
        if not ripe.any():
            return np.zeros(self.n, bool)
        idle = self.idle_gb_s_per_hour()
        with np.errstate(invalid="ignore"):
            over = has_budget & (idle > budget)
            roomy = has_budget & (idle < budget / 2)
            # a cold start is evidence from the first invocation: the share counts at least `min_arrivals`
            above = has_target & (100.0 * self.cold_s > target * np.maximum(self.arr_s, self.min_arrivals))
        up = ripe & ((above & ~over) | (~has_target & roomy & (self.level < 0)))
        down = ripe & over & ~above
        new = np.clip(self.level + up.astype(np.int64) - down.astype(np.int64), MIN_LEVEL, MAX_LEVEL)
        changed = new != self.level
        if changed.any():
            self.level = new
            self.arr_s[changed], self.cold_s[changed] = 0, 0
            self.idle_gb_s[changed], self.secs[changed] = 0.0, 0.0
            self._provision()
        return changed

    def _provision(self) -> None:
        """The floor each level from 3 on adds: its quantile of the function's per-minute peaks over the last hour
        (the current minute's so far included), refreshed every `steer_s` and when levels change."""
        self.steer_floor = np.zeros(self.n, np.int64)
        for lv in range(3, MAX_LEVEL + 1):
            sel = np.flatnonzero(self.level == lv)
            if len(sel):
                window = np.concatenate([self.peaks[sel], np.minimum(self.minute_peak[sel, None], 1 << 30)], axis=1)
                k = int(math.ceil(LEVEL_PEAK_Q[lv] * (window.shape[1] - 1)))  # numpy's "higher" quantile
                self.steer_floor[sel] = np.partition(window, k, axis=1)[:, k]

    def _override(self, actions: Actions, where: np.ndarray) -> None:
        """Settings of the functions `where` (a level in force, or just changed) from their level."""
        if not where.any():
            return
        lv = self.level[where]
        ka, surplus = self.inner_settings["keep_alive_s"][where], self.inner_settings["surplus_keep_alive_s"][where]
        pw = self.inner_settings["prewarm_delay_s"][where]
        up = np.maximum(lv, 0)
        cap = LEVEL_KEEP_ALIVE_CAP_S[np.maximum(-lv, 0)]
        ka = np.minimum(np.maximum(ka, LEVEL_KEEP_ALIVE_S[up]), cap)
        surplus = np.minimum(np.maximum(surplus, LEVEL_KEEP_ALIVE_S[up]), cap)
        pw = np.where(lv > 0, 0.0, pw)
        for name, value in (("keep_alive_s", ka), ("surplus_keep_alive_s", surplus), ("prewarm_delay_s", pw)):
            cur = getattr(actions, name)
            cur = np.full(self.n, np.nan) if cur is None else np.array(cur, np.float64)
            cur[where] = value
            setattr(actions, name, cur)

    def describe(self) -> dict:
        levels = {int(k): int(v) for k, v in zip(*np.unique(self.level, return_counts=True), strict=True)} \
            if self.n else {}
        return {**self.inner.describe(), "schedules": {
            "rules": len(self.rules.rules), "lead_s": self.lead_s, "steer_s": self.steer_s,
            "min_arrivals": self.min_arrivals, "functions_with_rules": int(sum(len(m) for m in self.index.members)),
            "levels": levels}}


class ScheduledBiddingPolicy(ScheduledPolicy):
    """`ScheduledPolicy` around a bidding policy: bids, capacity and awards are the inner policy's."""

    @property
    def held(self) -> np.ndarray:
        return self.inner.held

    def bids(self, obs: Observation) -> Bids:
        return self.inner.bids(obs)

    def capacity(self, obs: Observation) -> float:
        return self.inner.capacity(obs)

    def settle(self, actions: Actions, award: Award | None, obs: Observation) -> Actions:
        floor = actions.min_instances
        out = self.inner.settle(actions, award, obs)
        out.min_instances = floor
        return out
