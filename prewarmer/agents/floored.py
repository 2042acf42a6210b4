"""A policy under a keep-alive floor (issue 13, part 2; spec `floor:SPEC`, e.g. `floor:marl`).

Each tick the inner policy (e.g. `marl`) decides as usual, and the function keeps at least the instances it used in
the last `window_s` (the largest peak of requests in flight over those ticks, at most the instances it has): the
gateway's 10-minute keep-alive holds that pool, `marl` alone releases down to its forecast every tick. The floor
is the engine's `min_instances` verb (a warm floor that starts nothing here, since it never exceeds the instances
alive), so replay and the live fleet apply it alike. Measured in docs/live-vs-replay.md: fewer cold starts than
the gateway alone on every selection, at more idle memory than it, so it is an option, not the default."""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.policies.base import Policy, pad
from prewarmer.workloads.base import FunctionTable


class KeepAliveFloor(Policy):
    def __init__(self, inner: Policy, window_s: float = 600.0) -> None:
        self.inner = inner
        self.tick_s = inner.tick_s or 60.0  # a policy that acts only at reset (fixed) is floored every minute
        self.window = max(1, int(round(window_s / self.tick_s)))
        self.spec = f"floor:{getattr(inner, 'spec', '')}"
        self.peaks = np.zeros((self.window, 0), np.int64)
        self.k = 0

    @property
    def events(self) -> list:
        return getattr(self.inner, "events", [])

    def reset(self, functions: FunctionTable, now: float) -> Actions:
        self.peaks = np.zeros((self.window, len(functions)), np.int64)
        self.k = 0
        return self.inner.reset(functions, now)

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        self.peaks = pad(self.peaks, len(functions), 0, axis=1)
        return self.inner.grow(functions, now)

    def decide(self, now: float, obs: Observation) -> Actions:
        actions = self.inner.decide(now, obs)
        n = len(obs.arrivals)
        self.peaks = pad(self.peaks, n, 0, axis=1)
        self.peaks[self.k % self.window] = obs.peak_in_flight
        self.k += 1
        floor = np.minimum(self.peaks.max(axis=0), obs.alive).astype(np.int64)
        if actions.min_instances is not None:
            floor = np.maximum(floor, actions.min_instances)
        actions.min_instances = floor
        return actions

    def describe(self) -> dict:
        return {**self.inner.describe(), "spec": self.spec, "floor_window_ticks": self.window}
