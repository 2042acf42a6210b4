"""Policy tests: the baselines on hand-made traces with known answers, and their decision rules."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from helpers import ListWorkload, make_table, run

from prewarmer.observation import Observation
from prewarmer.policies import (
    AlwaysWarmPolicy,
    HybridHistogramPolicy,
    KeepAlivePolicy,
    KnativePolicy,
)
from prewarmer.registry import policy_factory
from prewarmer.sim import engine as E
from prewarmer.sim.replay import SimResult

GB = 1024.0


def observation(now: float, n: int = 1, *, concurrency=0.0, alive=0, starting=0, idle_func=(),
                idle_s=(), dt: float = 2.0) -> Observation:
    """An Observation with the given fields, zeros elsewhere."""
    z = np.zeros(n, np.int64)
    return Observation(
        now=now, dt=dt, arrivals=z, cold_starts=z, completions=z, timed_out=z,
        alive=np.broadcast_to(np.asarray(alive, np.int64), (n,)).copy(),
        starting=np.broadcast_to(np.asarray(starting, np.int64), (n,)).copy(), busy=z, idle_warm=z,
        in_flight=z, peak_in_flight=z, concurrency=np.broadcast_to(np.asarray(concurrency, np.float64), (n,)).copy(),
        wasted_gb_s=np.zeros(n), busy_gb_s=np.zeros(n), memory_mb=np.full(n, GB),
        idle_time_func=np.asarray(idle_func, np.int32),
        idle_time_s=np.asarray(idle_s, np.float64))


def alive_at(res: SimResult, t: float, col: int = 0) -> int:
    """Instances of a top function alive at the sample taken at time t (runs with sample_s=1)."""
    k = int(np.flatnonzero(np.isclose(res.sample_t, t))[0])
    return int(res.alive_top[k, col])


# --------------------------------------------------------------------------------------------------
# fixed keep-alive and always-warm
# --------------------------------------------------------------------------------------------------

EVERY_5_MIN = [(300.0 * k, 0, 1.0) for k in range(12)]  # t = 0, 300, ..., 3300; 1 s each; 1 GB


def test_fixed_1m_vs_10m_on_a_5_minute_timer() -> None:
    w = ListWorkload([("timer", GB)], EVERY_5_MIN, 3600.0)
    # fixed:10m: only the first call is cold; the instance is then never idle longer than 299 s, and it is
    # still alive at the end (expiry 3301 + 600 > 3600): alive 0..3600, busy 12 -> waste 3588.
    ten = run(w, policy_factory("fixed:10m")()).metrics()
    assert ten["cold_starts"] == 1
    assert ten["wasted_gb_s"] == pytest.approx(3600.0 - 12.0)
    # fixed:1m: each instance expires 60 s after its call, 299 s before the next: every call is cold.
    # Per call: 1 s start-up + 60 s idle = 61 GB s of waste.
    one = run(w, policy_factory("fixed:1m")()).metrics()
    assert one["cold_starts"] == 12
    assert one["cold_start_rate"] == 1.0
    assert one["wasted_gb_s"] == pytest.approx(12 * 61.0)
    assert one["busy_gb_s"] == ten["busy_gb_s"] == pytest.approx(12.0)


def test_always_warm_never_cold_for_a_sequential_function() -> None:
    # The instance is prewarmed at t=0 (ready at 1) and never released: calls from t=10 on are all warm.
    # It holds memory for the whole run, so waste = horizon x memory - busy.
    calls = [(10.0 + 300.0 * k, 0, 2.0) for k in range(12)] + [(50.0 + 600.0 * k, 1, 1.0) for k in range(6)]
    w = ListWorkload([("a", GB), ("b", 512.0)], calls, 3600.0)
    res = run(w, AlwaysWarmPolicy())
    m = res.metrics()
    assert m["cold_starts"] == 0
    assert res.fi[:, E.F_STARTS].tolist() == [1, 1]
    assert res.fi[:, E.F_RELEASED].tolist() == [0, 0]
    busy = 12 * 2.0 * 1.0 + 6 * 1.0 * 0.5
    assert m["busy_gb_s"] == pytest.approx(busy)
    assert m["wasted_gb_s"] == pytest.approx(3600.0 * 1.5 - busy)
    assert res.fs[:, E.S_WASTE] == pytest.approx([3600.0 - 24.0, 0.5 * (3600.0 - 6.0)])
    assert m["peak_memory_gb"] == pytest.approx(1.5)


def test_always_warm_call_at_time_zero_waits_for_the_prewarm() -> None:
    # A call at t=0 finds the prewarmed instance still starting: it waits for it (a cold start, 1 s).
    w = ListWorkload([("a", GB)], [(0.0, 0, 1.0), (100.0, 0, 1.0)], 200.0)
    res = run(w, AlwaysWarmPolicy())
    assert res.metrics()["cold_starts"] == 1
    assert res.fi[0, E.F_STARTS] == 1
    assert res.fs[0, E.S_LAT_SUM] == pytest.approx(2.0 + 1.0)


# --------------------------------------------------------------------------------------------------
# Knative KPA
# --------------------------------------------------------------------------------------------------

STEADY = [(10.0 + k, 0, 0.5) for k in range(200)]  # one call a second, 10..209, concurrency 0.5
T_LAST = STEADY[-1][0]


def test_kpa_keeps_instances_under_steady_load_and_scales_to_zero_after_window_and_grace() -> None:
    w = ListWorkload([("f", GB)], STEADY, 600.0)
    res = run(w, KnativePolicy(), sample_s=1.0)
    # Steady traffic: after the first seconds no more cold starts (same count as with 20 calls only).
    head = run(ListWorkload([("f", GB)], STEADY[:20], 600.0), KnativePolicy(), sample_s=1.0)
    assert res.metrics()["cold_starts"] == head.metrics()["cold_starts"] <= 3
    assert all(alive_at(res, t) >= 1 for t in range(30, 210, 5))
    # After the last call (209, done 209.5): the 60 s stable window must see no traffic, then 30 s grace.
    assert alive_at(res, T_LAST + 60.0) == 1
    assert alive_at(res, T_LAST + 85.0) == 1
    assert alive_at(res, T_LAST + 100.0) == 0
    zero = res.sample_t[(res.sample_t > T_LAST) & (res.alive_top[:, 0] == 0)]
    assert T_LAST + 60.0 + 30.0 <= zero[0] <= T_LAST + 60.0 + 30.0 + 2 * 2.0  # within two 2 s ticks
    # Shorter windows scale to zero sooner.
    fast = run(w, policy_factory("kpa:stable_window=20s,grace=10s")(), sample_s=1.0)
    assert alive_at(fast, T_LAST + 45.0) == 0


def test_kpa_panic_decision_scales_up_and_holds() -> None:
    # 30 ticks (60 s) at concurrency 0.5 on 1 instance: desired ceil(0.5 / 0.7) = 1.
    p = KnativePolicy()
    p.reset(make_table([("f", GB)]), 0.0)
    now, alive = 0.0, 1
    for _ in range(30):
        now += 2.0
        alive = int(p.decide(now, observation(now, concurrency=0.5, alive=alive)).scale_to[0])
        assert alive == 1
    # Burst tick at 62: concurrency 10. Panic window (3 ticks): (0.5 + 0.5 + 10) / 3 = 3.67 -> ceil(3.67 / 0.7)
    # = 6 instances, 6 / 1 ready >= 200%: panic. The stable window alone would say ceil(0.817 / 0.7) = 2.
    now += 2.0
    alive = int(p.decide(now, observation(now, concurrency=10.0, alive=alive)).scale_to[0])
    assert alive == 6
    assert p.panic_until[0] == pytest.approx(now + 60.0)
    panic_end = now + 60.0
    # Traffic stops: no scale-down while in panic (one stable window), then at most halving per tick.
    seen = []
    while now < panic_end + 10.0:
        now += 2.0
        alive = int(p.decide(now, observation(now, concurrency=0.0, alive=alive)).scale_to[0])
        seen.append((now, alive))
    assert all(a == 6 for t, a in seen if t < panic_end)
    after = [a for t, a in seen if t >= panic_end]
    assert after[:2] == [3, 1]


def test_kpa_panic_on_a_sudden_burst_end_to_end() -> None:
    # Steady 1 call/s (0.5 s each) for two minutes, then two 5 s bursts of 10 calls/s (1 s each).
    base = [(10.0 + k, 0, 0.5) for k in range(120)]
    burst1 = [(130.0 + 0.1 * j, 0, 1.0) for j in range(50)]
    burst2 = [(165.0 + 0.1 * j, 0, 1.0) for j in range(50)]

    def go(calls, **kw):
        p = KnativePolicy(**kw)
        res = run(ListWorkload([("f", GB)], calls, 400.0), p, sample_s=1.0)
        return p, res

    p, one = go(base + burst1)
    _, two = go(base + burst1 + burst2)
    assert np.isfinite(p.panic_until[0])  # panic mode was entered
    assert max(alive_at(one, t) for t in range(136, 160)) >= 10  # scaled up after the burst ...
    assert alive_at(one, 160.0) >= 10  # ... and held for the stable window
    assert two.metrics()["cold_starts"] == one.metrics()["cold_starts"]  # the second burst is all warm
    # With panic disabled the instances are scaled down and the second burst starts cold.
    q, calm_one = go(base + burst1, panic_threshold_pct=1e9)
    _, calm_two = go(base + burst1 + burst2, panic_threshold_pct=1e9)
    assert not np.isfinite(q.panic_until[0])
    assert alive_at(calm_one, 160.0) <= 3
    assert calm_two.metrics()["cold_starts"] - calm_one.metrics()["cold_starts"] >= 10


# --------------------------------------------------------------------------------------------------
# hybrid histogram: windows from crafted idle-time histograms
# --------------------------------------------------------------------------------------------------


def hybrid(n: int = 1, apps=None) -> HybridHistogramPolicy:
    p = HybridHistogramPolicy()
    p.reset(make_table([(f"f{i}", GB) for i in range(n)], apps=apps), 0.0)
    return p


def windows_of(p: HybridHistogramPolicy, seconds) -> tuple[float, float, int]:
    p.observe_idle_times(np.zeros(len(seconds), np.int32), np.asarray(seconds, np.float64))
    pre, keep, pattern = p.windows(np.array([0]))
    return float(pre[0]), float(keep[0]), int(pattern[0])


def test_hybrid_concentrated_histogram_is_pattern_1() -> None:
    # 100 idle times evenly over 580..620 s: 50 in bin 9 (540-600 s), 50 in bin 10 (600-660 s).
    # CV of the 240 bin counts ~ 10.9 >= 2: representative.
    # 5th percentile in bin 9: prewarm = 9 x 60 x 0.9 = 486 s; 99th in bin 10: keep = (10 + 1) x 60 x 1.1 = 726 s.
    pre, keep, pattern = windows_of(hybrid(), np.linspace(580.0, 620.0, 100))
    assert pattern == 1
    assert pre == pytest.approx(486.0)
    assert keep == pytest.approx(726.0)


def test_hybrid_noisy_ten_minutes_matches_percentile_bins() -> None:
    rng = np.random.default_rng(0)
    x = 600.0 + rng.uniform(-50.0, 50.0, 100)
    srt = np.sort(x)
    head_bin = math.floor(srt[5 - 1] / 60.0)  # 5th of 100 samples
    tail_bin = math.floor(srt[99 - 1] / 60.0)  # 99th of 100 samples
    assert head_bin in (9, 10) and tail_bin in (10, 11)
    pre, keep, pattern = windows_of(hybrid(), x)
    assert pattern == 1
    assert pre == pytest.approx(head_bin * 60.0 * 0.9)
    assert keep == pytest.approx((tail_bin + 1) * 60.0 * 1.1)


@pytest.mark.parametrize(("samples", "pre", "keep"), [
    # 5 of 100 samples in bin 2: the 5th percentile is in bin 2 -> 2 x 60 x 0.9 = 108.
    ([130.0] * 5 + [610.0] * 95, 108.0, 726.0),
    # 4 of 100 in bin 2: the 5th percentile is in bin 10 -> 10 x 60 x 0.9 = 540.
    ([130.0] * 4 + [610.0] * 96, 540.0, 726.0),
    # 1 of 100 in bin 16: the 99th percentile is still in bin 10 ...
    ([610.0] * 99 + [1000.0], 540.0, 726.0),
    # ... 2 of 100 there move it to bin 16: (16 + 1) x 60 x 1.1 = 1122.
    ([610.0] * 98 + [1000.0] * 2, 540.0, 1122.0),
])
def test_hybrid_percentile_edges(samples, pre: float, keep: float) -> None:
    got = windows_of(hybrid(), samples)
    assert got == pytest.approx((pre, keep, 1))


def test_hybrid_uniform_histogram_is_pattern_0() -> None:
    # Two idle times in every one of the 240 bins: CV = 0 < 2 -> no prewarm, keep-alive = range (4 h).
    x = np.repeat(np.arange(240) * 60.0 + 30.0, 2)
    pre, keep, pattern = windows_of(hybrid(), x)
    assert (pre, keep, pattern) == (0.0, 4 * 3600.0, 0)


def test_hybrid_initial_windows() -> None:
    acts = HybridHistogramPolicy().reset(make_table([("a", GB), ("b", GB)]), 0.0)
    assert acts.prewarm_delay_s.tolist() == [0.0, 0.0]
    assert acts.keep_alive_s.tolist() == [4 * 3600.0] * 2


def test_hybrid_out_of_range_uses_arima_forecast_constant() -> None:
    # Every idle time is 5 h > 4 h range: out-of-bounds rate 1 -> ARIMA; a constant series forecasts itself.
    # prewarm = 18000 x 0.85 = 15300, keep-alive = 18000 x 0.15 x 2 = 5400.
    p = hybrid()
    acts = p.decide(60.0, observation(60.0, idle_func=[0] * 20, idle_s=[18000.0] * 20, dt=60.0))
    assert p.windows(np.array([0]))[2][0] == 2
    assert p.forecast[0] == pytest.approx(18000.0)
    assert acts.prewarm_delay_s[0] == pytest.approx(15300.0)
    assert acts.keep_alive_s[0] == pytest.approx(5400.0)


def test_hybrid_mostly_out_of_range_uses_arima() -> None:
    # 16 of 20 idle times beyond 4 h (oob rate 0.8 >= 0.5): ARIMA on the last idle times, all of them.
    rng = np.random.default_rng(1)
    x = np.concatenate([[600.0] * 4, 18000.0 + rng.normal(0.0, 600.0, 16)])
    p = hybrid()
    acts = p.decide(60.0, observation(60.0, idle_func=[0] * 20, idle_s=x, dt=60.0))
    assert p.windows(np.array([0]))[2][0] == 2
    assert p.history(0) == pytest.approx(x)
    fc = p.forecast[0]
    assert p.arima_fits >= 1
    assert fc == pytest.approx(HybridHistogramPolicy().arima_forecast(x))
    assert 0 < fc < 30000.0
    assert acts.prewarm_delay_s[0] == pytest.approx(fc * 0.85)
    assert acts.keep_alive_s[0] == pytest.approx(fc * 0.3)


def test_hybrid_arima_forecast_fallbacks() -> None:
    p = HybridHistogramPolicy()
    assert p.arima_forecast(np.full(10, 900.0)) == 900.0  # constant series
    assert p.arima_forecast(np.array([100.0, 200.0, 600.0])) == pytest.approx(300.0)  # < 4 samples: mean
    assert p.arima_forecast(np.empty(0)) == 4 * 3600.0  # nothing known: the histogram range
    assert p.arima_fits == 0


def test_hybrid_history_keeps_the_latest_in_order() -> None:
    p = hybrid()
    p.observe_idle_times(np.zeros(40, np.int32), np.arange(1.0, 41.0))
    p.observe_idle_times(np.zeros(30, np.int32), np.arange(41.0, 71.0))
    assert p.history(0).tolist() == list(np.arange(7.0, 71.0))  # the last 64 of 70


def test_hybrid_histogram_is_per_app() -> None:
    # Functions 0 and 1 share app 0: idle times of either shape the same windows; function 2 is alone.
    p = hybrid(3, apps=[0, 0, 1])
    x = np.linspace(580.0, 620.0, 100)
    acts = p.decide(60.0, observation(60.0, n=3, idle_func=[0, 1] * 50, idle_s=x, dt=60.0))
    assert acts.prewarm_delay_s.tolist() == pytest.approx([486.0, 486.0, 0.0])
    assert acts.keep_alive_s.tolist() == pytest.approx([726.0, 726.0, 4 * 3600.0])


def test_hybrid_end_to_end_on_a_30_minute_timer() -> None:
    # Every 30 minutes for 12 hours (24 calls of 1 s, 1 GB).
    w = ListWorkload([("timer", GB)], [(1800.0 * k, 0, 1.0) for k in range(24)], 12 * 3600.0)
    fixed = run(w, KeepAlivePolicy(600.0)).metrics()
    warm = run(w, AlwaysWarmPolicy()).metrics()
    p = HybridHistogramPolicy()
    hyb = run(w, p).metrics()
    # fixed:10m: every call is cold; each costs 1 s start-up + 600 s idle = 601 GB s.
    assert fixed["cold_starts"] == 24
    assert fixed["wasted_gb_s"] == pytest.approx(24 * 601.0)
    # always-warm: the call at t=0 waits for the prewarm; waste = 43200 - 24.
    assert warm["cold_starts"] == 1
    assert warm["wasted_gb_s"] == pytest.approx(43200.0 - 24.0)
    # hybrid: idle time 1798 s (bin 29) -> prewarm 29 x 60 x 0.9 = 1566 s, keep 30 x 60 x 1.1 = 1980 s.
    # The first two gaps are covered by the initial 4 h keep-alive (the second call idles at 1801, before
    # the 1860 tick learns the window): 1 + 1798 and 1799. Then after each of the 22 calls from t=3600 on,
    # the instance is released, a fresh one starts 1566 s later and waits 232 s: 233 GB s per gap
    # (the last one, after t=41400, runs to the end of the run at 43200: also 233).
    assert p.prewarm.tolist() == [1566.0] and p.keep_alive.tolist() == pytest.approx([1980.0])
    assert hyb["cold_starts"] == 1
    assert hyb["wasted_gb_s"] == pytest.approx(1799.0 + 1799.0 + 22 * 233.0)
    assert hyb["cold_starts"] < fixed["cold_starts"] / 10
    assert hyb["wasted_gb_s"] < warm["wasted_gb_s"] / 4
    assert hyb["wasted_gb_s"] < fixed["wasted_gb_s"]


# --------------------------------------------------------------------------------------------------
# policy_factory
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    "nope", "fixed:abc", "fixed:10x", "fixed:-5s", "always-warm:1m", "kpa:bogus=1", "kpa:target=abc",
    "kpa:stable_window", "kpa:tick=soon", "hybrid:range=xyz", "hybrid:foo=1", "hybrid:cv_threshold=high",
])
def test_policy_factory_errors_name_the_spec(spec: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"policy {spec!r}")):
        policy_factory(spec)


def test_policy_factory_builds_configured_policies() -> None:
    fixed = policy_factory("fixed:20m")()
    assert isinstance(fixed, KeepAlivePolicy) and fixed.keep_alive_s == 1200.0 and fixed.spec == "fixed:20m"
    assert policy_factory("fixed")().keep_alive_s == 600.0
    assert policy_factory("fixed:inf")().keep_alive_s == math.inf
    assert isinstance(policy_factory("always-warm")(), AlwaysWarmPolicy)
    kpa = policy_factory("kpa:stable_window=30s,grace=10s,target=50,container_concurrency=10")()
    assert isinstance(kpa, KnativePolicy)
    assert (kpa.stable_n, kpa.grace_s, kpa.target) == (15, 10.0, pytest.approx(7.0))
    hyb = policy_factory("hybrid:range=2h,bin=30s,cv_threshold=3")()
    assert isinstance(hyb, HybridHistogramPolicy)
    assert (hyb.n_bins, hyb.cv_threshold, hyb.spec) == (240, 3.0, "hybrid:range=2h,bin=30s,cv_threshold=3")
    # Each call builds a fresh policy (state is per run).
    make = policy_factory("hybrid")
    assert make() is not make()
