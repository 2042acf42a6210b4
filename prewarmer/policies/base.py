"""The policy contract: handed the time and observations, returns actions; never reads a clock.

Like Knative's decider, a policy is a pure function of (now, observations, its own state), so the
same object runs in the replay simulator, in tests and in the live sidecar.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.workloads.base import FunctionTable


class Policy(ABC):
    #: Control period in seconds; None means the policy only acts at `reset`.
    tick_s: float | None = None
    #: Short name used in reports, e.g. "fixed:10m".
    spec: str = ""

    @abstractmethod
    def reset(self, functions: FunctionTable, now: float) -> Actions:
        """Start over for these functions; returns the initial settings."""

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        """Take on the functions appended to the table of `reset` (`functions` is the whole table, the
        known functions first) without forgetting what was learned about the others; returns settings
        for the new functions and no change for the known ones. The sidecar calls it when functions
        appear on the platform."""
        raise NotImplementedError(f"{type(self).__name__} cannot take on new functions")

    def decide(self, now: float, obs: Observation) -> Actions:
        """One control tick for every function at once (arrays in, arrays out)."""
        return Actions.none()

    def describe(self) -> dict:
        """Parameters, written into reports."""
        return {"spec": self.spec}


def pad(a: np.ndarray, n: int, fill: float | bool, axis: int = 0) -> np.ndarray:
    """`a` lengthened to `n` along `axis` with `fill` (per-function state of functions just added)."""
    add = n - a.shape[axis]
    if add <= 0:
        return a
    shape = list(a.shape)
    shape[axis] = add
    return np.concatenate([a, np.full(shape, fill, a.dtype)], axis=axis)
