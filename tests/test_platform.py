"""The one control tick (`prewarmer.platform.tick`) and policies that take on new functions (`Policy.grow`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import ListWorkload

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.platform import begin, tick
from prewarmer.registry import policy_factory
from prewarmer.sidecar.agent import ShardAgent
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.replay import ReplayConfig, run_shard

SPECS = ["fixed", "always-warm", "hybrid", "kpa", "marl", "fixed+bid", "marl+bid"]


def _workload(late_start_s: float) -> ListWorkload:
    """Three functions: one with a cycle of idle times, a bursty one, and one first called at `late_start_s`."""
    rng = np.random.default_rng(7)
    arrivals = [(t, 0, 0.4) for t in np.cumsum(np.resize([30.0, 150.0, 400.0], 12))]
    for burst in (100.0, 700.0, 1500.0, 2000.0):
        arrivals += [(burst + x, 1, 2.0) for x in rng.uniform(0, 20, 12)]
    arrivals += [(t, 2, 1.0) for t in np.arange(late_start_s + 3.0, 2400.0, 40.0)]
    return ListWorkload([("periodic", 256), ("bursty", 512), ("late", 128)], arrivals, 2400.0)


def _observations(workload: ListWorkload, tick_s: float, cap_gb: float | None) -> list[Observation]:
    """What a platform running fixed keep-alive shows at every tick (the inputs both policies get)."""
    env = ReplayEnv(workload, ReplayConfig(memory_cap_gb=cap_gb, queue_deadline_s=30.0 if cap_gb else None),
                    tick_s=tick_s)
    env.reset()
    keeper = policy_factory("fixed")()
    begin(keeper, env, env.functions, 0.0)
    return [tick(keeper, env, now).obs for now in env.tick_times()]


def _first(obs: Observation, k: int) -> Observation:
    """The observation of the first k functions only (as a platform that has not met the others sees it)."""
    n = obs.n_functions
    cut = {}
    for f in dataclasses.fields(obs):
        v = getattr(obs, f.name)
        if isinstance(v, np.ndarray) and v.shape[:1] == (n,) and not f.name.startswith("idle_time"):
            cut[f.name] = v[:k]
    keep = obs.idle_time_func < k
    return dataclasses.replace(obs, **cut, idle_time_func=obs.idle_time_func[keep], idle_time_s=obs.idle_time_s[keep])


class Replayed:
    """A Platform that hands out recorded observations and records what is applied."""

    def __init__(self, obs: list[Observation], k: int | None = None) -> None:
        self.obs, self.k, self.applied = obs, k, []

    def observe(self, now: float) -> Observation:
        o = next(o for o in self.obs if o.now == now)
        return o if self.k is None else _first(o, self.k)

    def apply(self, now: float, actions: Actions) -> None:
        self.applied.append(actions)


def _head(actions: Actions, k: int) -> dict[str, list]:
    """The actions of the first k functions, NaN ("no change") as None so that equal means equal."""
    return {name: [None if x != x else x for x in np.asarray(v)[:k].tolist()]
            for name, v in dataclasses.asdict(actions).items() if v is not None}


@pytest.mark.parametrize("spec", SPECS)
def test_a_policy_takes_on_a_new_function_without_forgetting_the_others(spec):
    """A policy that meets function 3 half-way through decides for functions 1 and 2 exactly as one that
    knew all three from the start (function 3 had no traffic before): growing forgets nothing."""
    workload = _workload(late_start_s=1200.0)
    make = policy_factory(spec)
    grown, known = make(), make()
    cap = 0.6 if spec.endswith("+bid") else None  # a budget that binds: the auction decides too
    obs = _observations(workload, grown.tick_s or 60.0, cap)
    times = [o.now for o in obs]
    meet = next(o.now for o in obs if o.arrivals[2] > 0)
    before, after = Replayed(obs, k=2), Replayed(obs)
    begin(grown, before, workload.functions.subset(np.arange(2)), 0.0)
    begin(known, after, workload.functions, 0.0)
    for now in times:
        if now == meet:
            added = grown.grow(workload.functions, now)
            # the known functions' settings stay; the new one gets its first settings
            for name, v in dataclasses.asdict(added).items():
                if v is not None and name in ("keep_alive_s", "surplus_keep_alive_s", "prewarm_delay_s"):
                    assert np.isnan(v[:2]).all() and not np.isnan(v[2]), (name, v)
            before = Replayed(obs)
        d_grown, d_known = tick(grown, before, now), tick(known, after, now)
        assert _head(d_grown.actions, 2) == _head(d_known.actions, 2), f"t={now}"
        if now > meet:
            assert _head(d_grown.actions, 3) == _head(d_known.actions, 3), f"t={now}"


def test_a_shard_keeps_its_policy_when_functions_join():
    agent = ShardAgent(0, policy_factory("hybrid"), 0.0)
    agent.add_functions(0.0, ["a"], ["ns"], [256.0])
    policy = agent.policy
    assert agent.add_functions(30.0, ["a", "b"], ["ns", "ns"], [256.0, None])
    assert agent.policy is policy and len(policy.apps) == 2
    assert not agent.add_functions(40.0, ["b"], ["ns"], [None])


@pytest.mark.parametrize("spec", ["fixed", "hybrid", "kpa"])
def test_gymnasium_step_and_the_tick_loop_replay_alike(spec):
    """`ReplayEnv.step` (reset/step) and `tick()` over `tick_times()` are one protocol: identical results."""
    workload = _workload(late_start_s=600.0)
    cfg = ReplayConfig()
    by_tick = run_shard(workload, policy_factory(spec)(), cfg).metrics()
    policy = policy_factory(spec)()
    env = ReplayEnv(workload, cfg, tick_s=policy.tick_s)
    env.reset()
    actions = policy.reset(env.functions, 0.0)
    while True:
        obs, done = env.step(actions)
        if done:
            break
        actions = policy.decide(obs.now, obs)
    assert env.result().metrics() == by_tick
