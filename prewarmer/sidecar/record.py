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
        obs = decision.obs
        gaps = np.bincount(obs.idle_time_func, minlength=len(agent.names))
        gap_s = np.bincount(obs.idle_time_func, weights=obs.idle_time_s, minlength=len(agent.names))
        # Each function's idle gaps of the tick, grouped once (not one scan of all the gaps per function).
        by_func = np.split(np.asarray(obs.idle_time_s)[np.argsort(obs.idle_time_func, kind="stable")],
                           np.cumsum(gaps)[:-1])
        # A learned policy's feature rows of this tick (`marl`: `last["features"]`), to compare with replay's.
        last = getattr(agent.policy, "last", None)
        feats = last.get("features") if isinstance(last, dict) else None
        if feats is not None and len(feats) != len(agent.names):
            feats = None
        for i, name in enumerate(agent.names):
            row = {"type": "decision", "t": round(t, 3), "policy_now": round(decision.now, 3), "shard": agent.shard,
                   "function": name, "arrivals": int(obs.arrivals[i]),
                   "cold_starts": int(obs.cold_starts[i]), "desired": int(desired[i]),
                   "keep_alive_s": _f(agent.fleet.keep_alive[i]), "prewarm_delay_s": _f(agent.fleet.prewarm_delay[i]),
                   # What the policy saw besides arrivals and cold starts: what `scripts/live_vs_replay_ticks.py`
                   # compares with replay's observation of the same tick.
                   "obs": {"dt": round(obs.dt, 3), "completions": int(obs.completions[i]),
                           "in_flight": int(obs.in_flight[i]), "peak_in_flight": int(obs.peak_in_flight[i]),
                           "alive": int(obs.alive[i]), "starting": int(obs.starting[i]), "busy": int(obs.busy[i]),
                           "idle_warm": int(obs.idle_warm[i]), "concurrency": round(float(obs.concurrency[i]), 4),
                           "busy_gb_s": round(float(obs.busy_gb_s[i]), 4),
                           "wasted_gb_s": round(float(obs.wasted_gb_s[i]), 4),
                           "startup_s": None if obs.startup_s is None else round(float(obs.startup_s[i]), 4),
                           "idle_gaps": int(gaps[i]), "idle_gap_s": round(float(gap_s[i]), 3),
                           "idle_times": [round(float(x), 3) for x in by_func[i]],
                           "memory_mb": float(obs.memory_mb[i]), "epoch_s": obs.epoch_s}}
            if feats is not None:
                row["features"] = [round(float(x), 4) for x in feats[i]]
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
