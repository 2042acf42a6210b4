"""The keep-alive floor (prewarmer/agents/floored.py, spec `floor:SPEC`) through the simulator: the inner policy
decides, and the function keeps the instances it used in the last 10 ticks."""

from __future__ import annotations

import numpy as np
import pytest

from prewarmer.agents.floored import KeepAliveFloor
from prewarmer.registry import policy_factory
from prewarmer.sim import engine as E
from prewarmer.sim.replay import ReplayConfig, run_shard
from prewarmer.workloads.azure2021 import Trace2021Workload
from prewarmer.workloads.base import FunctionTable


def _workload() -> Trace2021Workload:
    """One function: a burst of 3 concurrent 10-s requests every 5 minutes for an hour."""
    starts = np.arange(30.0, 3600.0, 300.0)
    t = np.repeat(starts, 3) + np.tile([0.0, 0.1, 0.2], len(starts))
    functions = FunctionTable(names=["f"], apps=np.zeros(1, np.int32), app_names=["f"],
                              memory_mb=np.array([128.0]), cold_start_s=np.array([1.0]))
    return Trace2021Workload(functions, t, np.zeros(len(t), np.int64), np.full(len(t), 10.0), 3700.0,
                             description={"source": "test"})


def _cold(spec_or_policy) -> int:
    policy = policy_factory(spec_or_policy)() if isinstance(spec_or_policy, str) else spec_or_policy
    return int(run_shard(_workload(), policy, ReplayConfig()).fi[:, E.F_COLD].sum())


def test_the_floor_keeps_what_was_used_in_the_window_whatever_the_inner_policy_releases():
    assert _cold("fixed:1m") == 3 * 12  # a 1-minute keep-alive loses the pool between bursts: all cold
    assert _cold(KeepAliveFloor(policy_factory("fixed:1m")())) == 3  # the floor holds the 3: only the first burst
    # a window of 2 ticks is shorter than the gap between bursts
    assert _cold(KeepAliveFloor(policy_factory("fixed:1m")(), window_s=120.0)) == 3 * 12


def test_floor_specs_are_policy_specs():
    assert _cold("floor:fixed:1m") == 3
    with pytest.raises(ValueError, match="floor needs the policy"):
        policy_factory("floor")
