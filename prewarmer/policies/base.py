"""The policy contract: handed the time and observations, returns actions; never reads a clock.

Like Knative's decider, a policy is a pure function of (now, observations, its own state), so the
same object runs in the replay simulator, in tests and in the live sidecar.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

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

    def decide(self, now: float, obs: Observation) -> Actions:
        """One control tick for every function at once (arrays in, arrays out)."""
        return Actions.none()

    def describe(self) -> dict:
        """Parameters, written into reports."""
        return {"spec": self.spec}
