"""Static keep-alive baselines: `fixed` (the platform default) and `always-warm` (the waste bound)."""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.policies.base import Policy
from prewarmer.workloads.base import FunctionTable


class KeepAlivePolicy(Policy):
    """Classic keep-alive: an instance stays warm for `keep_alive_s` after each execution ends."""

    def __init__(self, keep_alive_s: float = 600.0) -> None:
        self.keep_alive_s = keep_alive_s
        self.spec = f"fixed:{_fmt(keep_alive_s)}"

    def reset(self, functions: FunctionTable, now: float) -> Actions:
        self.n = len(functions)
        return Actions(keep_alive_s=np.full(len(functions), self.keep_alive_s),
                       prewarm_delay_s=np.zeros(len(functions)))

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        first = self.n
        return self.reset(functions, now).only_from(first)

    def describe(self) -> dict:
        return {"spec": self.spec, "keep_alive_s": self.keep_alive_s}


class AlwaysWarmPolicy(Policy):
    """One instance per function from the start, and no instance is ever released."""

    spec = "always-warm"

    def reset(self, functions: FunctionTable, now: float) -> Actions:
        n = self.n = len(functions)
        return Actions(keep_alive_s=np.full(n, np.inf), prewarm_delay_s=np.zeros(n),
                       prewarm=np.ones(n, np.int64))

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        first = self.n
        return self.reset(functions, now).only_from(first)


def _fmt(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
