"""Replay one policy over the backtest workload, recording cold starts and instances over time.

The run is `prewarmer.sim.replay.run_shard` (ReplayEnv driven through `platform.tick`, one process),
with one addition: at every sample the environment also notes the cumulative cold starts and
invocations, so the report can draw what each policy would have done minute by minute, not only its
totals. The metrics (`SimResult`) are those of any other replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prewarmer.platform import begin, tick
from prewarmer.policies.base import Policy
from prewarmer.sim import engine as E
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.result import ReplayConfig, SimResult
from prewarmer.workloads.base import Workload


class _RecordingEnv(ReplayEnv):
    def reset(self):
        self.cold_t: list[int] = []
        self.arrivals_t: list[int] = []
        return super().reset()

    def _sample(self) -> None:
        super()._sample()
        self.cold_t.append(int(self.state.fi[:, E.F_COLD].sum()))
        self.arrivals_t.append(int(self.state.fi[:, E.F_ARRIVALS].sum()))


@dataclass
class PolicyRun:
    result: SimResult
    cold_cumulative: np.ndarray  # cold starts so far at each sample time (result.sample_t)
    arrivals_cumulative: np.ndarray


def run_policy(workload: Workload, policy: Policy, cfg: ReplayConfig) -> PolicyRun:
    env = _RecordingEnv(workload, cfg, tick_s=policy.tick_s)
    env.reset()
    begin(policy, env, env.functions, 0.0)
    for now in env.tick_times():
        tick(policy, env, now)
    env.finish()
    result = env.result(events=list(getattr(policy, "events", [])))
    return PolicyRun(result, np.asarray(env.cold_t, np.int64), np.asarray(env.arrivals_t, np.int64))


def sample_interval_s(horizon_s: float) -> float:
    """About 240 samples over the run, between 1 s and a minute."""
    return float(min(60.0, max(1.0, round(horizon_s / 240.0))))
