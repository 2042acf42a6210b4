"""Memory budgets: the auction, awards the simulator enforces, tenant quotas against a flooding tenant."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ListWorkload

from prewarmer.actions import Actions
from prewarmer.coord.auction import Bids, allocate
from prewarmer.policies.keepalive import KeepAlivePolicy
from prewarmer.registry import policy_factory
from prewarmer.sim import engine as E
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.replay import run_shard
from prewarmer.sim.result import ReplayConfig
from prewarmer.workloads.synthetic import PoissonFunction, PoissonWorkload


def bids(rows):
    f, r, v, m, t = (np.array(c) for c in zip(*rows, strict=True))
    return Bids(func=f.astype(np.int64), rank=r.astype(np.int64), value=v.astype(float), mem_gb=m.astype(float),
                tenant=t.astype(np.int64))


def test_auction_awards_by_value_within_capacity_quota_and_limits():
    b = bids([(0, 1, 9.0, 1.0, 0), (0, 2, 5.0, 1.0, 0), (1, 1, 8.0, 2.0, 1), (2, 1, 7.0, 1.0, 0),
              (2, 2, 1.0, 1.0, 0), (3, 1, 6.0, 1.0, 1)])
    a = allocate(b, 4, capacity_gb=4.0)
    assert a.instances.tolist() == [1, 1, 1, 0]  # 9, 8 (2 GB), 7 fill 4 GB; 6 and 5 no longer fit
    assert a.price == 6.0 and a.used_gb == 4.0
    # tenant 0 may hold 1 GB: only its best bid; the room goes to tenant 1
    a = allocate(b, 4, capacity_gb=4.0, tenant_quota_gb=np.array([1.0, 10.0]))
    assert a.instances.tolist() == [1, 1, 0, 1]
    assert a.tenant_used_gb.tolist() == [1.0, 3.0]
    # per-function limit
    a = allocate(b, 4, capacity_gb=100.0, max_instances=np.array([1, 1, 1, 1]))
    assert a.instances.tolist() == [1, 1, 1, 1] and a.price == 0.0


def test_awards_lost_to_higher_bids_are_decommitments_not_voluntary_releases():
    first = allocate(bids([(0, 1, 1.0, 1.0, -1), (0, 2, 0.5, 1.0, -1)]), 2, capacity_gb=2.0)
    assert first.instances.tolist() == [2, 0]
    # function 1 outbids: function 0 still wants 2 but keeps 1 -> one decommitment
    second = allocate(bids([(0, 1, 1.0, 1.0, -1), (0, 2, 0.5, 1.0, -1), (1, 1, 3.0, 1.0, -1)]), 2,
                      capacity_gb=2.0, held=first.instances)
    assert second.instances.tolist() == [1, 1]
    assert second.decommitted.tolist() == [1, 0]
    # asking for less is not a decommitment
    third = allocate(bids([(1, 1, 3.0, 1.0, -1)]), 2, capacity_gb=2.0, held=second.instances)
    assert third.decommitted.tolist() == [0, 0]


class _Hold(KeepAlivePolicy):
    """Keeps everything for an hour but holds at most `cap` instances of each function while not executing."""

    tick_s = 1.0

    def __init__(self, cap: int) -> None:
        super().__init__(3600.0)
        self.cap = cap

    def reset(self, functions, now):
        a = super().reset(functions, now)
        a.max_hold = np.full(len(functions), float(self.cap))
        return a

    def decide(self, now, obs):
        return Actions(prewarm=np.full(obs.n_functions, 5))  # asks for more than its award every tick


def test_no_function_holds_more_idle_instances_than_its_award():
    arrivals = [(t, 0, 2.0) for t in np.arange(0.0, 10.0, 0.05)] + [(30.0 + t, 0, 0.1) for t in range(5)]
    wl = ListWorkload([("f", 256.0)], arrivals, horizon_s=60.0)
    env = ReplayEnv(wl, ReplayConfig(), tick_s=1.0)
    env.reset()
    policy = _Hold(2)
    actions = policy.reset(env.functions, 0.0)
    peak_alive = 0
    while True:
        obs, done = env.step(actions)
        st = env.state
        assert st.fi[0, E.F_IDLE] - st.fi[0, E.F_STARTING] <= 2, "more idle instances than the award"
        peak_alive = max(peak_alive, int(st.fi[0, E.F_ALIVE]))
        if done:
            break
        actions = policy.decide(obs.now, obs)
    assert peak_alive > 2  # busy instances are not capped: only those held idle


def _flood_workload(flood: bool) -> PoissonWorkload:
    fns = [PoissonFunction(name=f"victim{i}", rate_per_s=0.5, service_s=0.2, memory_mb=512) for i in range(4)]
    if flood:
        fns.append(PoissonFunction(name="flood", rate_per_s=40.0, service_s=2.0, memory_mb=1024))
    return PoissonWorkload(fns, duration_s=600.0)


def test_a_flooding_tenant_never_gets_more_than_its_quota_and_others_are_not_starved():
    cap, quota = 16.0, 0.5
    cfg = ReplayConfig(memory_cap_gb=cap, queue_deadline_s=5.0, tenant_quota=quota, seed=3)
    env = ReplayEnv(_flood_workload(True), cfg, tick_s=1.0)
    env.reset()
    policy = policy_factory("fixed")()
    actions = policy.reset(env.functions, 0.0)
    flood_tenant = 4  # PoissonWorkload: one app (tenant) per function
    worst = 0.0
    while True:
        _, done = env.step(actions)
        worst = max(worst, env.state.gf[E.NGF + 2 * flood_tenant])
        assert env.state.gf[E.NGF + 2 * flood_tenant] <= cap * quota + 1e-9
        if done:
            break
        actions = Actions()
    res = env.result()
    m_victims = res.fi[:4]
    assert worst == pytest.approx(cap * quota)  # it did press against its quota
    assert m_victims[:, E.F_TIMEOUT].sum() == 0
    victim_cold = m_victims[:, E.F_COLD].sum() / m_victims[:, E.F_ARRIVALS].sum()
    alone = run_shard(_flood_workload(False), policy_factory("fixed")(), cfg.model_copy(update={"tenant_quota": None}))
    alone_cold = alone.fi[:, E.F_COLD].sum() / alone.fi[:, E.F_ARRIVALS].sum()
    assert victim_cold <= alone_cold + 0.02
    assert res.fi[4, E.F_TIMEOUT] > 0  # the flood is what waits


def test_without_quotas_the_flood_starves_the_others():
    cfg = ReplayConfig(memory_cap_gb=16.0, queue_deadline_s=5.0, seed=3)
    res = run_shard(_flood_workload(True), policy_factory("fixed")(), cfg)
    assert res.fi[:4, E.F_TIMEOUT].sum() > 0  # the contrast that makes the quota test meaningful


def test_coordinated_policy_replays_under_a_cap_and_reports_its_awards():
    wl = _flood_workload(False)
    cfg = ReplayConfig(memory_cap_gb=2.0, queue_deadline_s=5.0)
    policy = policy_factory("fixed+bid")()
    res = run_shard(wl, policy, cfg)
    m = res.metrics()
    assert m["invocations"] > 0
    assert policy.held.sum() * 0.5 <= 2.0 * (1 - policy.reserve) + 1e-9  # awards fit the budget
    assert policy.describe()["spec"] == "fixed+bid"


def test_coordinated_training_sees_the_budget_and_is_paid_for_decommitments(tmp_path):
    import torch

    from prewarmer.agents.action_space import N_CHOICES
    from prewarmer.agents.network import ActorCritic
    from prewarmer.agents.train import RewardWeights, TrainConfig, reward, run_episode, train

    # the compensation enters the reward
    obs_wl = _flood_workload(False)
    env = ReplayEnv(obs_wl, ReplayConfig(), tick_s=60.0)
    env.reset()
    obs, _ = env.step(Actions())
    comp = np.arange(len(obs.arrivals), dtype=float)
    w = RewardWeights()
    assert np.allclose(reward(obs, w, comp) - reward(obs, w), comp * w.decommit_compensation)

    # an episode under a tight budget: the agents' features carry the memory pressure (feature 22), which
    # the centralized critic sees through the mean of all agents' features
    wl = _flood_workload(True)
    cfg = TrainConfig(episodes=2, window_minutes=10, functions_per_episode=5, checkpoint_every=1, seed=2,
                      minibatch=256, memory_cap_gb=8.0, queue_deadline_s=5.0, coordinated=True)
    torch.manual_seed(0)
    roll = run_episode(ActorCritic(N_CHOICES, hidden=cfg.hidden), wl, np.arange(5), cfg, seed=3)
    assert roll["features"][..., 22].max() > 0.5
    history = train(wl, cfg, tmp_path / "capped.pt")
    assert len(history) == 2 and all(np.isfinite(h["reward_per_tick"]) for h in history)


def test_scaling_stays_within_the_award_and_never_releases_awarded_instances():
    from types import SimpleNamespace

    from prewarmer.coord.policy import CoordinatedPolicy

    pol = CoordinatedPolicy(KeepAlivePolicy(600.0))
    pol.holding = np.array([2, 0, 3, 0])  # awards held (the budget binds)
    acts = Actions(scale_to=np.array([9, 9, 1, -1]), max_instances=np.array([2, 1, 3, 1]))
    out = pol.bound_scaling(acts, SimpleNamespace(alive=np.array([1, 0, 3, 2])))
    # 0: capped at its award of 2; 1: no award, capped at its limit of 1; 2: awarded, a scale-down to 1 would
    # release held instances -> no change; 3: nothing asked.
    assert out.scale_to.tolist() == [2, 1, -1, -1]


def test_limits_wait_for_memory_to_be_short_so_coordinating_never_slows_a_platform_with_room():
    from prewarmer.coord.policy import CoordinatedPolicy

    # Ten 1-GB functions each announce two instances (20 GB) under a 13-GB cap: the auction refuses bids
    # every tick, while ten warm instances (10 GB) serve every request and nothing ever queues: the requests need
    # well under a GB at a time.
    wl = PoissonWorkload([PoissonFunction(name=f"f{i}", rate_per_s=0.05, service_s=0.1, memory_mb=1024)
                          for i in range(10)], duration_s=1800.0)
    cfg = ReplayConfig(memory_cap_gb=13.0, queue_deadline_s=5.0, seed=1)
    always = CoordinatedPolicy(KeepAlivePolicy(600.0), demand_share=None)
    run_shard(wl, always, cfg)
    assert always.limited_ticks > 0  # the contrast: without the gate the refusals limit functions
    gated = CoordinatedPolicy(KeepAlivePolicy(600.0))
    res = run_shard(wl, gated, cfg).metrics()
    assert gated.limited_ticks == 0 and not gated.short
    assert res["timed_out"] == 0
    # Where the requests need more memory than the cap, the limits do apply.
    tight = CoordinatedPolicy(KeepAlivePolicy(600.0))
    flood = run_shard(_flood_workload(True), tight, ReplayConfig(memory_cap_gb=8.0, queue_deadline_s=5.0, seed=3))
    assert flood.metrics()["timed_out"] > 0 and tight.limited_ticks > 0


def _long_and_short() -> PoissonWorkload:
    # One long 1-GB function (about 20 requests executing at once) beside eight short 0.5-GB ones: its bids are
    # the lowest per GB, so whenever the budget binds it is the one limited to its award.
    fns = [PoissonFunction(name="long", rate_per_s=1.0, service_s=20.0, memory_mb=1024)]
    fns += [PoissonFunction(name=f"short{i}", rate_per_s=2.0, service_s=0.5, memory_mb=512) for i in range(8)]
    return PoissonWorkload(fns, duration_s=3600.0)


@pytest.mark.parametrize("cap", [None, 1000.0, 60.0])
def test_a_budget_that_fits_every_bid_leaves_the_agents_actions_alone(cap):
    # Without a cap, or under one above what every function asks for (the fleet peaks at 58.5 GB), `+bid` replays
    # exactly as the policy alone: no award is held (before issue 14 item 3, awards held every instance 10
    # minutes whether the budget bound or not: 4.5 x fewer cold starts but 63.5 GB at peak, pressing a 60-GB cap).
    wl = _long_and_short()
    cfg = ReplayConfig(memory_cap_gb=cap, queue_deadline_s=10.0 if cap else None, seed=1)
    plain = run_shard(wl, policy_factory("fixed:1m")(), cfg)
    coordinated = policy_factory("fixed:1m+bid")()
    bid = run_shard(wl, coordinated, cfg)
    assert coordinated.limited_ticks == 0
    assert np.array_equal(bid.fi, plain.fi)
    assert np.array_equal(bid.fs, plain.fs)


@pytest.mark.parametrize("cap", [38.0, 40.0])
def test_coordinating_under_a_cap_that_barely_binds_loses_no_more_requests_than_not(cap):
    # The requests need about 24 GB (the long function's 20 executing at once), fixed's idle instances fill the rest:
    # 93 and 49 requests time out without coordination. Limiting the long function to its award whenever a bid was
    # refused made its own requests wait out the deadline (at 38 GB 111 timed out with the trial of limits, 154
    # at 37); awards now apply only where the requests need at least 0.9 of the cap, ten ticks running, and here
    # they never do: the platform evicts idle instances for every request that needs memory.
    wl = _long_and_short()
    cfg = ReplayConfig(memory_cap_gb=cap, queue_deadline_s=10.0, seed=1)
    plain = run_shard(wl, policy_factory("fixed")(), cfg).metrics()
    bid = run_shard(wl, policy_factory("fixed+bid")(), cfg).metrics()
    assert plain["timed_out"] > 0  # the cap does bind
    assert bid["timed_out"] <= plain["timed_out"]
    assert bid["throughput_rps"] >= plain["throughput_rps"]
    assert bid["cold_starts"] <= plain["cold_starts"]


def test_the_shortage_gate_keeps_its_minutes_at_any_tick():
    """10 minutes of shortage before awards apply and 3 calm ones before they stop, in ticks of the inner policy."""
    from prewarmer.coord.policy import CoordinatedPolicy

    minute = CoordinatedPolicy(KeepAlivePolicy(600.0))
    assert (minute.tick_s, minute.short_ticks, minute.calm_ticks) == (60.0, 10, 3)
    marl = policy_factory("marl+bid")()  # the shipped checkpoint acts every 20 s
    assert (marl.tick_s, marl.short_ticks, marl.calm_ticks) == (20.0, 30, 9)
    assert policy_factory("marl:tick=60s+bid")().short_ticks == 10
    assert CoordinatedPolicy(KeepAlivePolicy(600.0), short_ticks=3).short_ticks == 3


def test_memory_is_short_after_several_ticks_of_requests_that_fill_the_cap_until_several_calm_ones():
    from types import SimpleNamespace

    from prewarmer.coord.policy import CoordinatedPolicy

    n = 9  # _long_and_short: function 0 has 1 GB, the others 0.5 GB
    zeros = np.zeros(n, np.int64)

    def tick(pol, concurrency, arrivals=zeros, completions=zeros, busy_gb_s=None, cap=40.0):
        obs = SimpleNamespace(in_flight=zeros, busy=zeros, starting=zeros, alive=zeros, timed_out=zeros,
                              memory_cap_gb=cap, dt=60.0, arrivals=np.asarray(arrivals),
                              completions=np.asarray(completions), concurrency=np.asarray(concurrency, float),
                              busy_gb_s=np.zeros(n) if busy_gb_s is None else np.asarray(busy_gb_s, float),
                              startup_s=None)
        pol.bids(obs)
        return pol.short

    pol = CoordinatedPolicy(KeepAlivePolicy(600.0), short_ticks=3, calm_ticks=3)
    pol.reset(_long_and_short().functions, 0.0)
    burst = np.array([40.0] + [0.0] * (n - 1))  # 40 GB of requests on average over the tick: the whole cap
    calm = np.array([10.0] + [0.0] * (n - 1))
    # An hourly burst: one full tick between calm ones never makes memory short (limits set on the burst's tick
    # would cut the calm tick after it).
    assert [tick(pol, c) for c in (calm, burst, calm, calm)] == [False] * 4
    # Three full ticks in a row do; a dip does not end it (lifting the limits for a tick lets the platform
    # thrash), three calm ticks in a row do.
    assert [tick(pol, c) for c in (burst, burst, burst, calm, burst)] == [False, False, True, True, True]
    assert [tick(pol, c) for c in (calm, calm, calm)] == [True, True, False]
    # Requests that limits make time out leave the system, but their arrivals still need the memory:
    # 1 request a second of 38 s each, 38 GB, with only 20 GB of them in the system.
    for _ in range(20):  # the duration and rate estimates settle
        short = tick(pol, np.array([20.0] + [0.0] * (n - 1)), arrivals=[60] + [0] * (n - 1),
                     completions=[60] + [0] * (n - 1), busy_gb_s=[60 * 38.0] + [0.0] * (n - 1))
    assert short and pol.demands[-1] == pytest.approx(0.95, rel=0.01)
    # A budget of the coordinator's own (the sidecars' Redis budget: no platform cap) is always enforced.
    own = CoordinatedPolicy(KeepAlivePolicy(600.0), budget_gb=40.0)
    own.reset(_long_and_short().functions, 0.0)
    assert tick(own, calm, cap=float("inf")) and tick(own, calm)


@pytest.mark.parametrize("era", ["before the trial of limits", "with the trial of limits"])
def test_a_coordinator_pickled_by_an_earlier_version_is_read_and_goes_on(era):
    """Shard checkpoints keep their version (v5): a coordinator pickled before the trial of limits, or with it
    (issue 14 item 3), is read by this one, goes on holding what it held, and decides."""
    import pickle
    from types import SimpleNamespace

    from prewarmer.coord.policy import UNLIMITED, CoordinatedPolicy

    pol = CoordinatedPolicy(KeepAlivePolicy(600.0))
    pol.reset(_long_and_short().functions, 0.0)
    n = 9
    pol.held = np.array([3] + [0] * (n - 1), np.int64)
    pol.limits = np.array([3] + [UNLIMITED] * (n - 1), np.int64)
    for name in ("demand_share", "short_ticks", "calm_ticks", "demands", "memory_short"):
        del pol.__dict__[name]  # as a coordinator of before the shortage gate was pickled
    if era == "with the trial of limits":
        pol.__dict__.update(trial_limits=True, loss={True: 0.01, False: 0.02}, limited_now=True, trialed_now=True,
                            contention_ticks=10, gate_holds=False, since_contention=0, holding=pol.held.copy())
    else:
        del pol.__dict__["holding"]
    back = pickle.loads(pickle.dumps(pol))
    assert back.holding.tolist() == [3] + [0] * (n - 1) and back.limiting and back.demands == []
    assert not hasattr(back, "loss") and not hasattr(back, "since_contention")
    zeros = np.zeros(n, np.int64)
    obs = SimpleNamespace(in_flight=zeros, busy=zeros, starting=zeros, alive=np.full(n, 2), timed_out=zeros,
                          memory_cap_gb=100.0, dt=60.0, arrivals=zeros, completions=zeros, busy_gb_s=np.zeros(n),
                          concurrency=np.zeros(n), startup_s=None)
    back.bids(obs)
    scaled = back.bound_scaling(Actions(scale_to=np.ones(n, np.int64)), obs)
    assert scaled.scale_to.tolist() == [-1] + [1] * (n - 1)  # the held award is not scaled down; the others are
