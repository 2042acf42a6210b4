"""Inference-time settings of `marl` (idle price, priced keep-alive cap, forecast hold): parsing and effect."""

from __future__ import annotations

import numpy as np
import pytest

from prewarmer.actions import Actions
from prewarmer.agents.keep_alive import CANDIDATES_MIN, priced_keep_alive
from prewarmer.agents.marl import MARLPolicy
from prewarmer.registry import policy_factory
from prewarmer.sim.replay import ReplayConfig, replay
from prewarmer.workloads.base import FunctionTable, MinuteCountWorkload


def gaps(*per_function: dict[int, int], bins: int = 241) -> np.ndarray:
    h = np.zeros((len(per_function), bins), np.int64)
    for row, counts in enumerate(per_function):
        for g, n in counts.items():
            h[row, g] = n
    return h


def test_priced_keep_alive_weighs_idle_memory_against_cold_starts() -> None:
    # Gaps of 45 minutes: a 60-minute window keeps every call warm at 44.5 idle minutes a gap.
    hist = gaps({45: 10}, {45: 10}, {45: 2}, {240: 10})
    gb = np.array([0.25, 8.0, 1.0, 1.0])
    ka = priced_keep_alive(hist, gb, price=0.07)
    # 0.25 GB: 44.5 * 0.25 * 0.07 = 0.78 < 1 cold start: keep it 60 min; 8 GB: 24.9 > 1 + 5 * 8 * 0.07: let it go.
    assert ka[0] == 60 * 60.0 and ka[1] == CANDIDATES_MIN[0] * 60.0
    assert np.isinf(ka[2])  # two gaps: no opinion
    assert ka[3] == CANDIDATES_MIN[0] * 60.0  # every gap beyond any window: the shortest
    # Prewarmed 25 minutes after a call, a 30-minute gap idles 4.5 minutes: the shortest window catches it.
    assert priced_keep_alive(gaps({30: 10}), np.ones(1), 0.07, prewarm_s=np.array([1500.0]))[0] == 5 * 60.0
    assert priced_keep_alive(gaps({30: 10}), np.array([0.25]), 0.07)[0] == 30 * 60.0  # 0.52 < 1 cold start
    # A free idle minute keeps the longest window that still helps (the shortest on a tie).
    assert priced_keep_alive(gaps({100: 5, 3: 5}), np.ones(1), price=0.0)[0] == 120 * 60.0


def test_marl_spec_settings_parse_and_reach_the_policy() -> None:
    p = policy_factory("marl:price=0.2,cap=priced,hold=1m")()
    assert (p.idle_gb_tick_cost, p.keep_alive_cap_s, p.hold_s) == (0.2, "priced", 60.0)
    p = policy_factory("marl")()  # the defaults chosen on the folds
    assert (p.keep_alive_cap_s, p.cold_target, p.waste_target) == (5400.0, 0.95, None)
    assert (p.fair, p.fair_budget, p.timers) == (0.33, 0.9, True)
    p = policy_factory("marl:cap=off,cold_target=off")()
    assert (p.keep_alive_cap_s, p.cold_target) == (None, None)
    p = policy_factory("marl:cap=2h")()
    assert p.keep_alive_cap_s == 7200.0 and p.idle_gb_tick_cost == pytest.approx(p.model.idle_gb_tick_cost.item())
    for bad, message in (("marl:price=-1", "price must be >= 0"), ("marl:cap=soon", "not a duration"),
                         ("marl:colour=red", "unknown parameter 'colour'"), ("marl:a.pt,b.pt", "one checkpoint")):
        with pytest.raises(ValueError, match=message):
            policy_factory(bad)


def test_keep_alive_cap_applies_only_where_hybrid_does_not_prewarm() -> None:
    p = MARLPolicy(keep_alive_cap_s=1800.0)
    hyb = Actions(keep_alive_s=np.array([14400.0, 14400.0, 600.0]), surplus_keep_alive_s=np.full(3, 600.0),
                  prewarm_delay_s=np.array([0.0, 120.0, 0.0]))
    capped = p._capped(hyb)
    assert capped.keep_alive_s.tolist() == [1800.0, 14400.0, 600.0]


