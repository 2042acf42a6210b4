"""The sidecar's pure parts: actions → desired replicas, events → observations, shard checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from prewarmer.actions import Actions
from prewarmer.policies import policy_factory
from prewarmer.sidecar.agent import ShardAgent
from prewarmer.sidecar.fleet import WarmFleet
from prewarmer.sidecar.observer import LiveObserver
from prewarmer.sidecar.timescale import TimeScale


def one(x: float) -> np.ndarray:
    return np.array([x])


def test_keep_alive_holds_an_instance_until_it_runs_out():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(600)))
    f.completed(0, "a", 5.0)
    assert f.desired(604.0)[0] == 1
    assert f.desired(606.0)[0] == 0


def test_surplus_instances_follow_the_shorter_keep_alive():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(600), surplus_keep_alive_s=one(60)))
    f.completed(0, "a", 0.0)
    f.completed(0, "b", 10.0)
    assert f.desired(30.0)[0] == 2
    assert f.desired(100.0)[0] == 1  # "a" is surplus (not the last) and idled 100 s > 60 s
    assert f.desired(611.0)[0] == 0


def test_prewarm_window_releases_then_starts_ahead_of_the_next_call():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(20), prewarm_delay_s=one(50)))
    f.completed(0, "a", 0.0)
    assert f.desired(10.0)[0] == 0  # released as soon as it idled
    assert f.desired(10.0, lead=45.0)[0] == 1  # start now: it must be ready at 50 s
    assert f.desired(55.0)[0] == 1
    assert f.desired(71.0)[0] == 0


def test_prewarm_scale_to_and_release_idle():
    f = WarmFleet(2)
    f.apply(0, Actions(keep_alive_s=np.array([100.0, 100.0]), prewarm=np.array([2, 0])))
    assert f.desired(1.0).tolist() == [2, 0]
    f.apply(1, Actions(scale_to=np.array([-1, 3])))
    assert f.desired(2.0).tolist() == [2, 3]
    f.apply(2, Actions(release_idle=np.array([1, 0]), scale_to=np.array([-1, 1])))
    assert f.desired(3.0).tolist() == [1, 1]
    assert f.desired(150.0).tolist() == [0, 0]


def test_observer_counts_and_idle_gaps_as_the_simulator_logs_them():
    obs_b = LiveObserver(np.array([256.0, 128.0]), epoch_s=1000.0)
    func = np.array([0, 0, 1, 0])
    arrival = np.array([0.0, 10.0, 3.0, 11.0])
    duration = np.array([1.0, 1.0, 2.0, 0.5])
    startup = np.array([0.5, 0.0, 0.8, 0.0])
    cold = np.array([1, 0, 1, 0])
    status = np.array([200, 200, 500, 200])
    obs_b.observe(0.0, np.zeros(2), np.zeros(2))
    obs_b.ingest(func, arrival, duration, startup, cold, status)
    obs = obs_b.observe(60.0, np.array([2, 1]), np.array([2, 1]))
    assert obs.arrivals.tolist() == [3, 1]
    assert obs.cold_starts.tolist() == [1, 1]
    assert obs.timed_out.tolist() == [0, 1]
    # f0: done at 1.5, next arrival 10 -> 8.5; done at 11, next arrival 11 -> no gap
    assert obs.idle_time_func.tolist() == [0]
    assert obs.idle_time_s.tolist() == pytest.approx([8.5])
    assert obs.busy_gb_s.tolist() == pytest.approx([2.5 * 0.25, 2.0 * 0.125])
    assert obs.startup_s.tolist() == pytest.approx([0.5, 0.8])
    assert obs.dt == 60.0 and obs.epoch_s == 1000.0
    # the gap continues across ticks from the last completion
    obs_b.ingest(np.array([0]), np.array([100.0]), np.array([1.0]), np.zeros(1), np.zeros(1, np.int64),
                 np.array([200]))
    obs = obs_b.observe(120.0, np.array([1, 0]), np.array([1, 0]))
    assert obs.idle_time_s.tolist() == pytest.approx([100.0 - 11.5])


@pytest.mark.parametrize("spec", ["fixed:10m", "hybrid", "marl", "kpa"])
def test_shard_checkpoint_round_trip_keeps_what_the_policy_learned(spec):
    make = policy_factory(spec)
    agent = ShardAgent(3, make, epoch_s=0.0)
    agent.add_functions(0.0, ["a", "b"], ["ns", "ns"], [256.0, None])
    rng = np.random.default_rng(0)
    for k in range(5):
        t = np.sort(rng.uniform(k * 60, (k + 1) * 60, 20))
        f = rng.integers(0, 2, 20)
        agent.ingest(f, t, np.full(20, 0.1), np.zeros(20), np.zeros(20, np.int64), np.full(20, 200),
                     [f"i{j % 3}" for j in range(20)])
        agent.tick((k + 1) * 60.0, np.ones(2, np.int64), np.ones(2, np.int64))
    restored = ShardAgent.loads(agent.dumps(), make)
    assert restored.events == agent.events == 100
    assert restored.names == ["a", "b"] and restored.memory_mb.tolist() == [256.0, 128.0]
    for t in (330.0, 400.0, 1000.0):
        assert restored.desired(t, 1.0).tolist() == agent.desired(t, 1.0).tolist()
    d1 = agent.tick(360.0, np.ones(2, np.int64), np.ones(2, np.int64))
    d2 = restored.tick(360.0, np.ones(2, np.int64), np.ones(2, np.int64))
    if d1 is not None:
        for name in ("keep_alive_s", "prewarm_delay_s"):
            a, b = getattr(d1.actions, name), getattr(d2.actions, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert np.array_equal(a, b, equal_nan=True)


def test_corrupt_checkpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="bad header"):
        ShardAgent.loads(b"junk", policy_factory("fixed"))
    with pytest.raises(ValueError, match="corrupt shard checkpoint"):
        ShardAgent.loads(b"prewarmer-shard-v1\nnot zlib", policy_factory("fixed"))


def test_time_scale():
    ts = TimeScale(t0=100.0, scale=60.0)
    assert ts.policy(101.0) == 60.0
    assert ts.real(60.0) == 1.0
    with pytest.raises(ValueError):
        TimeScale(0.0, 0.0)


def reference_count(events: list[tuple[int, str, float]], ka: float, surplus: float, delay: float, t: float) -> int:
    """Per-instance definition, one function: what the simulator would still hold at t."""
    last_by_inst: dict[str, float] = {}
    for _, inst, done in events:
        last_by_inst[inst] = max(last_by_inst.get(inst, -np.inf), done)
    if not last_by_inst:
        return 0
    last = max(last_by_inst.values())
    if delay > 0:
        return int(last + delay <= t < last + delay + ka)
    ordered = sorted(last_by_inst.values(), reverse=True)
    return int(ordered[0] + ka > t) + sum(1 for d in ordered[1:] if d + min(ka, surplus) > t)


def test_fleet_matches_the_per_instance_definition_on_random_histories():
    rng = np.random.default_rng(7)
    n = 6
    fleet = WarmFleet(n)
    ka = rng.choice([30.0, 120.0, 600.0], n)
    surplus = rng.choice([10.0, 60.0, np.inf], n)
    delay = np.where(rng.random(n) < 0.3, rng.choice([20.0, 90.0], n), 0.0)
    fleet.apply(0.0, Actions(keep_alive_s=ka, surplus_keep_alive_s=surplus, prewarm_delay_s=delay))
    history: list[tuple[int, str, float]] = []
    now = 0.0
    for _ in range(40):
        now += rng.uniform(1, 40)
        k = int(rng.integers(0, 6))
        f = rng.integers(0, n, k)
        inst = [f"i{x}" for x in rng.integers(0, 4, k)]
        done = now - rng.uniform(0, 1, k)
        fleet.completed_many(f, inst, done)
        history += list(zip(f.tolist(), inst, done.tolist(), strict=True))
        got = fleet.desired(now)
        for i in range(n):
            mine = [h for h in history if h[0] == i]
            assert got[i] == reference_count(mine, ka[i], surplus[i], delay[i], now), (i, now)


def test_budget_awards_cap_what_the_fleet_asks_for():
    f = WarmFleet(2)
    f.apply(0, Actions(keep_alive_s=np.array([600.0, 600.0]), prewarm=np.array([4, 3])))
    assert f.desired(1.0).tolist() == [4, 3]
    f.apply(1, Actions(max_instances=np.array([2, -1])))
    assert f.desired(2.0).tolist() == [2, 3]
    f.apply(2, Actions(max_hold=np.array([np.nan, 1.0])))
    assert f.desired(3.0).tolist() == [2, 1]
    f.apply(3, Actions(max_instances=np.array([1 << 40, -1]), max_hold=np.array([np.inf, np.inf])))
    assert f.desired(4.0).tolist() == [4, 3]
