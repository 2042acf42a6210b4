"""Dry-run and audit records: every decision (with what the policy predicted) and every scale request, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from prewarmer.sidecar.agent import Decision, ShardAgent


class DecisionRecorder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("a", buffering=1)

    def decision(self, t: float, agent: ShardAgent, decision: Decision, desired: np.ndarray) -> None:
        a = decision.actions
        for i, name in enumerate(agent.names):
            row = {"type": "decision", "t": round(t, 3), "policy_now": round(decision.now, 3), "shard": agent.shard,
                   "function": name, "arrivals": int(decision.obs.arrivals[i]),
                   "cold_starts": int(decision.obs.cold_starts[i]), "desired": int(desired[i]),
                   "keep_alive_s": _f(agent.fleet.keep_alive[i]), "prewarm_delay_s": _f(agent.fleet.prewarm_delay[i])}
            if a.prewarm is not None and a.prewarm[i] > 0:
                row["prewarm"] = int(a.prewarm[i])
            if a.scale_to is not None and a.scale_to[i] >= 0:
                row["scale_to"] = int(a.scale_to[i])
            self.fh.write(json.dumps(row) + "\n")

    def scale(self, t: float, function: str, namespace: str, requested: int, applied: int | None, note: str) -> None:
        self.fh.write(json.dumps({"type": "scale", "t": round(t, 3), "function": function, "namespace": namespace,
                                  "requested": requested, "applied": applied, "note": note}) + "\n")

    def close(self) -> None:
        self.fh.close()


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 3)