def _rare_big_functions() -> MinuteCountWorkload:
    """Four 4-GB functions invoked after irregular gaps of 20-120 minutes for 12 hours: a histogram too flat
    to be representative at first, then prewarmed about 20 minutes after a call and kept 2 hours."""
    n, minutes = 4, 720
    counts = np.zeros((n, minutes), np.int32)
    rng = np.random.default_rng(1)
    for f in range(n):
        at = np.cumsum(rng.integers(20, 121, size=30))
        counts[f, at[at < minutes]] = 1
    table = FunctionTable(names=[f"r{f}" for f in range(n)], apps=np.arange(n, dtype=np.int32),
                          app_names=[f"r{f}" for f in range(n)], memory_mb=np.full(n, 4096.0),
                          cold_start_s=np.full(n, np.nan))
    return MinuteCountWorkload(table, counts, np.tile(np.array([100, 100, 150, 200, 250, 300, 300], float), (n, 1)))


def test_a_priced_cap_lets_big_rarely_used_instances_go() -> None:
    w = _rare_big_functions()
    cfg = ReplayConfig(seed=0)
    plain = replay(w, policy_factory("marl:cap=off,cold_target=off,fair=off,timers=off"), cfg).metrics()
    priced = replay(w, policy_factory("marl:cap=priced,cold_target=off,fair=off,timers=off"), cfg).metrics()
    # 4 GB idle for 20-120 minutes costs 5.6-34 cold starts at 0.07: not worth one.
    assert priced["wasted_gb_s"] < 0.5 * plain["wasted_gb_s"]
    assert priced["cold_starts"] >= plain["cold_starts"]


def _obs(cold: int, peak: int, n: int = 2):
    from prewarmer.observation import Observation

    z = np.zeros(n, np.int64)
    return Observation(now=60.0, dt=60.0, arrivals=z + peak, cold_starts=z + cold, completions=z, timed_out=z,
                       alive=z, starting=z, busy=z, idle_warm=z, in_flight=z, peak_in_flight=z + peak,
                       concurrency=np.zeros(n), wasted_gb_s=np.zeros(n), busy_gb_s=np.zeros(n),
                       memory_mb=np.full(n, 1024.0), idle_time_func=np.empty(0, np.int32), idle_time_s=np.empty(0))


@pytest.mark.parametrize(("cold", "direction"), [(3, -1), (0, 1)])
def test_the_price_adapts_towards_the_cold_start_target(cold: int, direction: int) -> None:
    from prewarmer.workloads.base import FunctionTable

    p = MARLPolicy(cold_target=0.5, tick_s=60.0)  # minute-long ticks, as the observations below
    p.reset(FunctionTable(names=["a", "b"], apps=np.arange(2, dtype=np.int32), app_names=["a", "b"],
                          memory_mb=np.full(2, 1024.0), cold_start_s=np.full(2, np.nan)), 0.0)
    start = p.price
    # The keep-alive's pool would have had 2 instances, the peak was 4: it would have been 2 short per
    # function; the target allows 1 cold start per function, and `cold` happened.
    p.tracker.pools = np.full((2, p.tracker.short.shape[1]), 2.0)
    p.tracker.scored = 100
    for _ in range(20):
        p.adapt_price(_obs(cold, 4))
        assert p.tracker.idle_cost == p.price
    assert np.sign(p.price - start) == direction


def _two_functions() -> FunctionTable:
    return FunctionTable(names=["a", "b"], apps=np.arange(2, dtype=np.int32), app_names=["a", "b"],
                         memory_mb=np.full(2, 1024.0), cold_start_s=np.full(2, np.nan))


def test_shadow_hybrid_idle_counts_the_last_instance_and_the_scale_out() -> None:
    from prewarmer.agents.marl import shadow_hybrid_idle

    obs = _obs(0, 0)
    obs.memory_mb = np.array([1024.0, 2048.0])
    # Function 0: two gaps ended, 100 s and 900 s, under a 600 s keep-alive: idle 100 + 600 s. Function 1:
    # a 900 s gap, prewarmed at 300 s and kept 120 s: idle 120 s (2 GB); and a peak of 5 in flight at 2 on
    # average: 3 instances idle for the 60 s tick.
    obs.idle_time_func, obs.idle_time_s = np.array([0, 0, 1], np.int32), np.array([100.0, 900.0, 900.0])
    obs.peak_in_flight, obs.concurrency = np.array([0, 5]), np.array([0.0, 2.0])
    hybrid = Actions(keep_alive_s=np.array([600.0, 120.0]), surplus_keep_alive_s=np.array([600.0, 120.0]),
                     prewarm_delay_s=np.array([0.0, 300.0]))
    assert shadow_hybrid_idle(obs, hybrid).tolist() == pytest.approx([700.0, 2 * 120.0 + 3 * 60.0 * 2])


