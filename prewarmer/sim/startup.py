"""Start-up time models: how long a new instance takes before it can serve.

Every model is identical for all policies in a run. Specs on the command line:
`constant:1s` (default, as dslab-faas), `per-function[:default]` (the workload's own cold-start
times, e.g. from `--workload poisson`), `memory:base=0.5,per_gb=1.0` (grows with memory size) and
`lognormal:median=1,sigma=0.5` (a random draw per start, seeded with the run). Any of them takes
`per_start=DURATION`: each start-up grows by that much for every other instance (any function) starting when it
begins, as on a gateway that spawns processes on a few cores (`per-function:per_start=0.02`); and
`by_policy=DURATION`: an instance the policy starts (a tick's scale-up, a prewarm) takes that much longer than
one a request starts (a controller sharing the machine works at its tick).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prewarmer.units import parse_duration
from prewarmer.workloads.base import FunctionTable


@dataclass(frozen=True)
class StartupModel:
    kind: str = "constant"
    seconds: float = 1.0  # constant value, default for per-function, median for lognormal
    base_s: float = 0.5
    per_gb_s: float = 1.0
    sigma: float = 0.0
    per_starting_s: float = 0.0  # added per other instance starting at the same time
    by_policy_s: float = 0.0  # added to an instance the policy starts (a scale-up or prewarm, not a request)

    def per_function(self, functions: FunctionTable) -> tuple[np.ndarray, np.ndarray]:
        """(median start-up seconds, lognormal sigma) per function."""
        n = len(functions)
        if self.kind == "per-function":
            base = np.where(np.isnan(functions.cold_start_s), self.seconds, functions.cold_start_s)
        elif self.kind == "memory":
            base = self.base_s + self.per_gb_s * functions.memory_mb / 1024.0
        else:
            base = np.full(n, self.seconds)
        return base.astype(np.float64), np.full(n, self.sigma if self.kind == "lognormal" else 0.0)

    def describe(self) -> dict:
        if self.kind == "memory":
            doc = {"kind": "memory", "base_s": self.base_s, "per_gb_s": self.per_gb_s}
        elif self.kind == "lognormal":
            doc = {"kind": "lognormal", "median_s": self.seconds, "sigma": self.sigma}
        else:
            doc = {"kind": self.kind, "seconds": self.seconds}
        if self.per_starting_s:
            doc["per_starting_s"] = self.per_starting_s
        if self.by_policy_s:
            doc["by_policy_s"] = self.by_policy_s
        return doc


def parse_startup(spec: str) -> StartupModel:
    kind, _, rest = spec.partition(":")
    params = dict(p.split("=", 1) if "=" in p else ("", p) for p in rest.split(",") if p)
    known = {"constant": {""}, "per-function": {""}, "memory": {"base", "per_gb"}, "lognormal": {"median", "sigma"}}
    if kind not in known:
        raise ValueError(f"unknown start-up model {spec!r} (constant:1s, per-function, memory:base=..,per_gb=.., "
                         "lognormal:median=..,sigma=..; any with per_start=.., by_policy=..)")
    unknown = set(params) - known[kind] - {"per_start", "by_policy"}
    if unknown:
        raise ValueError(f"start-up model {spec!r}: unknown setting {sorted(unknown)[0]!r}")
    try:
        shared = {"per_starting_s": parse_duration(params.get("per_start", "0")),
                  "by_policy_s": parse_duration(params.get("by_policy", "0"))}
        if kind == "memory":
            return StartupModel("memory", base_s=parse_duration(params.get("base", "0.5")),
                                per_gb_s=parse_duration(params.get("per_gb", "1.0")), **shared)
        if kind == "lognormal":
            return StartupModel("lognormal", seconds=parse_duration(params.get("median", "1")),
                                sigma=float(params.get("sigma", "0.5")), **shared)
        return StartupModel(kind, seconds=parse_duration(params.get("", "1s")), **shared)
    except ValueError as e:
        raise ValueError(f"start-up model {spec!r}: {e}") from None
