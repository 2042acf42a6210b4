"""The sidecar's pure parts: actions → desired replicas, events → observations, shard checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from prewarmer.actions import Actions
from prewarmer.policies.keepalive import KeepAlivePolicy
from prewarmer.registry import policy_factory
from prewarmer.sidecar.agent import CHECKPOINT_MAGIC, ShardAgent
from prewarmer.sidecar.fleet import WarmFleet
from prewarmer.sidecar.inflight import MAX_OPEN_S
from prewarmer.sidecar.observer import LiveObserver
from prewarmer.sidecar.timescale import TimeScale
from prewarmer.sim import engine as E
from prewarmer.stream.events import PHASE_DONE, PHASE_END, PHASE_START


def one(x: float) -> np.ndarray:
    return np.array([x])


def request(f: WarmFleet, func: int, arrival: float, duration: float) -> None:
    """One reported request: it arrived, (waited for an instance,) then ran `duration`."""
    f.reported(np.array([func]), np.array([arrival]), np.array([duration]))


def test_keep_alive_holds_an_instance_until_it_runs_out():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(600)))
    request(f, 0, 4.0, 0.0)  # started at 4, ready (and done) at 5
    assert f.desired(604.0)[0] == 1
    assert f.desired(606.0)[0] == 0


def test_surplus_instances_follow_the_shorter_keep_alive_and_the_last_one_the_full_one():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(600), surplus_keep_alive_s=one(60)))
    request(f, 0, 0.0, 10.0)  # instance a: idle from 11
    request(f, 0, 0.5, 20.0)  # instance b (a was busy): idle from 21.5
    assert f.desired(30.0)[0] == 2
    assert f.desired(75.0)[0] == 1  # a idled with b alive: surplus, gone at 71
    assert f.desired(621.0)[0] == 1  # b became the last one: the full keep-alive, to 621.5
    assert f.desired(622.0)[0] == 0


def test_prewarm_window_releases_then_starts_ahead_of_the_next_call():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(20), prewarm_delay_s=one(50)))
    request(f, 0, 0.0, 0.0)  # idle at 1: released, pre-warmed at 51
    assert f.desired(10.0)[0] == 0  # released as soon as it idled
    assert f.desired(10.0, lead=45.0)[0] == 1  # start now: it must be ready in time
    assert f.desired(55.0)[0] == 1
    assert f.desired(73.0)[0] == 0  # ready at 52, kept 20 s


def test_prewarm_scale_to_and_release_idle():
    f = WarmFleet(2)
    f.apply(0, Actions(keep_alive_s=np.array([100.0, 100.0]), prewarm=np.array([2, 0])))
    assert f.desired(1.0).tolist() == [2, 0]
    f.apply(1, Actions(scale_to=np.array([-1, 3])))
    assert f.desired(2.0).tolist() == [2, 3]
    f.apply(5, Actions(release_idle=np.array([1, 0]), scale_to=np.array([-1, 1])))
    assert f.desired(6.0).tolist() == [1, 1]
    assert f.desired(150.0).tolist() == [0, 0]


def test_a_request_still_running_at_a_tick_is_replayed_when_it_is_reported():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(60)))
    assert f.desired(100.0)[0] == 0  # the request below runs from 90 to 130: unknown yet
    request(f, 0, 90.0, 39.0)
    assert f.desired(131.0)[0] == 1  # replayed from 100 (10 s late): a start-up, 39 s, idle from 140
    assert f.desired(199.0)[0] == 1
    assert f.desired(201.0)[0] == 0


def test_late_requests_keep_their_overlaps_and_hold_the_platform_until_replayed():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(600)))
    assert f.desired(100.0)[0] == 0
    # ten requests of 60 s, 5 s apart, reported late: they needed ten instances at once around 90 s
    f.reported(np.zeros(10, np.int64), np.arange(45.0, 95.0, 5.0), np.full(10, 60.0))
    assert f.desired(101.0)[0] == 1 and f.behind()[0]  # replaying from 100 on: behind the platform
    assert f.desired(160.0)[0] == 10 and f.behind()[0]
    assert f.desired(206.0)[0] == 10 and not f.behind()[0]  # the last ended at 205 in the model


def test_a_shard_asks_for_what_the_platform_runs_while_its_model_is_behind():
    agent = ShardAgent(0, policy_factory("fixed"), 0.0)
    agent.add_functions(0.0, ["a", "b"], ["ns", "ns"], [128.0, 128.0])
    agent.desired(100.0, 1.0)
    agent.ingest(np.array([0, 1]), np.array([45.0, 150.0]), np.array([60.0, 1.0]), np.zeros(2), np.zeros(2, np.int64),
                 np.full(2, 200))
    # "a" was reported late (arrived at 45, the model stands at 100): hold the platform's 7 until replayed;
    # "b" is on time: the model's own count
    assert agent.desired(101.0, 1.0, np.array([7, 7])).tolist() == [7, 0]
    assert agent.desired(162.0, 1.0, np.array([7, 7])).tolist() == [1, 1]


def test_a_request_reported_as_it_starts_is_counted_and_held_busy_until_its_end():
    S, E_, D = PHASE_START, PHASE_END, PHASE_DONE
    def every_minute() -> KeepAlivePolicy:
        policy = KeepAlivePolicy(600.0)
        policy.tick_s = 60.0  # observed every minute
        return policy

    agent = ShardAgent(0, every_minute, 0.0)
    agent.add_functions(0.0, ["a", "b"], ["ns", "ns"], [128.0, 128.0])
    agent.tick(0.0, np.zeros(2, np.int64), np.zeros(2, np.int64))
    z = np.zeros(3)

    def events(phase, func, arrival, duration, startup=None):
        n = len(func)
        agent.ingest(np.array(func), np.array(arrival, float), np.array(duration, float),
                     z[:n] if startup is None else np.array(startup, float), np.zeros(n, np.int64),
                     np.full(n, 200), np.array(phase))

    # "a" starts at 10 and runs 100 s; "b" starts and ends (3 s) before the tick; a third ends with no start seen
    events([S, S, E_], [0, 1, 1], [10.0, 20.0, 20.0], [0.0, 0.0, 3.0])
    events([E_], [1], [30.0], [2.0])
    assert len(agent.fleet.inflight) == 1
    assert agent.desired(60.0, 0.0).tolist() == [1, 1]
    obs = agent.tick(60.0, np.array([1, 1]), np.array([1, 1])).obs
    assert obs.arrivals.tolist() == [1, 2]  # counted once each: at its start, or as a whole
    assert obs.in_flight[0] == 1 and obs.peak_in_flight[0] == 1 and obs.busy[0] == 1
    assert obs.concurrency[0] == pytest.approx(50.0 / 60.0)  # busy from 10 to the tick at 60
    assert agent.fleet.state.fi[0, E.F_BUSY] == 1  # the model runs it: its instance is busy
    # it ends at 110 (reported at 115): no second arrival; busy time 60..110 goes to the next tick
    events([E_], [0], [10.0], [100.0], [0.0])
    obs = agent.tick(120.0, np.array([1, 1]), np.array([1, 1])).obs
    assert obs.arrivals.tolist() == [0, 0]
    assert obs.concurrency[0] == pytest.approx(50.0 / 60.0)
    assert agent.fleet.state.fi[0, E.F_BUSY] == 0 and agent.fleet.state.fi[0, E.F_IDLE] == 1
    assert len(agent.fleet.inflight) == 0
    # a `done` event (a platform reporting whole requests) still counts as before
    events([D], [0], [130.0], [1.0])
    assert agent.tick(180.0, np.array([1, 1]), np.array([1, 1])).obs.arrivals.tolist() == [1, 0]


def test_a_start_whose_end_is_lost_stops_holding_its_instance():
    f = WarmFleet(1)
    f.apply(0.0, Actions(keep_alive_s=one(60.0)))
    f.started(np.array([0]), np.array([10.0]))
    assert f.desired(20.0).tolist() == [1]
    assert f.desired(10.0 + MAX_OPEN_S - 1).tolist() == [1]  # still running, as far as anyone knows
    assert f.desired(10.0 + MAX_OPEN_S + 1).tolist() == [1]  # given up: now idle, for its keep-alive
    assert f.desired(10.0 + MAX_OPEN_S + 62).tolist() == [0]


def test_a_backlog_replays_at_its_times_or_if_late_keeps_its_spacing_instead_of_arriving_as_a_burst():
    f = WarmFleet(2)
    f.apply(100.0, Actions(keep_alive_s=np.array([600.0, 600.0])))  # the clock starts with the first report
    # 50 requests, one every 2 s, each 0.1 s: one instance served them all
    f.reported(np.zeros(50, np.int64), np.arange(0.0, 100.0, 2.0), np.full(50, 0.1))
    assert f.desired(200.0).tolist() == [1, 0]
    # the same, reported after the model passed them (function 1): replayed from 200 on, 2 s apart
    f.reported(np.ones(50, np.int64), np.arange(0.0, 100.0, 2.0), np.full(50, 0.1))
    assert f.desired(201.0).tolist() == [1, 1]
    assert f.desired(400.0).tolist() == [1, 1]


def test_new_functions_join_the_model_and_running_replicas_are_adopted():
    f = WarmFleet(1)
    f.apply(0, Actions(keep_alive_s=one(60)))
    f.grow(np.array([128.0, 256.0]))
    f.adopt(np.array([1]), np.array([2]), 10.0)
    assert f.desired(20.0).tolist() == [0, 2]
    assert f.desired(610.0).tolist() == [0, 2]  # the new function has the default keep-alive (10 min)
    assert f.desired(612.0).tolist() == [0, 0]


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
        agent.ingest(f, t, np.full(20, 0.1), np.zeros(20), np.zeros(20, np.int64), np.full(20, 200))
        agent.tick((k + 1) * 60.0, np.ones(2, np.int64), np.ones(2, np.int64))
    restored = ShardAgent.loads(agent.dumps(), make)
    assert restored.events == agent.events == 100
    assert restored.names == ["a", "b"] and restored.memory_mb.tolist() == [256.0, 128.0]
    for t in (330.0, 400.0, 1000.0):
        assert restored.desired(t, 1.0).tolist() == agent.desired(t, 1.0).tolist()
    d1 = agent.tick(360.0, np.ones(2, np.int64), np.ones(2, np.int64))
    d2 = restored.tick(360.0, np.ones(2, np.int64), np.ones(2, np.int64))
    if make().tick_s is None:  # fixed acts only when it starts
        assert d1 is None and d2 is None
        return
    assert d1 is not None and d2 is not None
    for name in ("keep_alive_s", "prewarm_delay_s", "scale_to", "prewarm", "release_idle"):
        a, b = getattr(d1.actions, name), getattr(d2.actions, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a, b, equal_nan=True)


def test_corrupt_checkpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="bad header"):
        ShardAgent.loads(b"junk", policy_factory("fixed"))
    with pytest.raises(ValueError, match="corrupt shard checkpoint"):
        ShardAgent.loads(CHECKPOINT_MAGIC + b"not zlib", policy_factory("fixed"))
    for old in (b"prewarmer-shard-v1\nanything", b"prewarmer-shard-v2\nanything", b"prewarmer-shard-v3\nanything"):
        with pytest.raises(ValueError, match="older prewarmer"):
            ShardAgent.loads(old, policy_factory("fixed"))


def test_time_scale():
    ts = TimeScale(t0=100.0, scale=60.0)
    assert ts.policy(101.0) == 60.0
    assert ts.real(60.0) == 1.0
    with pytest.raises(ValueError):
        TimeScale(0.0, 0.0)


def test_budget_awards_cap_what_the_fleet_asks_for():
    f = WarmFleet(2)
    f.apply(0, Actions(keep_alive_s=np.array([600.0, 600.0]), prewarm=np.array([4, 3])))
    assert f.desired(5.0).tolist() == [4, 3]
    f.apply(5, Actions(max_instances=np.array([2, -1])))  # idle instances beyond the award are not asked for
    assert f.desired(6.0).tolist() == [2, 3]
    f.apply(6, Actions(max_hold=np.array([np.nan, 1.0])))  # idle ones beyond a hold award are released
    assert f.desired(7.0).tolist() == [2, 1]
    f.apply(7, Actions(prewarm=np.array([5, 0])))  # no start beyond the award
    assert f.desired(8.0).tolist() == [2, 1]
    f.apply(8, Actions(max_instances=np.array([1 << 40, -1]), max_hold=np.array([np.inf, np.inf])))
    assert f.desired(9.0).tolist() == [4, 1]  # the model kept function 0's four, as the simulator does


def test_the_warm_up_tick_compiles_the_start_and_end_path_too():
    """The sidecar's warm-up (`shards._tick_once`) runs before it takes leases so that no live tick waits for
    compiled code. The gateway reports requests as they start and as they end; the end of a request the model runs
    goes through `fleet._finish_open`, which the warm-up left out: it compiled at a load test's first burst, 6 s on
    a loaded box, and the tick that read it came late (issue 13). In a fresh process, after the warm-up alone,
    every compiled function of the fleet and the observer has its signature."""
    import subprocess
    import sys

    code = ("from prewarmer.registry import policy_factory\n"
            "from prewarmer.sidecar import fleet, observer\n"
            "from prewarmer.sidecar.shards import _tick_once\n"
            "_tick_once(policy_factory('fixed'))\n"
            "print(len(fleet._finish_open.signatures), len(observer._sweep_peaks.signatures))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert out.stdout.split() == ["1", "1"], out.stdout + out.stderr


def test_a_checkpoint_of_before_the_wait_is_read_and_goes_on():
    """Checkpoints keep their version (v5): an observer pickled before it counted the time requests spend in the
    system (`system_s`, issue 13) is read by this one, counts its tick from the busy time, and goes on."""
    agent = ShardAgent(0, policy_factory("fixed"), 0.0)
    agent.add_functions(0.0, ["a"], ["ns"], [128.0])
    agent.ingest(np.array([0]), np.array([10.0]), np.array([5.0]), np.zeros(1), np.zeros(1, np.int64),
                 np.full(1, 200))
    del agent.observer.system_s  # as an observer of before the field was pickled
    back = ShardAgent.loads(agent.dumps(), policy_factory("fixed"))
    assert back.observer.system_s.tolist() == [5.0]
    back.ingest(np.array([0]), np.array([20.0]), np.array([5.0]), np.zeros(1), np.zeros(1, np.int64),
                np.full(1, 200), wait=np.array([3.0]))
    obs = back.observer.observe(60.0, np.ones(1, np.int64), np.ones(1, np.int64))
    assert obs.arrivals.tolist() == [2]


def _marl_shard_ticked(ticks: int):
    """(the policy maker, a `marl` shard of two functions, each invoked once a tick for `ticks` ticks)."""
    make = policy_factory("marl")
    agent = ShardAgent(0, make, 0.0)
    agent.add_functions(0.0, ["a", "b"], ["ns", "ns"], [256.0, 512.0])
    for k in range(ticks):
        agent.ingest(np.array([0, 1]), np.array([k * 60 + 5.0, k * 60 + 9.0]), np.full(2, 0.5), np.zeros(2),
                     np.zeros(2, np.int64), np.full(2, 200))
        agent.tick((k + 1) * 60.0, np.ones(2, np.int64), np.ones(2, np.int64))
    return make, agent


def test_a_marl_checkpoint_of_before_the_start_up_charge_is_read_and_goes_on():
    """Checkpoints keep their version (v5): a `marl` shard pickled before the tracker charged start-ups (`lag`)
    is read, takes today's default for it, and ticks on."""
    from prewarmer.agents import marl

    make, agent = _marl_shard_ticked(3)
    for name in ("lag", "before", "in_flight"):  # as a tracker and a policy of before the setting were pickled
        delattr(agent.policy.tracker, name)
    del agent.policy.lag
    back = ShardAgent.loads(agent.dumps(), make)
    assert back.policy.lag is marl.LAG and back.policy.tracker.lag is marl.LAG
    assert back.policy.tracker.before is None
    for k in range(3, 5):
        assert back.tick((k + 1) * 60.0, np.ones(2, np.int64), np.ones(2, np.int64)) is not None
    assert back.policy.tracker.in_flight.shape == (2,)  # charging start-ups from here on (the default)


def test_a_marl_checkpoint_of_before_the_cold_share_guard_is_read_takes_new_functions_and_goes_on():
    """A `marl` shard pickled before the `fair` setting is read with the guard off and its counts from zero, and
    takes on a new function (`grow` pads the counts) and ticks on."""
    from prewarmer.agents import marl

    make, agent = _marl_shard_ticked(2)
    for name in ("fair", "fair_window_s", "fair_gb_s", "arrived", "cold"):  # as pickled before the setting
        delattr(agent.policy, name)
    back = ShardAgent.loads(agent.dumps(), make)
    assert back.policy.fair is marl.FAIR_SHARE and back.policy.arrived.tolist() == [0.0, 0.0]
    back.add_functions(120.0, ["c"], ["ns"], [128.0])
    assert back.policy.arrived.shape == (3,) and back.policy.cold.shape == (3,)
    assert back.tick(180.0, np.ones(3, np.int64), np.ones(3, np.int64)) is not None