@pytest.mark.parametrize(("cold", "waste", "direction"), [
    (1, 1e5, 1),    # cold starts under their target, waste above its own: the price rises
    (3, 1e5, -1),   # cold starts above their target: the price falls, whatever the waste (cold wins)
    (1, 10.0, -1),  # both under target: the price falls, spending the waste headroom on cold starts
])
def test_the_waste_target_moves_the_price_within_the_cold_target(cold: int, waste: float, direction: int) -> None:
    p = MARLPolicy(cold_target=1.0, waste_target=1.0, tick_s=60.0)
    p.reset(_two_functions(), 0.0)
    start = p.price
    p.tracker.pools = np.full((2, p.tracker.short.shape[1]), 2.0)  # the keep-alive: 2 short per function
    p.tracker.scored = 100
    hybrid = Actions(keep_alive_s=np.full(2, 600.0), surplus_keep_alive_s=np.full(2, 600.0),
                     prewarm_delay_s=np.zeros(2))
    obs = _obs(cold, 4)
    obs.concurrency = np.full(2, 3.0)  # the shadow hybrid idles (4 - 3) x 60 s x 1 GB per function a tick
    obs.wasted_gb_s = np.full(2, waste / 2)
    for _ in range(20):
        p.adapt_price(obs, hybrid)
    assert np.sign(p.price - start) == direction and p.tracker.idle_cost == p.price
    assert p.hybrid_waste_sum > 0


def test_waste_target_parses_and_defaults_off() -> None:
    p = policy_factory("marl:waste_target=0.9,cold_target=1.05")()
    assert (p.waste_target, p.cold_target) == (0.9, 1.05)
    assert policy_factory("marl:waste_target=off")().waste_target is None
    with pytest.raises(ValueError, match="positive"):
        policy_factory("marl:waste_target=0")


def _busy_functions() -> MinuteCountWorkload:
    """Three 2-GB functions with bursty minutes (0-40 calls of ~20 s each): forecast-provisioned, so what
    they hold idle depends on the idle price."""
    n, minutes = 3, 360
    rng = np.random.default_rng(3)
    counts = (rng.poisson(8.0, size=(n, minutes)) * rng.integers(0, 2, size=(n, minutes)) * 2).astype(np.int32)
    table = FunctionTable(names=[f"b{f}" for f in range(n)], apps=np.arange(n, dtype=np.int32),
                          app_names=[f"b{f}" for f in range(n)], memory_mb=np.full(n, 2048.0),
                          cold_start_s=np.full(n, np.nan))
    return MinuteCountWorkload(table, counts, np.tile(np.array([5e3, 1e4, 15e3, 2e4, 25e3, 3e4, 4e4]), (n, 1)))


def test_a_waste_target_below_what_the_fleet_idles_raises_the_price_and_cuts_the_waste() -> None:
    w = _busy_functions()
    cfg = ReplayConfig(seed=0)
    runs = {}
    for spec in ("marl:cold_target=off", "marl:cold_target=off,waste_target=0.2"):
        policy = policy_factory(spec)()
        runs[spec] = (replay(w, lambda p=policy: p, cfg).metrics(), policy.price)
    (plain, plain_price), (targeted, price) = runs.values()
    assert plain_price == pytest.approx(0.07) and price > 2 * plain_price
    assert targeted["wasted_gb_s"] < 0.95 * plain["wasted_gb_s"]
    assert targeted["cold_starts"] >= plain["cold_starts"]


def _table(memory_mb: list[float]) -> FunctionTable:
    n = len(memory_mb)
    return FunctionTable(names=[f"f{i}" for i in range(n)], apps=np.arange(n, dtype=np.int32),
                         app_names=[f"f{i}" for i in range(n)], memory_mb=np.array(memory_mb, float),
                         cold_start_s=np.full(n, np.nan))


