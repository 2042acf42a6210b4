"""A limit lifted over a long queue starts every waiting request's instance in one step without the
simulator running out of instance slots (issue 14: `marl+bid` stopped a capped replay with a pool overflow)."""

from __future__ import annotations

import numpy as np
from helpers import ListWorkload

from prewarmer.actions import Actions
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.result import ReplayConfig


def test_lifting_a_limit_over_hundreds_of_queued_requests_starts_them_all():
    n = 6000  # beyond the simulator's initial instance slots (4,096), grown only between steps
    wl = ListWorkload([("f", 128.0)], [(1.0 + i * 1e-4, 0, 30.0) for i in range(n)], horizon_s=120.0)
    env = ReplayEnv(wl, ReplayConfig(memory_cap_gb=1000.0, queue_deadline_s=100.0), tick_s=10.0)
    env.reset()
    env.state.apply(0.0, Actions(max_instances=np.array([1])))  # one instance: the rest queue
    obs, _ = env.step(Actions())
    assert obs.in_flight[0] == n and obs.alive[0] == 1
    obs, _ = env.step(Actions(max_instances=np.array([1 << 40])))  # the limit lifts: all start at once
    assert obs.alive[0] == n
    while not env.step(Actions())[1]:
        pass
    assert env.result().metrics()["timed_out"] == 0
