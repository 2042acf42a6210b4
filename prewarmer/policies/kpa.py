"""Knative Pod Autoscaler (KPA) with its defaults, deciding every 2 s for all functions at once.

Mirrors `pkg/autoscaler/scaling`: desired = ceil(window-average concurrency / target) over a 60 s
stable and a 6 s panic window; panic mode starts when the panic desire reaches 200% of the ready
instances and holds for a stable window (no scale-down meanwhile); scale-down is limited to halving
per tick; scale to zero happens after the stable window saw no traffic plus a 30 s grace period.
The per-instance target is `min(100, container concurrency) × 70%`, as Knative derives it when a
hard container-concurrency limit is set (the simulator's instances serve 1 request by default).
"""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.policies.base import Policy, pad
from prewarmer.workloads.base import FunctionTable


class KnativePolicy(Policy):
    def __init__(self, tick_s: float = 2.0, stable_window_s: float = 60.0, panic_window_pct: float = 10.0,
                 panic_threshold_pct: float = 200.0, target: float = 100.0, target_utilization: float = 0.7,
                 container_concurrency: int = 1, scale_to_zero_grace_s: float = 30.0,
                 max_scale_down_rate: float = 2.0, max_scale_up_rate: float = 1000.0) -> None:
        self.tick_s = tick_s
        self.stable_n = max(1, int(round(stable_window_s / tick_s)))
        self.panic_n = max(1, int(round(stable_window_s * panic_window_pct / 100.0 / tick_s)))
        self.panic_threshold = panic_threshold_pct / 100.0
        self.target = min(target, container_concurrency) * target_utilization
        self.grace_s = scale_to_zero_grace_s
        self.down_rate, self.up_rate = max_scale_down_rate, max_scale_up_rate
        self.params = dict(tick_s=tick_s, stable_window_s=stable_window_s, panic_window_pct=panic_window_pct,
                           panic_threshold_pct=panic_threshold_pct, target=target,
                           target_utilization=target_utilization, container_concurrency=container_concurrency,
                           scale_to_zero_grace_s=scale_to_zero_grace_s)
        self.spec = "kpa"

    def reset(self, functions: FunctionTable, now: float) -> Actions:
        n = len(functions)
        self.history = np.zeros((self.stable_n, n))  # ring buffer of per-tick average concurrency
        self.k = 0
        self.panic_until = np.full(n, -np.inf)
        self.max_panic = np.zeros(n, np.int64)
        self.zero_since = np.full(n, -np.inf)  # when the stable desire first dropped to zero
        # Instances live until the autoscaler removes them; requests arriving with none ready start one
        # (the activator path), which the next tick's concurrency then accounts for.
        return Actions(keep_alive_s=np.full(n, np.inf), prewarm_delay_s=np.zeros(n))

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        n, first = len(functions), self.history.shape[1]
        self.history = pad(self.history, n, 0.0, axis=1)
        self.panic_until = pad(self.panic_until, n, -np.inf)
        self.max_panic = pad(self.max_panic, n, 0)
        self.zero_since = pad(self.zero_since, n, -np.inf)
        return Actions(keep_alive_s=np.full(n, np.inf), prewarm_delay_s=np.zeros(n)).only_from(first)

    def decide(self, now: float, obs: Observation) -> Actions:
        self.history[self.k % self.stable_n] = obs.concurrency
        self.k += 1
        filled = min(self.k, self.stable_n)
        stable = self.history[:filled].mean(axis=0) if filled < self.stable_n else self.history.mean(axis=0)
        last = [(self.k - 1 - j) % self.stable_n for j in range(min(self.panic_n, filled))]
        panic = self.history[last].mean(axis=0)
        ready = np.maximum(obs.alive - obs.starting, 1)
        want_stable = np.ceil(stable / self.target - 1e-9).astype(np.int64)
        want_panic = np.ceil(panic / self.target - 1e-9).astype(np.int64)
        want_stable = np.minimum(want_stable, np.ceil(ready * self.up_rate).astype(np.int64))
        want_panic = np.minimum(want_panic, np.ceil(ready * self.up_rate).astype(np.int64))
        start_panic = want_panic / ready >= self.panic_threshold
        self.panic_until = np.where(start_panic, now + self.stable_n * self.tick_s, self.panic_until)
        in_panic = now < self.panic_until
        self.max_panic = np.where(in_panic, np.maximum(self.max_panic, np.maximum(want_panic, obs.alive)), 0)
        desired = np.where(in_panic, self.max_panic, want_stable)
        floor = np.floor(obs.alive / self.down_rate).astype(np.int64)
        desired = np.where(desired < obs.alive, np.maximum(desired, floor), desired)
        # Scale to zero only after the grace period once the stable window saw nothing.
        zero = desired == 0
        self.zero_since = np.where(zero, np.where(np.isinf(self.zero_since), now, self.zero_since), -np.inf)
        hold = zero & (now - self.zero_since < self.grace_s) & (obs.alive > 0)
        desired = np.where(hold, 1, desired)
        return Actions(scale_to=desired)

    def describe(self) -> dict:
        return {"spec": self.spec, **self.params, "target_per_instance": self.target}
