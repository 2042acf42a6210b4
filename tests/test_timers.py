"""`marl`'s timer pools (`prewarmer.agents.timers`): a function whose bursts start at equal intervals gets its last
bursts' pool warm from a tick before the next is due until that burst has risen."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_table

from prewarmer.agents.timers import TimerPools
from prewarmer.registry import policy_factory
from prewarmer.sim import engine as E
from prewarmer.sim.replay import ReplayConfig, replay
from prewarmer.workloads.base import MinuteCountWorkload

TICK = 20.0


def feed(pools: TimerPools, burst_ticks: dict[int, list[float]], ticks: int) -> list[np.ndarray]:
    """Tick by tick: the peaks in flight of a burst starting at each key (one tick per entry), nothing
    elsewhere; returns what `due` says for the tick after each."""
    peaks = np.zeros(ticks)
    for first, rise in burst_ticks.items():
        peaks[first:first + len(rise)] = rise
    out = []
    for k in range(ticks):
        now = (k + 1) * TICK
        pools.update(now, TICK, np.array([int(peaks[k] > 0)]), np.array([peaks[k]]))
        out.append(pools.due(now, TICK))
    return out


def test_a_timer_gets_its_last_bursts_pool_around_the_next_one_and_until_it_has_risen() -> None:
    period = 30  # ticks: a 10-minute timer
    bursts = {k * period: [3.0, 8.0, 5.0] for k in range(4)}  # each burst rises to 8 in its second tick
    due = [float(d[0]) for d in feed(TimerPools(1, TICK), bursts, 4 * period)]
    # Nothing is held before the third burst starts (two equal intervals); the third, once started with 3 of
    # its 8, is held until it has risen (`due[k]` is said at the end of tick k, for tick k + 1).
    assert not any(due[:2 * period])
    assert due[2 * period] == 8.0 and due[2 * period + 1] == 0.0
    # The fourth is due in tick 90: held from the tick before (said at the end of tick 88), through its start
    # (it starts with 3 of its 8) until its peak reaches the pool, and no longer.
    assert due[2 * period + 2:88] == [0.0] * (88 - 2 * period - 2)
    assert due[88:91] == [8.0, 8.0, 8.0] and due[91] == 0.0


def test_a_burst_that_does_not_come_is_held_a_tick_past_its_time_and_irregular_ones_never() -> None:
    late = feed(TimerPools(1, TICK), {0: [4.0], 30: [4.0], 60: [4.0]}, 120)
    held = [k for k, d in enumerate(late) if d[0] > 0]
    assert held == [88, 89, 90]  # the tick before the one due, that one and the one after: then it lets go
    irregular = feed(TimerPools(1, TICK), {0: [4.0], 30: [4.0], 70: [4.0], 100: [4.0]}, 140)
    # Intervals of 30 and 40 ticks, then 40 and 30: never two equal ones in a row.
    assert not any(d[0] for d in irregular)


def timer_workload(n: int = 4, minutes: int = 180, period: int = 15, burst: int = 40) -> MinuteCountWorkload:
    """Timer functions: `burst` requests in one minute every `period` minutes (each function at its own
    phase), each taking 5-8 s: a burst needs several instances at once."""
    counts = np.zeros((n, minutes), np.int32)
    for f in range(n):
        counts[f, (3 * f) % period::period] = burst
    table = make_table([(f"t{f}", 512.0) for f in range(n)])
    pct = np.tile(np.array([5000, 5000, 6000, 7000, 7500, 8000, 8000], float), (n, 1))
    return MinuteCountWorkload(table, counts, pct)


def cold_after(result, minute: float) -> int:
    """The fleet's cold starts after `minute` (from the per-minute samples of counts so far)."""
    cold = result.counts_total[:, 1]
    k = int(np.searchsorted(result.sample_t, 60.0 * minute))
    return int(cold[-1] - cold[k - 1])


@pytest.mark.parametrize("tick", ["20s", "60s"])
def test_timer_pools_take_the_cold_starts_out_of_a_timers_bursts(tick: str) -> None:
    w = timer_workload()
    cfg = ReplayConfig(seed=1)
    plain = replay(w, policy_factory(f"marl:cold_target=off,fair=off,tick={tick},timers=off"), cfg)
    timers = replay(w, policy_factory(f"marl:cold_target=off,fair=off,tick={tick},timers=on"), cfg)
    assert timers.metrics()["invocations"] == plain.metrics()["invocations"] == int(w.counts.sum())
    assert plain.fi[:, E.F_COLD].sum() == plain.counts_total[-1, 1]
    # Once every function has had three bursts (two equal intervals, by minute 45), a timer's bursts start
    # warm; without the pools, bursts keep starting instances cold. At minute-long ticks the pool comes up to
    # a minute early, and is held through the burst's minute, at 20-s ticks 20 s early.
    bursts = len(w.counts) * (w.counts.shape[1] - 45) // 15
    assert cold_after(plain, 45) >= bursts
    assert cold_after(timers, 45) <= (0.1 if tick == "20s" else 0.4) * cold_after(plain, 45)
    # The pool is held about three ticks a burst, not the interval.
    assert timers.metrics()["wasted_gb_s"] <= 1.25 * plain.metrics()["wasted_gb_s"]


def test_the_timers_setting_parses_and_reaches_the_policy() -> None:
    assert policy_factory("marl:timers=on")().timers is True
    assert policy_factory("marl:timers=off")().timers is False
    with pytest.raises(ValueError, match="timers"):
        policy_factory("marl:timers=maybe")