def test_the_cold_share_guard_holds_the_instances_of_functions_that_cold_start_often_within_its_bound() -> None:
    from prewarmer.agents.action_space import FORECAST, HYBRID, to_actions
    from prewarmer.forecast.peak import TAUS
    from prewarmer.observation import Observation

    p = MARLPolicy(fair=0.3, fair_window_s=3600.0, fair_gb_s=3 * 3600.0)
    p.reset(_table([1024.0, 1024.0, 8192.0]), 0.0)
    hybrid = Actions(keep_alive_s=np.full(3, 600.0), surplus_keep_alive_s=np.full(3, 300.0),
                     prewarm_delay_s=np.full(3, 120.0))
    pools = np.tile(np.array([[1.0], [5.0], [1.0]]), (1, len(TAUS)))  # each forecast quantile: 1, 5, 1 instances

    def tick(arrivals: list[int], cold: list[int], alive: list[int], choice: int = FORECAST[0]):
        a, c, al = (np.array(x, np.int64) for x in (arrivals, cold, alive))
        z = np.zeros(3, np.int64)
        obs = Observation(now=60.0, dt=60.0, arrivals=a, cold_starts=c, completions=a, timed_out=z, alive=al,
                          starting=z, busy=z, idle_warm=al, in_flight=z, peak_in_flight=a, concurrency=np.zeros(3),
                          wasted_gb_s=np.zeros(3), busy_gb_s=np.zeros(3), memory_mb=p.memory_mb,
                          idle_time_func=np.empty(0, np.int32), idle_time_s=np.empty(0))
        held = p.cold_share_held(obs)
        actions, keep_alive, _ = to_actions(np.full(3, choice), obs, p.keep_alive, p.prewarm_delay, hybrid, pools,
                                            held=held, held_s=p.fair_window_s)
        return held, actions, keep_alive

    # f0: 3 of 3 cold, 3 instances of 1 GB for an hour (10,800 GB-s, the bound): held, none trimmed, no prewarm;
    # f1: 1 of 10 cold: as decided; f2: 8 GB, 3 of 3 cold, but 86,400 GB-s to hold: as decided.
    held, a, keep_alive = tick([3, 10, 3], [3, 1, 3], [3, 2, 3])
    assert held.tolist() == [True, False, False]
    assert a.keep_alive_s.tolist() == [3600.0, 600.0, 600.0]
    assert a.surplus_keep_alive_s.tolist() == [3600.0, 300.0, 300.0]
    assert a.prewarm_delay_s.tolist() == [0.0, 0.0, 0.0] and a.scale_to.tolist() == [3, 5, 1]
    assert keep_alive[0] == 3600.0
    # The share is over the whole run: 3 of 13 is below 0.3, so f0 is left as decided again.
    held, a, _ = tick([10, 0, 0], [0, 0, 0], [3, 2, 3])
    assert not held.any() and a.keep_alive_s[0] == 600.0 and a.scale_to[0] == 1
    # Held under hybrid's windows: no release-and-prewarm (hybrid's 120 s delay) for f2 once it is over the share.
    p.fair_gb_s = np.inf
    held, a, _ = tick([0, 0, 1], [0, 0, 1], [0, 0, 1], HYBRID)
    assert held.tolist() == [False, False, True] and a.prewarm_delay_s.tolist() == [120.0, 120.0, 0.0]
    with pytest.raises(ValueError, match="share of cold starts"):
        MARLPolicy(fair=1.5)
    assert policy_factory("marl:fair=0.33,fair_window=1h,fair_gb_s=4e4")().fair_gb_s == 40000.0


def test_the_cold_share_guard_keeps_bursts_that_outlast_the_windows_warm() -> None:
    """Bursts of 4 concurrent calls every 45 minutes for 12 hours: `marl` trims the burst's instances at the next
    tick and cold-starts most of every burst; with the guard the four stay for the next one while the function's
    share of cold starts is at or above 0.3, so the share ends near 0.3 (within a burst). The same bursts of an
    8-GB function cost more than the guard's bound to hold and are left as they were."""
    from prewarmer.sim import engine as E

    minutes = 720
    counts = np.zeros((2, minutes), np.int32)
    counts[:, 5::45] = 4
    w = MinuteCountWorkload(_table([1024.0, 8192.0]), counts,
                            np.tile(np.array([20e3, 20e3, 25e3, 30e3, 35e3, 40e3, 40e3]), (2, 1)))
    cfg = ReplayConfig(seed=0)
    # The bursts fall on minute-long ticks; the guard unbounded by a budget, no timer pools (they would hold them).
    plain = replay(w, policy_factory("marl:tick=60s,fair=off,timers=off"), cfg)
    fair = replay(w, policy_factory("marl:fair=0.3,fair_window=1h,fair_gb_s=20000,fair_budget=off,tick=60s,timers=off"),
                  cfg)
    cold_plain, cold_fair = plain.fi[:, E.F_COLD], fair.fi[:, E.F_COLD]
    calls = int(counts[0].sum())
    assert cold_plain[0] > 0.5 * calls and cold_fair[0] <= 0.3 * calls + 4
    assert cold_fair[1] == cold_plain[1]
    assert fair.fs[0, E.S_WASTE] > plain.fs[0, E.S_WASTE]  # the warm bursts are paid for in idle memory


