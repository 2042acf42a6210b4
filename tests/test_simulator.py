"""Simulator tests: hand-computed replays, invariants, a pure-Python reference model, determinism.

All hand computations use 1 GB functions (memory_mb=1024) and the default 1 s start-up unless stated,
so GB x s equal instance-seconds.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
from helpers import ListWorkload, all_arrivals, run

from prewarmer.actions import Actions
from prewarmer.policies.base import Policy
from prewarmer.policies.keepalive import KeepAlivePolicy
from prewarmer.registry import policy_factory
from prewarmer.sim import engine as E
from prewarmer.sim.replay import ReplayConfig, SimResult, replay, run_shard
from prewarmer.sim.startup import StartupModel
from prewarmer.workloads.synthetic import PoissonFunction, PoissonWorkload, azure_like

GB = 1024.0


class WindowsPolicy(Policy):
    """Static keep-alive and prewarm-delay windows for every function (no ticks)."""

    def __init__(self, keep_alive_s: float, prewarm_delay_s: float = 0.0) -> None:
        self.keep_alive_s, self.prewarm_delay_s = keep_alive_s, prewarm_delay_s

    def reset(self, functions, now: float) -> Actions:
        n = len(functions)
        return Actions(keep_alive_s=np.full(n, self.keep_alive_s), prewarm_delay_s=np.full(n, self.prewarm_delay_s))


def sample_at(res: SimResult, t: float, col: int = 0) -> int:
    """Instances of the `col`-th top function alive at the sample taken at time t (sample_s=1)."""
    k = int(np.flatnonzero(np.isclose(res.sample_t, t))[0])
    return int(res.alive_top[k, col])


def lat_sum(res: SimResult) -> np.ndarray:
    return res.fs[:, E.S_LAT_SUM]


# --------------------------------------------------------------------------------------------------
# hand-computed single-function replays
# --------------------------------------------------------------------------------------------------

THREE_CALLS = [(0.0, 0, 2.0), (100.0, 0, 1.0), (1000.0, 0, 1.0)]


def test_fixed_10m_three_calls_by_hand() -> None:
    # fixed keep-alive 600 s, start-up 1 s, 1 GB, horizon 3600 s.
    # t=0    (dur 2): no instance -> cold. Instance A starts at 0, ready at 1, runs 1..3, idles at 3
    #                 (expiry scheduled at 603). latency = 1 + 2 = 3 s.
    # t=100  (dur 1): A idle since 3 (100 < 603) -> warm, runs 100..101, idles at 101; the timer restarts:
    #                 A now expires at 701. latency 1 s.
    # t=1000 (dur 1): A released at 701 -> cold. Instance B starts at 1000, ready 1001, runs 1001..1002,
    #                 idles at 1002, expires at 1602. latency = 1 + 1 = 2 s.
    # A alive 0..701 = 701 s, of which busy 2 + 1 = 3 -> waste 698 (includes its 1 s start-up).
    # B alive 1000..1602 = 602 s, busy 1 -> waste 601.
    # waste = 698 + 601 = 1299 GB s; busy = 4 GB s; the run ends at max(3600, 1002) = 3600.
    w = ListWorkload([("f", GB)], THREE_CALLS, 3600.0)
    res = run(w, KeepAlivePolicy(600.0))
    m = res.metrics()
    assert m["invocations"] == 3
    assert m["cold_starts"] == 2
    assert m["cold_start_rate"] == pytest.approx(2 / 3)
    assert m["p75_function_cold_start_pct"] == pytest.approx(200 / 3)
    assert m["wasted_gb_s"] == pytest.approx(1299.0)
    assert m["busy_gb_s"] == pytest.approx(4.0)
    assert res.t_final == 3600.0
    assert lat_sum(res)[0] == pytest.approx(3.0 + 1.0 + 2.0)
    # Latencies 1 s, 2 s, 3 s: the median is the 2nd, p99 the 3rd (histogram bins are 0.23% wide).
    assert m["p50_latency_ms"] == pytest.approx(2000.0, rel=2.5e-3)
    assert m["p99_latency_ms"] == pytest.approx(3000.0, rel=2.5e-3)
    assert m["throughput_rps"] == pytest.approx(3 / 3600)
    assert m["timed_out"] == 0
    assert m["peak_memory_gb"] == pytest.approx(1.0)
    fi = res.fi[0]
    # Both instances expired before the end of the run (701 and 1602 < 3600).
    assert (fi[E.F_STARTS], fi[E.F_STARTS_SERVED], fi[E.F_RELEASED], fi[E.F_ALIVE]) == (2, 2, 2, 0)
    assert fi[E.F_DONE] == 3


@pytest.mark.parametrize(("horizon", "t_final", "waste"), [
    # B (started at 1000, idle from 1002) is cut at the end of the run, A's 698 stays the same:
    (1200.0, 1200.0, 698.0 + 1.0 + (1200.0 - 1002.0)),  # horizon after the last completion
    (1000.5, 1002.0, 698.0 + 1.0),  # the last request finishes after the horizon: run ends at 1002
])
def test_run_ends_at_max_of_horizon_and_last_completion(horizon: float, t_final: float, waste: float) -> None:
    w = ListWorkload([("f", GB)], THREE_CALLS, horizon)
    res = run(w, KeepAlivePolicy(600.0))
    assert res.t_final == t_final
    m = res.metrics()
    assert m["wasted_gb_s"] == pytest.approx(waste)
    assert m["busy_gb_s"] == pytest.approx(4.0)
    assert m["cold_starts"] == 2
    assert m["throughput_rps"] == pytest.approx(3 / horizon)


def test_memory_in_gb_is_memory_mb_over_1024() -> None:
    # Same replay with 512 MB: every GB s figure halves.
    w = ListWorkload([("f", 512.0)], THREE_CALLS, 3600.0)
    m = run(w, KeepAlivePolicy(600.0)).metrics()
    assert m["wasted_gb_s"] == pytest.approx(1299.0 / 2)
    assert m["busy_gb_s"] == pytest.approx(2.0)
    assert m["peak_memory_gb"] == pytest.approx(0.5)


def test_overlapping_requests_need_two_instances_and_mru_reuse() -> None:
    # t=0 (dur 100): cold, instance A starts 0, ready 1, runs 1..101.
    # t=1 (dur 10):  A is busy -> cold, instance B starts 1, ready 2, runs 2..12, idles at 12.
    # t=200 (dur 1): A (idle since 101) and B (idle since 12) are both idle: the most recently idled
    #                one, A, serves (200..201) and B expires on time at 12 + 600 = 612; A at 801.
    # A alive 0..801 = 801, busy 101 -> waste 700.  B alive 1..612 = 611, busy 10 -> waste 601.
    # (Had B served, the waste would be A 0..701 - 100 = 601 plus B 1..801 - 11 = 789: 1390.)
    w = ListWorkload([("f", GB)], [(0.0, 0, 100.0), (1.0, 0, 10.0), (200.0, 0, 1.0)], 1000.0)
    res = run(w, KeepAlivePolicy(600.0), sample_s=1.0)
    m = res.metrics()
    assert m["cold_starts"] == 2
    assert res.fi[0, E.F_STARTS] == 2
    assert m["wasted_gb_s"] == pytest.approx(1301.0)
    assert m["busy_gb_s"] == pytest.approx(111.0)
    assert m["peak_memory_gb"] == pytest.approx(2.0)
    assert lat_sum(res)[0] == pytest.approx(101.0 + 11.0 + 1.0)
    assert sample_at(res, 150.0) == 2
    assert sample_at(res, 611.0) == 2
    assert sample_at(res, 613.0) == 1  # B expired at 612
    assert sample_at(res, 800.0) == 1
    assert sample_at(res, 802.0) == 0  # A expired at 801


def test_zero_keep_alive_releases_at_once() -> None:
    # keep-alive 0: every call is cold; each instance lives start-up + execution only.
    w = ListWorkload([("f", GB)], THREE_CALLS, 3600.0)
    m = run(w, KeepAlivePolicy(0.0)).metrics()
    assert m["cold_starts"] == 3
    assert m["wasted_gb_s"] == pytest.approx(3.0)  # three 1 s start-ups
    assert m["busy_gb_s"] == pytest.approx(4.0)


def test_prewarm_delay_releases_then_prewarms_and_arrival_consumes_pending() -> None:
    # keep-alive 100 s, prewarm delay 50 s.
    # t=0 (dur 1):   cold; instance 1 starts 0, ready 1, runs 1..2; idles at 2 -> released at once,
    #                a fresh one is due at 52. waste 1 (start-up).
    # prewarm:       instance 2 starts 52, ready 53, idle (keep-alive counted from 53: until 153).
    # t=100 (dur 1): warm on instance 2 (100..101); idles at 101 -> released (alive 52..101: waste 48);
    #                a prewarm is due at 151.
    # t=120 (dur 50): nothing alive -> cold; instance 3 starts 120, ready 121, runs 121..171. This arrival
    #                consumes the pending prewarm: nothing starts at 151.
    # t=171:         instance 3 idles -> released (waste 1); prewarm due at 221.
    # prewarm:       instance 4 starts 221, ready 222, idle until the end of the run (300): waste 79.
    # waste = 1 + 48 + 1 + 79 = 129; busy = 1 + 1 + 50 = 52; 4 instances started; 2 cold starts.
    w = ListWorkload([("f", GB)], [(0.0, 0, 1.0), (100.0, 0, 1.0), (120.0, 0, 50.0)], 300.0)
    res = run(w, WindowsPolicy(100.0, 50.0), sample_s=1.0)
    m = res.metrics()
    assert m["cold_starts"] == 2
    assert res.fi[0, E.F_STARTS] == 4
    assert m["wasted_gb_s"] == pytest.approx(129.0)
    assert m["busy_gb_s"] == pytest.approx(52.0)
    assert lat_sum(res)[0] == pytest.approx(2.0 + 1.0 + 51.0)
    assert [sample_at(res, t) for t in (30.0, 60.0, 110.0, 160.0, 200.0, 250.0)] == [0, 1, 0, 1, 0, 1]


def test_prewarmed_instance_expires_keep_alive_after_ready() -> None:
    # As above without the third call: the prewarm due at 151 starts instance 3 (ready 152), kept
    # until 152 + 100 = 252. waste = 1 + 48 + (252 - 151) = 150.
    w = ListWorkload([("f", GB)], [(0.0, 0, 1.0), (100.0, 0, 1.0)], 300.0)
    res = run(w, WindowsPolicy(100.0, 50.0), sample_s=1.0)
    assert res.metrics()["wasted_gb_s"] == pytest.approx(150.0)
    assert res.fi[0, E.F_STARTS] == 3
    assert sample_at(res, 251.0) == 1
    assert sample_at(res, 253.0) == 0


# --------------------------------------------------------------------------------------------------
# memory cap and queueing
# --------------------------------------------------------------------------------------------------

CAP_CALLS = [(0.0, 0, 5.0), (3.0, 1, 1.0)]


def test_memory_cap_queues_until_an_instance_idles_and_is_evicted() -> None:
    # Cap 1 GB, two 1 GB functions.
    # t=0 (a, dur 5): instance A starts 0, ready 1, runs 1..6.   latency 6 s.
    # t=3 (b, dur 1): no memory (A is busy) -> queued. At 6 A idles; the queue head evicts it (LRU idle)
    #                 and starts B at 6, ready 7, runs 7..8.     latency = 3 queueing + 1 start-up + 1 = 5 s.
    # A alive 0..6, busy 5 -> waste 1.  B alive 6..100 (horizon), busy 1 -> waste 93.
    w = ListWorkload([("a", GB), ("b", GB)], CAP_CALLS, 100.0)
    res = run(w, KeepAlivePolicy(600.0), memory_cap_gb=1.0)
    m = res.metrics()
    assert m["invocations"] == 2 and m["timed_out"] == 0
    assert m["cold_starts"] == 2
    assert res.fi[1, E.F_QUEUED] == 1 and res.fi[0, E.F_QUEUED] == 0
    assert res.fi[0, E.F_RELEASED] == 1  # evicted for b
    assert lat_sum(res) == pytest.approx([6.0, 5.0])
    assert m["wasted_gb_s"] == pytest.approx(1.0 + 93.0)
    assert m["busy_gb_s"] == pytest.approx(6.0)
    assert m["peak_memory_gb"] == pytest.approx(1.0)
    assert m["throughput_rps"] == pytest.approx(2 / 100)
    # Without the cap b starts at once: latency 2 s, and both instances are held together.
    free = run(w, KeepAlivePolicy(600.0)).metrics()
    assert free["peak_memory_gb"] == pytest.approx(2.0)
    assert free["p50_latency_ms"] == pytest.approx(2000.0, rel=2.5e-3)


def test_memory_cap_queue_deadline_times_out() -> None:
    # Deadline 2 s: b (queued at 3) is dropped at 5, before A idles at 6.
    # A alive 0..100, busy 5 -> waste 95; b never starts: 1 cold start, 1 completion.
    w = ListWorkload([("a", GB), ("b", GB)], CAP_CALLS, 100.0)
    res = run(w, KeepAlivePolicy(600.0), memory_cap_gb=1.0, queue_deadline_s=2.0)
    m = res.metrics()
    assert m["invocations"] == 2
    assert m["timed_out"] == 1
    assert res.fi[1, E.F_TIMEOUT] == 1
    assert int(res.fi[:, E.F_DONE].sum()) == 1
    assert m["cold_starts"] == 1
    assert m["throughput_rps"] == pytest.approx(1 / 100)
    assert lat_sum(res) == pytest.approx([6.0, 0.0])
    assert m["wasted_gb_s"] == pytest.approx(95.0)
    assert m["busy_gb_s"] == pytest.approx(5.0)


def test_memory_cap_deadline_not_reached_still_served() -> None:
    # Deadline 10 s > 3 s of queueing: same outcome as without a deadline.
    w = ListWorkload([("a", GB), ("b", GB)], CAP_CALLS, 100.0)
    m = run(w, KeepAlivePolicy(600.0), memory_cap_gb=1.0, queue_deadline_s=10.0).metrics()
    assert m["timed_out"] == 0 and m["cold_starts"] == 2
    assert m["wasted_gb_s"] == pytest.approx(94.0)


class _LimitThenPrewarm(Policy):
    """b may run no instance at first; at the 1 s tick b may run one and a asks for a prewarm."""

    tick_s = 1.0

    def reset(self, functions, now: float) -> Actions:
        return Actions(keep_alive_s=np.full(2, 600.0), max_instances=np.array([5, 0]))

    def decide(self, now: float, obs) -> Actions:
        if now == 1.0:
            return Actions(max_instances=np.array([5, 1]), prewarm=np.array([1, 0]))
        return Actions.none()


def test_a_prewarm_never_takes_memory_a_waiting_request_can_use() -> None:
    # Cap 1 GB. b's request (t=0.5, 2 s) waits: b may run no instance. At t=1 b may run one and a asks for a
    # prewarm in the same tick: the waiting request gets the only GB (starts 1, ready 2, done 4: latency
    # 3.5 s) and a's prewarm finds no memory.
    w = ListWorkload([("a", GB), ("b", GB)], [(0.5, 1, 2.0)], 20.0)
    res = run(w, _LimitThenPrewarm(), memory_cap_gb=1.0)
    assert res.fi[0, E.F_STARTS] == 0 and res.fi[1, E.F_DONE] == 1
    assert lat_sum(res) == pytest.approx([0.0, 3.5])


class _PrewarmAt(Policy):
    """At the tick at `at` s, ask for one prewarm of function 0."""

    tick_s = 1.0

    def __init__(self, at: float) -> None:
        self.at = at

    def reset(self, functions, now: float) -> Actions:
        self.n = len(functions)
        return Actions(keep_alive_s=np.full(self.n, 600.0))

    def decide(self, now: float, obs) -> Actions:
        return Actions(prewarm=np.eye(self.n, dtype=np.int64)[0]) if now == self.at else Actions.none()


def test_a_prewarm_takes_free_memory_only_and_a_request_evicts() -> None:
    # Cap 1 GB, two 1 GB functions. b's call at 0 (1 s) leaves B idle from 2 under a 600-s keep-alive.
    # The prewarm of a at the 5 s tick finds no free memory: it does not evict B (a guess does not take a warm
    # instance from a function that is using it), so b's call at 10 is warm. a's own call at 20 is demand: it
    # evicts B (LRU idle) and starts cold.
    w = ListWorkload([("a", GB), ("b", GB)], [(0.0, 1, 1.0), (10.0, 1, 1.0), (20.0, 0, 1.0)], 40.0)
    res = run(w, _PrewarmAt(5.0), memory_cap_gb=1.0)
    assert res.fi[0, E.F_STARTS] == 1  # a's call, not the prewarm
    assert res.fi[:, E.F_COLD].tolist() == [1, 1]
    assert res.fi[1, E.F_RELEASED] == 1  # evicted for a's call at 20
    # With room for both the same prewarm starts at 5, and a's call at 20 is warm.
    roomy = run(w, _PrewarmAt(5.0), memory_cap_gb=2.0)
    assert roomy.fi[0, E.F_STARTS] == 1 and roomy.fi[:, E.F_COLD].tolist() == [0, 1]


def test_a_prewarm_does_not_fill_memory_a_larger_waiting_request_needs() -> None:
    # Cap 2 GB: c (1 GB, asked to prewarm at the 3 s tick), a (1 GB) and b (2 GB). a's call at 0 runs 1..11. b's
    # call at 2 needs 2 GB with 1 free: it waits. The 1 GB left would fit c's prewarm, but a request waits for
    # memory, so the prewarm does not start. At 11 a idles, b evicts it and starts.
    fleet = [("c", GB), ("a", GB), ("b", 2 * GB)]
    w = ListWorkload(fleet, [(0.0, 1, 10.0), (2.0, 2, 1.0)], 40.0)
    res = run(w, _PrewarmAt(3.0), memory_cap_gb=2.0)
    assert res.fi[0, E.F_STARTS] == 0
    assert res.fi[2, E.F_QUEUED] == 1 and res.fi[2, E.F_DONE] == 1
    assert lat_sum(res)[2] == pytest.approx(9.0 + 1.0 + 1.0)  # 9 s waiting, 1 s start-up, 1 s of work
    # Nobody waiting at the tick (b calls at 4 instead): the prewarm takes the free GB.
    early = run(ListWorkload(fleet, [(0.0, 1, 10.0), (4.0, 2, 1.0)], 40.0), _PrewarmAt(3.0), memory_cap_gb=2.0)
    assert early.fi[0, E.F_STARTS] == 1


# --------------------------------------------------------------------------------------------------
# start-up models and container concurrency
# --------------------------------------------------------------------------------------------------


def test_memory_startup_model() -> None:
    # memory: start-up = base + per_gb x GB = 0.5 + 1.0 x 2 = 2.5 s for a 2 GB function.
    # One call of 1 s: latency 3.5 s; keep-alive 10 s -> alive 0..13.5: waste 2.5 + 10 = 12.5 GB-s x 2 GB.
    w = ListWorkload([("f", 2 * GB)], [(0.0, 0, 1.0)], 100.0)
    res = run(w, KeepAlivePolicy(10.0), startup=StartupModel("memory", base_s=0.5, per_gb_s=1.0))
    assert lat_sum(res)[0] == pytest.approx(3.5)
    m = res.metrics()
    assert m["wasted_gb_s"] == pytest.approx(2 * 12.5)
    assert m["busy_gb_s"] == pytest.approx(2 * 1.0)


def test_per_function_startup_model() -> None:
    # per-function: function 0 has its own 3 s start-up; function 1 (NaN) uses the model's default 1.5 s.
    w = ListWorkload([("a", GB), ("b", GB)], [(0.0, 0, 1.0), (0.0, 1, 1.0)], 100.0, cold_start_s=[3.0, np.nan])
    res = run(w, KeepAlivePolicy(10.0), startup=StartupModel("per-function", seconds=1.5))
    assert lat_sum(res) == pytest.approx([4.0, 2.5])
    assert res.fs[:, E.S_WASTE] == pytest.approx([13.0, 11.5])  # start-up + 10 s keep-alive
    # The constant model ignores the table's start-up times.
    res = run(w, KeepAlivePolicy(10.0), startup=StartupModel("constant", seconds=2.0))
    assert lat_sum(res) == pytest.approx([3.0, 3.0])


def test_start_ups_begun_together_slow_each_other_by_per_start() -> None:
    # Three functions called at once, start-up 1 s + 0.25 s per other instance starting: the first begins alone
    # (1 s), the second beside one (1.25 s), the third beside two (1.5 s); a call at 10 s, when none is starting,
    # is back to 1 s (keep-alive 0: it is cold too).
    calls = [(0.0, 0, 1.0), (0.0, 1, 1.0), (0.0, 2, 1.0), (10.0, 0, 1.0)]
    w = ListWorkload([("a", GB), ("b", GB), ("c", GB)], calls, 100.0)
    res = run(w, KeepAlivePolicy(0.0), startup=StartupModel("constant", seconds=1.0, per_starting_s=0.25))
    assert lat_sum(res) == pytest.approx([2.0 + 2.0, 2.25, 2.5])
    # Without it every start-up is the function's own.
    res = run(w, KeepAlivePolicy(0.0), startup=StartupModel("constant", seconds=1.0))
    assert lat_sum(res) == pytest.approx([4.0, 2.0, 2.0])


class ScaleToOneAtStart(Policy):
    """Scales every function to one instance at t=0 (a start the policy makes, not a request)."""

    def reset(self, functions, now: float) -> Actions:
        n = len(functions)
        return Actions(keep_alive_s=np.full(n, 100.0), scale_to=np.ones(n, np.int64))


def test_an_instance_the_policy_starts_takes_by_policy_longer_than_one_a_request_starts() -> None:
    # Start-up 1 s, 0.5 s more for the policy's own starts. The scale-up at 0 is ready at 1.5, not 1: the call at
    # 0.5 waits 1 s. Under a prewarm delay of 50 s the call at 0 starts its own instance (1 s: ready at 1, runs
    # 1..2, released), the prewarm due at 52 is ready at 53.5, and the call at 52.8 waits 0.7 s for it.
    model = StartupModel("constant", seconds=1.0, by_policy_s=0.5)
    w = ListWorkload([("f", GB)], [(0.5, 0, 1.0)], 100.0)
    assert lat_sum(run(w, ScaleToOneAtStart(), startup=model)) == pytest.approx([2.0])
    assert lat_sum(run(w, ScaleToOneAtStart(), startup=StartupModel("constant", seconds=1.0))) == pytest.approx([1.5])
    w = ListWorkload([("f", GB)], [(0.0, 0, 1.0), (52.8, 0, 1.0)], 300.0)
    res = run(w, WindowsPolicy(100.0, 50.0), startup=model)
    assert res.metrics()["cold_starts"] == 2
    assert lat_sum(res) == pytest.approx([(1.0 + 1.0) + (0.7 + 1.0)])


def test_start_up_spec_takes_per_start_and_names_what_it_does_not_know() -> None:
    from prewarmer.sim.startup import parse_startup

    assert parse_startup("per-function:per_start=20ms,by_policy=0.1") == StartupModel(
        "per-function", seconds=1.0, per_starting_s=0.02, by_policy_s=0.1)
    assert parse_startup("constant:2s").describe() == {"kind": "constant", "seconds": 2.0}  # reports as before
    with pytest.raises(ValueError, match="unknown setting 'median'"):
        parse_startup("constant:median=2s")


def test_lognormal_startup_is_seeded() -> None:
    calls = [(100.0 * k, 0, 1.0) for k in range(20)]  # keep-alive 10 s: every call is cold
    w = ListWorkload([("f", GB)], calls, 2100.0)
    model = StartupModel("lognormal", seconds=1.0, sigma=0.5)

    def go(seed: int) -> tuple[float, float]:
        res = run(w, KeepAlivePolicy(10.0), startup=model, seed=seed)
        assert res.metrics()["cold_starts"] == 20
        return float(lat_sum(res)[0]), float(res.fs[0, E.S_WASTE])

    a, b, c = go(7), go(7), go(8)
    assert a == b
    assert a != c
    startups = a[0] - 20.0  # latencies = start-up + 1 s execution
    assert a[1] == pytest.approx(startups + 20 * 10.0)  # waste = start-ups + keep-alive tails
    assert startups != pytest.approx(20.0)  # not the constant model
    assert 20 * math.exp(-1.5) < startups < 20 * math.exp(1.5)


def test_container_concurrency_two_shares_one_instance() -> None:
    # cc=2. t=0 (dur 10): cold, instance starts 0, ready 1, runs 1..11. t=5 (dur 10): the instance has a
    # free slot -> warm, runs 5..15. One instance, one cold start. The instance executes 1..15 (busy 14),
    # waste = start-up 1 + idle 15..100 = 86.
    w = ListWorkload([("f", GB)], [(0.0, 0, 10.0), (5.0, 0, 10.0)], 100.0)
    res = run(w, KeepAlivePolicy(600.0), container_concurrency=2)
    m = res.metrics()
    assert m["cold_starts"] == 1
    assert res.fi[0, E.F_STARTS] == 1
    assert m["peak_memory_gb"] == pytest.approx(1.0)
    assert m["busy_gb_s"] == pytest.approx(14.0)
    assert m["wasted_gb_s"] == pytest.approx(86.0)
    assert lat_sum(res)[0] == pytest.approx(11.0 + 10.0)
    # With one request per instance the second call needs its own instance.
    m1 = run(w, KeepAlivePolicy(600.0)).metrics()
    assert m1["cold_starts"] == 2 and m1["peak_memory_gb"] == pytest.approx(2.0)


def test_container_concurrency_two_during_startup_waits_on_the_same_instance() -> None:
    # t=0 and t=0.5 both arrive while the only instance starts: both wait for it (two cold starts),
    # but one instance serves both: latencies 1 + 1 and 0.5 + 1.
    w = ListWorkload([("f", GB)], [(0.0, 0, 1.0), (0.5, 0, 1.0)], 100.0)
    res = run(w, KeepAlivePolicy(600.0), container_concurrency=2)
    assert res.metrics()["cold_starts"] == 2
    assert res.fi[0, E.F_STARTS] == 1 and res.fi[0, E.F_STARTS_SERVED] == 1
    assert lat_sum(res)[0] == pytest.approx(2.0 + 1.5)


# --------------------------------------------------------------------------------------------------
# independent reference model of fixed keep-alive (one request per instance, no cap)
# --------------------------------------------------------------------------------------------------


def reference_keepalive(t: np.ndarray, f: np.ndarray, d: np.ndarray, memory_mb: np.ndarray,
                        startup_s: np.ndarray, keep_alive_s: float, horizon: float) -> dict:
    """Straightforward per-arrival model of fixed keep-alive, without events or instance pools.

    Each function keeps its instances as a sorted list of (busy_until, created). An instance is idle at
    time x when busy_until <= x, and alive while x < busy_until + keep_alive (an expiry at the exact
    arrival time happens first). An arrival takes the idle instance with the latest busy_until (the most
    recently used), or starts a new one and waits start-up time for it.
    """
    n_f = len(memory_mb)
    mem = memory_mb / 1024.0
    live: list[list[tuple[float, float]]] = [[] for _ in range(n_f)]
    every: list[tuple[int, float, float]] = []  # (function, created, last busy_until) per instance
    cold = np.zeros(n_f, np.int64)
    arrivals = np.zeros(n_f, np.int64)
    lat = np.zeros(len(t))
    lat_by_f = np.zeros(n_f)
    for k in np.argsort(t, kind="stable"):
        x, fn, dur = float(t[k]), int(f[k]), float(d[k])
        arrivals[fn] += 1
        insts = live[fn]
        while insts and insts[0][0] + keep_alive_s <= x:  # expired before x (oldest idle first)
            busy_until, created = insts.pop(0)
            every.append((fn, created, busy_until))
        j = bisect.bisect_right(insts, (x, math.inf)) - 1  # latest busy_until <= x: most recently idled
        if j >= 0:
            _, created = insts.pop(j)
            lat[k] = dur
        else:
            created = x
            lat[k] = startup_s[fn] + dur
            cold[fn] += 1
        bisect.insort(insts, (x + lat[k], created))
        lat_by_f[fn] += lat[k]
    for fn, insts in enumerate(live):
        every.extend((fn, created, busy_until) for busy_until, created in insts)
    t_final = max(horizon, max((b for _, _, b in every), default=0.0))
    alive_gb_s = np.zeros(n_f)
    for fn, created, busy_until in every:
        alive_gb_s[fn] += (min(busy_until + keep_alive_s, t_final) - created) * mem[fn]
    busy = np.bincount(f, weights=d * mem[f], minlength=n_f)
    # Peak memory: sweep over starts (+mem) and expiries (-mem); an expiry at a start's instant goes first.
    sweep = sorted([(c, 1, mem[g]) for g, c, _ in every] + [(b + keep_alive_s, 0, -mem[g]) for g, _, b in every])
    held = peak = 0.0
    for _, _, delta in sweep:
        held += delta
        peak = max(peak, held)
    with np.errstate(invalid="ignore"):
        pct = 100.0 * cold[arrivals > 0] / arrivals[arrivals > 0]
    srt = np.sort(lat)
    return {"cold": cold, "busy": busy, "waste": alive_gb_s - busy, "t_final": t_final, "lat_by_f": lat_by_f,
            "p50": srt[math.ceil(0.5 * len(srt)) - 1], "p99": srt[math.ceil(0.99 * len(srt)) - 1],
            "p75_pct": float(np.percentile(pct, 75)), "peak": peak, "n": len(t)}


def compare_with_reference(res: SimResult, ref: dict) -> None:
    m = res.metrics()
    assert m["invocations"] == ref["n"]
    assert res.fi[:, E.F_COLD].tolist() == ref["cold"].tolist()
    assert m["cold_starts"] == int(ref["cold"].sum())
    assert m["p75_function_cold_start_pct"] == pytest.approx(ref["p75_pct"])
    assert res.fs[:, E.S_BUSY] == pytest.approx(ref["busy"], rel=1e-9, abs=1e-9)
    assert res.fs[:, E.S_WASTE] == pytest.approx(ref["waste"], rel=1e-9, abs=1e-6)
    assert m["wasted_gb_s"] == pytest.approx(float(ref["waste"].sum()), rel=1e-9)
    assert m["busy_gb_s"] == pytest.approx(float(ref["busy"].sum()), rel=1e-9)
    assert res.fs[:, E.S_LAT_SUM] == pytest.approx(ref["lat_by_f"], rel=1e-9)
    assert m["p50_latency_ms"] == pytest.approx(1000 * ref["p50"], rel=2.5e-3)
    assert m["p99_latency_ms"] == pytest.approx(1000 * ref["p99"], rel=2.5e-3)
    assert res.t_final == pytest.approx(ref["t_final"])
    assert m["peak_memory_gb"] == pytest.approx(ref["peak"])
    assert m["timed_out"] == 0


def random_list_workload(seed: int, horizon: float = 3600.0) -> ListWorkload:
    """~200 arrivals over 4 functions: a busy overlapping one, two gap scales around the keep-alives."""
    rng = np.random.default_rng(seed)
    functions = [("busy", 256.0), ("minute", 512.0), ("sparse", 1536.0), ("rare", 128.0)]
    mean_gap = [25.0, 70.0, 300.0, 900.0]
    mean_dur = [30.0, 5.0, 2.0, 0.5]
    arrivals = []
    for fn, (gap, dur) in enumerate(zip(mean_gap, mean_dur, strict=True)):
        x = rng.exponential(gap)
        while x < horizon - 1.0:
            arrivals.append((x, fn, rng.exponential(dur)))
            x += rng.exponential(gap)
    arrivals.append((horizon - 1.5, 0, 40.0))  # finishes after the horizon
    return ListWorkload(functions, arrivals, horizon, cold_start_s=[0.5, 2.0, np.nan, 4.0])


@pytest.mark.parametrize("keep_alive", [0.0, 60.0, 600.0])
@pytest.mark.parametrize("seed", [11, 12])
def test_engine_matches_reference_model(keep_alive: float, seed: int) -> None:
    w = random_list_workload(seed)
    t, f, d = all_arrivals(w, 0)
    assert 150 <= len(t) <= 300
    startup = np.where(np.isnan(w.functions.cold_start_s), 1.0, w.functions.cold_start_s)
    ref = reference_keepalive(t, f, d, w.functions.memory_mb, startup, keep_alive, w.horizon_s)
    assert ref["t_final"] > w.horizon_s
    # Odd chunk and sample sizes: chunking and sampling must not change anything.
    res = run(w, KeepAlivePolicy(keep_alive), startup=StartupModel("per-function", seconds=1.0), chunk_s=97.0,
              sample_s=13.0)
    compare_with_reference(res, ref)


def test_engine_matches_reference_model_on_poisson_workload() -> None:
    w = PoissonWorkload([PoissonFunction(name="api", rate_per_s=0.2, service_s=3.0, memory_mb=300),
                         PoissonFunction(name="cron", rate_per_s=1 / 120, service_s=0.5, memory_mb=700),
                         PoissonFunction(name="slow", rate_per_s=1 / 40, service_s=20.0, memory_mb=2048)],
                        duration_s=1800.0)
    t, f, d = all_arrivals(w, 5)
    assert 300 < len(t) < 700
    ref = reference_keepalive(t, f, d, w.functions.memory_mb, np.ones(3), 60.0, w.horizon_s)
    compare_with_reference(run(w, KeepAlivePolicy(60.0), seed=5, chunk_s=600.0), ref)


def test_engine_matches_reference_model_on_azure_like_workload() -> None:
    w = azure_like(n_functions=30, duration_s=3 * 3600, seed=3)
    t, f, d = all_arrivals(w, 0)
    ref = reference_keepalive(t, f, d, w.functions.memory_mb, np.ones(30), 600.0, w.horizon_s)
    compare_with_reference(run(w, KeepAlivePolicy(600.0)), ref)


# --------------------------------------------------------------------------------------------------
# invariants on random workloads, every baseline policy
# --------------------------------------------------------------------------------------------------


def poisson_workload() -> PoissonWorkload:
    return PoissonWorkload([PoissonFunction(name="api", rate_per_s=2.0, service_s=0.3, memory_mb=256),
                            PoissonFunction(name="batch", rate_per_s=0.05, service_s=8.0, memory_mb=1024),
                            PoissonFunction(name="rare", rate_per_s=1 / 900, service_s=1.0, memory_mb=128)],
                           duration_s=3600.0)


WORKLOADS = {"azure-like": lambda: azure_like(n_functions=30, duration_s=3 * 3600, seed=3),
             "poisson": poisson_workload}


@pytest.mark.parametrize("spec", ["fixed:10m", "fixed:1m", "kpa", "hybrid", "always-warm"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_invariants(workload: str, spec: str) -> None:
    w = WORKLOADS[workload]()
    t, f, d = all_arrivals(w, 0)
    res = run(w, policy_factory(spec)())
    m = res.metrics()
    fi, fs = res.fi, res.fs
    n = len(w.functions)
    # Every invocation arrives and completes exactly once.
    assert m["invocations"] == len(t)
    assert fi[:, E.F_ARRIVALS].tolist() == np.bincount(f, minlength=n).tolist()
    assert fi[:, E.F_DONE].tolist() == fi[:, E.F_ARRIVALS].tolist()
    assert m["timed_out"] == 0 and int(fi[:, E.F_REQ].sum()) == 0
    # One request per instance: each cold start is exactly one instance start that served a waiting request.
    assert fi[:, E.F_COLD].tolist() == fi[:, E.F_STARTS_SERVED].tolist()
    assert (fi[:, E.F_STARTS] >= fi[:, E.F_STARTS_SERVED]).all()
    assert fi[:, E.F_ALIVE].tolist() == (fi[:, E.F_STARTS] - fi[:, E.F_RELEASED]).tolist()
    # Busy memory-time is exactly the executions' duration x memory.
    mem_gb = w.functions.memory_mb / 1024.0
    assert fs[:, E.S_BUSY] == pytest.approx(np.bincount(f, weights=d * mem_gb[f], minlength=n), rel=1e-9)
    assert m["busy_gb_s"] == pytest.approx(float((d * mem_gb[f]).sum()), rel=1e-9)
    assert (fs[:, E.S_WASTE] >= -1e-9).all()
    # Latency: the execution, plus the remaining start-up (at most 1 s here) when cold; exactly 1 s when
    # every instance is started by the request that waits for it (fixed keep-alive).
    exec_s = np.bincount(f, weights=d, minlength=n)
    assert (fs[:, E.S_LAT_SUM] >= exec_s - 1e-6).all()
    assert (fs[:, E.S_LAT_SUM] <= exec_s + fi[:, E.F_COLD] * 1.0 + 1e-6).all()
    if spec.startswith("fixed"):
        assert fs[:, E.S_LAT_SUM] == pytest.approx(exec_s + fi[:, E.F_COLD] * 1.0, rel=1e-9, abs=1e-6)
    assert res.t_final >= w.horizon_s
    if spec == "always-warm":
        # Nothing is ever released: each instance holds memory from its start to the end of the run.
        assert fi[:, E.F_RELEASED].sum() == 0
        assert m["wasted_gb_s"] + m["busy_gb_s"] >= float(mem_gb.sum()) * w.horizon_s - 1e-6


# --------------------------------------------------------------------------------------------------
# determinism and parallel replay
# --------------------------------------------------------------------------------------------------


def test_same_seed_same_metrics_different_seed_differs() -> None:
    w = azure_like(n_functions=30, duration_s=3 * 3600, seed=3)
    make = policy_factory("fixed:10m")
    a = replay(w, make, ReplayConfig(seed=1)).metrics()
    b = replay(w, make, ReplayConfig(seed=1)).metrics()
    c = replay(w, make, ReplayConfig(seed=2)).metrics()
    assert a == b
    assert a != c
    assert a["invocations"] == c["invocations"]  # same counts per minute, different times and durations


@pytest.mark.parametrize("spec", ["fixed:10m", "hybrid"])
def test_parallel_replay_matches_single_process(spec: str) -> None:
    w = azure_like(n_functions=30, duration_s=3 * 3600, seed=3)
    make = policy_factory(spec)
    cfg = ReplayConfig(seed=4)
    one = replay(w, make, cfg, workers=1)
    two = replay(w, make, cfg, workers=2)
    m1, m2 = one.metrics(), two.metrics()
    assert two.functions.tolist() == list(range(30))
    for key in ("invocations", "cold_starts", "timed_out"):
        assert m2[key] == m1[key], key
    for key in ("wasted_gb_s", "busy_gb_s", "throughput_rps"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-9), key
    for key in ("p75_function_cold_start_pct", "p50_latency_ms", "p99_latency_ms"):
        assert m2[key] == m1[key], key
    assert two.fi[:, E.F_COLD].tolist() == one.fi[:, E.F_COLD].tolist()
    # Several workers: the sum of per-worker peaks per sample interval, an upper bound.
    assert m2["peak_memory_gb"] >= m1["peak_memory_gb"] - 1e-9
    assert two.alive_total.tolist() == one.alive_total.tolist()
    assert two.top.tolist() == one.top.tolist()
    assert two.alive_top.tolist() == one.alive_top.tolist()


def test_run_shard_subset_equals_full_run_rows() -> None:
    # Without a cap functions are independent: a subset reproduces its rows of a full run once its
    # accounting is carried on to the full run's end (the full run ends at its own last completion).
    w = azure_like(n_functions=30, duration_s=3 * 3600, seed=3)
    cfg = ReplayConfig(seed=4)
    full = run_shard(w, KeepAlivePolicy(600.0), cfg)
    idx = np.array([1, 5, 17, 29])
    part = run_shard(w, KeepAlivePolicy(600.0), cfg, idx=idx, keep_state=True)
    assert part.t_final < full.t_final  # the last completion of the run is in another function
    part.extend_to(full.t_final)
    assert part.t_final == full.t_final
    assert part.fi.tolist() == full.fi[idx].tolist()
    assert part.fs == pytest.approx(full.fs[idx], rel=1e-12)
