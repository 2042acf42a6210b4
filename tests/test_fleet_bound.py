"""The platform's replica bound in the live fleet: `prewarmer run --max-replicas` (a load test's gateway workers) is
the fleet's `max_instances`, as replay's. Beyond it requests wait for a busy instance, in both; a fleet without the
bound models instances the platform never runs (issue 13: 79 asked of a gateway that runs 20)."""

from __future__ import annotations

import numpy as np
import pytest
from test_differential import make, workload

from prewarmer.platform import begin, tick
from prewarmer.sidecar.fleet import WarmFleet
from prewarmer.sim import engine as E
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.replay import ReplayConfig

BOUND = 2


def mirror(spec: str, fleet_bound: int | None) -> tuple[int, int, int]:
    """(function-ticks that differ, compared, ticks where replay had requests waiting at the bound): replay under
    BOUND, the fleet under `fleet_bound`, fed the requests as they complete and the same actions."""
    policy = make(spec)
    w = workload(policy.tick_s or 60.0)  # each request within one of the policy's ticks
    env = ReplayEnv(w, ReplayConfig(max_instances=BOUND), tick_s=policy.tick_s or 60.0, record_requests=True)
    env.reset()
    fleet = WarmFleet(env.n_functions, env.functions.memory_mb, max_instances=fleet_bound)
    fleet.apply(0.0, begin(policy, env, env.functions, 0.0))
    running = np.zeros((0, E.NRL))
    differ = compared = queued = 0
    for now in env.tick_times():
        decision = tick(policy, env, now)
        queued += int((env.state.fi[:, E.F_QUEUED] > 0).any())
        running = np.concatenate([running, env.state.take_requests()])
        done = running[:, E.RL_START] + running[:, E.RL_DUR] <= now
        r = running[done]
        fleet.reported(r[:, E.RL_FUNC].astype(np.int64), r[:, E.RL_ARR], r[:, E.RL_DUR])
        running = running[~done]
        obs = decision.obs
        quiet = (obs.in_flight == 0) & (obs.starting == 0)
        differ += int((quiet & (fleet.desired(now) != obs.alive)).sum())
        compared += int(quiet.sum())
        fleet.apply(now, decision.actions)
    return differ, compared, queued


@pytest.mark.parametrize("spec", ["fixed", "marl"])
def test_the_fleet_under_the_platforms_bound_holds_what_replay_holds(spec):
    """Measured: fixed 0, marl 2 of 4,579 function-ticks differ (a request that waited at the bound across a tick
    is replayed late by the fleet, as under a binding budget); without the bound 423 and 702."""
    differ, compared, queued = mirror(spec, BOUND)
    assert queued > 0  # the bound did bind: requests waited for a busy instance
    assert compared > 3000 and differ <= 0.001 * compared


@pytest.mark.parametrize("spec", ["fixed", "marl"])
def test_a_fleet_without_the_bound_differs(spec):
    differ, compared, _ = mirror(spec, None)
    assert differ > 0.05 * compared