def test_the_cold_share_guards_budget_holds_only_while_the_fleet_idles_less_than_that_share_of_hybrids() -> None:
    """With `fair_budget`, the guard holds only while the fleet's idle GB-s so far are at most that fraction of what
    the shadow hybrid would have idled (`shadow_hybrid_idle`: here its scale-out, the tick's peak in flight less
    the average, a minute at 1 GB per instance), and not before the price's warm-up has scored its ticks."""
    from prewarmer.agents.marl import PRICE_WARMUP
    from prewarmer.observation import Observation

    p = MARLPolicy(fair=0.3, fair_budget=0.5, tick_s=60.0)
    p.reset(_table([1024.0, 1024.0]), 0.0)
    hybrid = Actions(keep_alive_s=np.full(2, 600.0), surplus_keep_alive_s=np.full(2, 300.0),
                     prewarm_delay_s=np.zeros(2))

    def held(peak: list[int], wasted: float) -> list[bool]:
        a, z = np.array(peak, np.int64), np.zeros(2, np.int64)
        obs = Observation(now=60.0, dt=60.0, arrivals=a, cold_starts=a, completions=a, timed_out=z, alive=a,
                          starting=z, busy=z, idle_warm=a, in_flight=z, peak_in_flight=a, concurrency=np.zeros(2),
                          wasted_gb_s=np.array([wasted, 0.0]), busy_gb_s=np.zeros(2), memory_mb=p.memory_mb,
                          idle_time_func=np.empty(0, np.int32), idle_time_s=np.empty(0))
        return p.cold_share_held(obs, hybrid).tolist()

    p.tracker.scored = PRICE_WARMUP - 1
    assert held([2, 0], 0.0) == [False, False]  # every call cold, but the sums have too little history yet
    p.tracker.scored = PRICE_WARMUP
    # So far: hybrid 2 x 60 + 2 x 60 = 240 GB-s, the fleet 100: within half of it; f1 was never invoked.
    assert held([2, 0], 100.0) == [True, False]
    # 100 + 60 = 160 against half of 240 + 60: over the budget, nothing is held, whatever the shares.
    assert held([1, 0], 60.0) == [False, False]
    assert held([4, 0], 0.0) == [True, False]  # 160 against half of 540: held again
    with pytest.raises(ValueError, match="fair_budget must be positive"):
        MARLPolicy(fair=0.3, fair_budget=0.0)
    assert policy_factory("marl:fair=0.33,fair_budget=1.05")().fair_budget == 1.05
    assert policy_factory("marl:fair=0.33,fair_budget=off")().fair_budget is None


def test_a_shorter_tick_keeps_every_duration_of_the_policy_in_time() -> None:
    """`tick`: the agents act every `tick_s`; what the policy measures in ticks keeps its length in time (the 10-minute
    keep-alive option spans 10 minutes of peaks, the tracker's and the price's memories and warm-ups their minutes)
    and the idle price per GB-minute is charged pro rata per tick. Replay ticks at that period."""
    from prewarmer.agents.experts import KEEP_ALIVE_TICKS, TRACKER_WARMUP

    p = policy_factory("marl:tick=20s")()
    assert p.tick_s == 20.0 and MARLPolicy.tick_s == 60.0  # the setting is the instance's, not the class's
    p.reset(_table([1024.0]), 0.0)
    assert p.tracker.keep_alive_ticks == 30 and p.tracker.warmup == 3 * TRACKER_WARMUP
    assert p.tracker.idle_cost == pytest.approx(p.price / 3)
    # The keep-alive option's pool: the largest peak of the last 30 ticks (10 minutes), not of the last 10.
    peaks = np.zeros((1, 60))
    peaks[0, 25] = 7.0
    p.tracker.propose(np.zeros((1, 6)), peaks)
    assert p.tracker.pools[0, -1] == 7.0
    minute = MARLPolicy(tick_s=60.0)
    minute.reset(_table([1024.0]), 0.0)
    assert minute.tracker.keep_alive_ticks == KEEP_ALIVE_TICKS == 10
    minute.tracker.propose(np.zeros((1, 6)), peaks)
    assert minute.tracker.pools[0, -1] == 0.0
    for bad in ("5s", "2m"):
        with pytest.raises(ValueError, match="tick must be between"):
            policy_factory(f"marl:tick={bad}")()
    # Replay asks the policy every 20 s: 30 decisions in 10 minutes.
    counts = np.zeros((1, 10), np.int32)
    counts[0, :] = 3
    w = MinuteCountWorkload(_table([512.0]), counts, np.full((1, 7), 500.0))
    calls = []

    def make() -> MARLPolicy:
        policy = policy_factory("marl:tick=20s")()
        decide = policy.decide
        policy.decide = lambda now, obs: calls.append(now) or decide(now, obs)
        return policy

    replay(w, make, ReplayConfig(seed=0))
    assert calls == [20.0 * k for k in range(1, 31)]
