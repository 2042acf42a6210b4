"""`marl`'s warm floor (`floor`: instances above it go after `hold` idle, within the tick) and its quantiles
below q75 (`low`): the actions they emit, their effect through the simulator, and their bound under a budget."""

from __future__ import annotations

import numpy as np
import pytest

from prewarmer.actions import Actions
from prewarmer.agents.action_space import FORECAST, HYBRID, KA10, KEEP, LOW, TRACKED, to_actions
from prewarmer.agents.experts import ProvisioningTracker
from prewarmer.forecast.peak import TAUS
from prewarmer.registry import policy_factory
from prewarmer.sim.replay import ReplayConfig, replay
from prewarmer.workloads.base import FunctionTable, MinuteCountWorkload


def _busy_functions(minutes: int = 240) -> MinuteCountWorkload:
    """Four 1-GB functions called 10-80 times a minute (Poisson, a slow swing of +-50%), 1-8 s each: a few
    instances in flight, a peak that moves from tick to tick."""
    n = 4
    rng = np.random.default_rng(2)
    rate = np.array([20.0, 40.0, 80.0, 10.0])
    counts = rng.poisson(rate[:, None] * (1 + 0.5 * np.sin(np.arange(minutes) / 30.0))[None, :]).astype(np.int32)
    table = FunctionTable(names=[f"b{f}" for f in range(n)], apps=np.arange(n, dtype=np.int32),
                          app_names=[f"b{f}" for f in range(n)], memory_mb=np.full(n, 1024.0),
                          cold_start_s=np.full(n, np.nan))
    durations = np.array([1000, 1500, 2000, 3000, 4000, 6000, 8000], float)
    return MinuteCountWorkload(table, counts, np.tile(durations, (n, 1)))


def _obs(n: int):
    from prewarmer.observation import Observation

    z = np.zeros(n, np.int64)
    return Observation(now=60.0, dt=60.0, arrivals=z, cold_starts=z, completions=z, timed_out=z, alive=z + 1,
                       starting=z, busy=z, idle_warm=z + 1, in_flight=z, peak_in_flight=z, concurrency=np.zeros(n),
                       wasted_gb_s=np.zeros(n), busy_gb_s=np.zeros(n), memory_mb=np.full(n, 1024.0),
                       idle_time_func=np.empty(0, np.int32), idle_time_s=np.empty(0))


def test_the_spec_settings_parse() -> None:
    p = policy_factory("marl:hold=20s,floor=q50,low=on")()
    assert (p.hold_s, p.floor, p.low) == (20.0, 0.5, True)
    assert policy_factory("marl:floor=inflight")().floor == "inflight"
    p = policy_factory("marl")()
    assert (p.floor, p.low) == (None, False)  # both off by default: measured on the folds, not chosen
    for bad in ("marl:floor=q42", "marl:floor=half", "marl:low=yes"):
        with pytest.raises(ValueError):
            policy_factory(bad)


def test_a_forecast_choice_holds_its_floor_within_its_pool_and_other_choices_lift_it() -> None:
    n = 5
    q = np.tile(np.array([2.0, 4.0, 5.0, 6.0, 7.0, 9.0]), (n, 1))  # quantiles 0.5 ... 0.98 of the next peak
    choice = np.array([FORECAST[0], FORECAST[-1], HYBRID, KEEP, LOW[0]])
    floor = np.array([3, 30, 3, 3, 3])
    hyb = Actions(keep_alive_s=np.full(n, 600.0), surplus_keep_alive_s=np.full(n, 600.0),
                  prewarm_delay_s=np.zeros(n))
    a, _, _ = to_actions(choice, _obs(n), np.full(n, 600.0), np.zeros(n), hyb, q, None, 20.0, floor)
    assert a.scale_to.tolist() == [4, 9, -1, -1, 2]  # q75, q98, none, none, q50
    assert a.min_instances.tolist() == [3, 9, 0, 0, 2]  # the floor, never above the pool
    assert a.surplus_keep_alive_s[[0, 1, 4]].tolist() == [20.0] * 3  # above the floor: the hold
    a, _, _ = to_actions(choice, _obs(n), np.full(n, 600.0), np.zeros(n), hyb, q, None, 20.0)
    assert a.min_instances is None  # no floor asked: the actions of the default, unchanged


def test_a_floor_keeps_a_short_hold_from_letting_the_tick_s_pool_go() -> None:
    """A 20 s hold alone lets every instance the forecast started go 20 s after it is ready, so the rest of
    the tick runs cold; under a floor at the median forecast those stay, and only the ones above it go. Either
    way less idle memory than the default 5-minute hold (which the next tick's scale-to trims)."""
    w, cfg = _busy_functions(), ReplayConfig(seed=0)
    run = {s: replay(w, policy_factory(f"marl:cold_target=off,tick=60s{s}"), cfg).metrics()  # minute-long ticks
           for s in ("", ",hold=20s", ",hold=20s,floor=q50")}
    floored, short, default = run[",hold=20s,floor=q50"], run[",hold=20s"], run[""]
    assert floored["cold_starts"] < 0.3 * short["cold_starts"]
    assert floored["wasted_gb_s"] < 0.95 * default["wasted_gb_s"]
    assert floored["wasted_gb_s"] > short["wasted_gb_s"]


def test_the_tracker_offers_the_median_only_when_asked() -> None:
    gb = np.array([1024.0, 1024.0])
    plain, low = ProvisioningTracker(gb, 2.0), ProvisioningTracker(gb, 2.0, low=True)
    q = np.tile(np.array([1.0, 3.0, 4.0, 5.0, 6.0, 8.0]), (2, 1))
    recent = np.full((2, 20), 3.0)
    for t in (plain, low):
        t.warmup = 0
        for _ in range(10):
            t.propose(q, recent)
            t.update(np.array([1.0, 1.0]))  # the peak was at the median: q75 and above idle, at 2 per GB-tick
    assert low.pools.shape[1] == plain.pools.shape[1] + 1 and (low.pools[:, 0] == 1).all()
    assert (low.best() == LOW[0]).all()
    assert np.isin(plain.best(), np.concatenate([FORECAST, [KA10]])).all() and TRACKED not in plain.best()


def test_where_idle_memory_is_dear_the_median_saves_it() -> None:
    w, cfg = _busy_functions(), ReplayConfig(seed=0)
    plain = replay(w, policy_factory("marl:price=2,cold_target=off"), cfg).metrics()
    low = replay(w, policy_factory("marl:price=2,cold_target=off,low=on"), cfg).metrics()
    assert low["wasted_gb_s"] < 0.95 * plain["wasted_gb_s"]
    assert low["cold_starts"] > plain["cold_starts"]


def test_a_budget_bounds_the_floor_to_the_award() -> None:
    from prewarmer.coord.policy import CoordinatedPolicy

    n = 3
    p = CoordinatedPolicy.__new__(CoordinatedPolicy)
    p.holding = np.zeros(n, np.int64)
    a = Actions(scale_to=np.array([5, 5, -1]), min_instances=np.array([4, 1, 0]),
                max_instances=np.array([2, 9, 2]))
    out = p.bound_scaling(a, _obs(n))
    assert out.scale_to.tolist() == [2, 5, -1] and out.min_instances.tolist() == [2, 1, 0]
    assert TAUS[0] == 0.5  # the floor `q50` and the `low` option read this column
