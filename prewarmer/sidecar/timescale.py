"""Policy time versus wall time: load tests compress a trace, so one real second may be a policy minute."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeScale:
    """`scale` policy seconds pass per real second; policy time 0 is the Unix time `t0`."""

    t0: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"time scale must be > 0, got {self.scale}")

    def policy(self, unix_s: float) -> float:
        return (unix_s - self.t0) * self.scale

    def seconds(self, real_s: float) -> float:
        """A real duration in policy seconds."""
        return real_s * self.scale

    def real(self, policy_s: float) -> float:
        """A policy duration in real seconds."""
        return policy_s / self.scale
