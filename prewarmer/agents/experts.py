"""Per-function choice of how much to provision, from what each option would have cost it so far.

The peak forecaster is shared by all functions and calibrated on the training ones; on a function
unlike them its quantiles can be too low (a burst it has not learned) or too high. Each agent
therefore keeps score, on its own function's data, of the provisioning options it can take: the
forecast quantiles of `action_space.FORECAST_TAUS` and a 10-minute keep-alive (whose pool is about
the largest peak of the last 10 ticks). After every tick each option is charged what it would have
cost: one per instance short of the peak (a cold start) plus `idle_gb_tick_cost` per GB of instances
beyond it (one idle tick), in a sum that halves every `halflife` ticks. With `lag`, an option is also
charged the cold starts its own start-ups cause: instances it adds at a tick are not ready for the
function's start-up time, so what the first seconds need (the requests in flight when the tick began and
the tick's arrivals x start-up / tick) beyond the instances the option had before waits for them. Without it
a pool raised just in time scores as well as one held, and a function whose bursts come early in a minute
keeps cold-starting.
The `forecast tracked` action
provisions the option with the lowest score. Until `warmup` ticks have been scored, the score is
not trusted and the newsvendor quantile (cold / (cold + idle cost)) stands in.

On functions the forecaster never saw this costs less than any one quantile for all (README).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from prewarmer.agents.action_space import FORECAST, KA10, LOW, forecast_pools, newsvendor_choice
from prewarmer.policies.base import pad

KEEP_ALIVE_S = 600.0  # the keep-alive option: a 10-minute keep-alive, whose pool is the largest peak of its ticks
KEEP_ALIVE_TICKS = 10  # ... at minute-long ticks
TRACKER_HALFLIFE = 120.0  # ticks (minutes) over which an option's costs halve
TRACKER_WARMUP = 60  # ticks (minutes) scored before the scores choose
OPTION_CHOICES = np.concatenate([FORECAST, [KA10]])  # the choice each option is carried out by


class ProvisioningTracker:
    def __init__(self, memory_mb: np.ndarray, idle_gb_tick_cost: float, cold_start_cost: float = 1.0,
                 halflife: float = TRACKER_HALFLIFE, warmup: int = TRACKER_WARMUP, low: bool = False,
                 lag: bool = False, keep_alive_ticks: int = KEEP_ALIVE_TICKS) -> None:
        self.gb = np.asarray(memory_mb, np.float64) / 1024.0
        # With `low`, the quantiles below the network's (`action_space.LOW`) are options too: where idle memory
        # is dear, q75 is not the least a function may provision. The keep-alive option stays last.
        self.options = np.concatenate([LOW, OPTION_CHOICES]) if low else OPTION_CHOICES
        self.idle_cost, self.cold_cost = idle_gb_tick_cost, cold_start_cost
        self.decay = 0.5 ** (1.0 / halflife)
        self.warmup = warmup
        self.keep_alive_ticks = keep_alive_ticks  # the ticks of peaks the keep-alive option's pool spans
        # Decayed sums of instances short (cold starts) and idle GB-ticks per option: the score is their
        # priced sum, so a new idle price applies to the whole history at once.
        self.short = np.zeros((len(self.gb), len(self.options)))
        self.idle = np.zeros((len(self.gb), len(self.options)))
        self.pools: np.ndarray | None = None  # what each option would provision for the coming tick
        self.lag = lag
        # With `lag`: the instances each option had before the coming tick's start-ups (the pool it held over the
        # last tick, or the peak if that was above it: those instances were started by the requests).
        self.before: np.ndarray | None = None
        self.in_flight: np.ndarray | None = None  # requests in flight when the tick being scored began
        self.scored = 0
        self.fallback = newsvendor_choice(np.asarray(memory_mb, np.float64), cold_start_cost, idle_gb_tick_cost)

    def __setstate__(self, state: dict) -> None:
        # A tracker of a shard checkpoint written before `lag`: it starts charging start-ups after one tick.
        state.setdefault("lag", False)
        state.setdefault("before", None)
        state.setdefault("in_flight", None)
        state.setdefault("keep_alive_ticks", KEEP_ALIVE_TICKS)  # ... or before `marl`'s `tick`: minute-long ticks
        self.__dict__.update(state)

    def grow(self, memory_mb: np.ndarray) -> None:
        """Rows for functions appended to the table (`memory_mb` of all of them): no option scored yet.
        Their pools come with the next `propose`."""
        n = len(memory_mb)
        self.gb = np.asarray(memory_mb, np.float64) / 1024.0
        self.short = np.concatenate([self.short, np.zeros((n - len(self.short), self.short.shape[1]))])
        self.idle = np.concatenate([self.idle, np.zeros((n - len(self.idle), self.idle.shape[1]))])
        self.fallback = newsvendor_choice(np.asarray(memory_mb, np.float64), self.cold_cost, self.idle_cost)
        self.pools = None if self.pools is None else np.concatenate(
            [self.pools, np.zeros((n - len(self.pools), self.pools.shape[1]))])
        self.before = None if self.before is None else pad(self.before, n, 0.0)
        self.in_flight = None if self.in_flight is None else pad(self.in_flight, n, 0.0)

    def update(self, peak_in_flight: np.ndarray, arrivals: np.ndarray | None = None,
               startup_share: np.ndarray | None = None, in_flight: np.ndarray | None = None) -> None:
        """Charge every option for the tick that just ended (its peak is now known). With `lag`: the tick's
        `arrivals` (F,), `startup_share` (F,), each function's start-up time as a share of the tick, and the
        requests `in_flight` (F,) now, when the next tick begins, charge the start-ups too."""
        need = np.asarray(peak_in_flight, np.float64)
        if self.pools is not None:
            _charge(self.short, self.idle, self.pools, need, self.gb, self.decay)
            if self.lag and self.before is not None and self.in_flight is not None and arrivals is not None \
                    and startup_share is not None:
                early = self.in_flight + np.asarray(arrivals, np.float64) * np.clip(startup_share, 0.0, 1.0)
                _charge_start_ups(self.short, self.pools, self.before, early, need)
            self.scored += 1
        if self.lag and in_flight is not None:
            self.in_flight = np.asarray(in_flight, np.float64).copy()

    @property
    def score(self) -> np.ndarray:
        """(F, options): what each option would have cost each function so far, at the current prices."""
        return self.cold_cost * self.short + self.idle_cost * self.idle

    def set_idle_cost(self, idle_gb_tick_cost: float) -> None:
        """A new idle price: it re-prices the whole history, and the newsvendor fallback."""
        self.idle_cost = idle_gb_tick_cost
        self.fallback = newsvendor_choice(self.gb * 1024.0, self.cold_cost, idle_gb_tick_cost)

    def propose(self, quantiles: np.ndarray, recent_peaks: np.ndarray) -> None:
        """Record each option's pool for the coming tick: the forecast (F, len(TAUS)) and the peaks
        of the last ticks (F, >= keep_alive_ticks, newest first)."""
        keep_alive_pool = _row_max(recent_peaks, self.keep_alive_ticks)[:, None]
        if self.lag:
            held = np.zeros((len(recent_peaks), len(self.options))) if self.pools is None else self.pools
            self.before = np.maximum(held, np.asarray(recent_peaks[:, :1], np.float64))
        self.pools = np.concatenate([forecast_pools(quantiles, self.options[:-1]), keep_alive_pool], axis=1)

    def best(self) -> np.ndarray:
        """The choice (an `action_space` index) of the lowest-scored option of every function."""
        if self.scored < self.warmup:
            return self.fallback
        return self.options[_cheapest(self.short, self.idle, self.cold_cost, self.idle_cost)]


# The kernels below do numpy's arithmetic row by row in one pass (each product and sum rounded on its own, as
# numpy's temporaries are): the same values to the bit, without a temporary per operation (tests/test_fast_paths.py).

@njit(cache=True)
def _charge(short, idle, pools, need, gb, decay):
    """In place: short = decay * short + max(need - pools, 0); idle = decay * idle + max(pools - need, 0) * gb."""
    for r in range(short.shape[0]):
        for j in range(short.shape[1]):
            d = need[r] - pools[r, j]
            short[r, j] = decay * short[r, j] + _maximum(d, 0.0)
            e = pools[r, j] - need[r]
            idle[r, j] = decay * idle[r, j] + _maximum(e, 0.0) * gb[r]


@njit(cache=True)
def _charge_start_ups(short, pools, before, early, need):
    """In place: short += max(min(min(early, need)[:, None], pools) - before, 0): the instances each option's own
    start-ups left the tick's first seconds short of."""
    for r in range(short.shape[0]):
        e = _minimum(early[r], need[r])
        for j in range(short.shape[1]):
            short[r, j] += _maximum(_minimum(e, pools[r, j]) - before[r, j], 0.0)


@njit(cache=True, inline="always")
def _minimum(a, b):
    return a if (a <= b or a != a) else b  # np.minimum's: the first of equal ones, NaN wins


@njit(cache=True, inline="always")
def _maximum(a, b):
    return a if (a >= b or a != a) else b  # np.maximum's: the first of equal ones, NaN wins


@njit(cache=True)
def _row_max(a, width):
    """np.max(a[:, :width], axis=1)."""
    out = np.empty(a.shape[0])
    for r in range(a.shape[0]):
        m = a[r, 0]
        for j in range(1, width):
            m = _maximum(m, a[r, j])
        out[r] = m
    return out


@njit(cache=True)
def _cheapest(short, idle, cold_cost, idle_cost):
    """np.argmin(cold_cost * short + idle_cost * idle, axis=1): the first of equal ones, the first NaN."""
    out = np.empty(short.shape[0], np.int64)
    for r in range(short.shape[0]):
        best = cold_cost * short[r, 0] + idle_cost * idle[r, 0]
        k = 0
        if best == best:
            for j in range(1, short.shape[1]):
                v = cold_cost * short[r, j] + idle_cost * idle[r, j]
                if v != v:
                    k = j
                    break
                if v < best:
                    best, k = v, j
        out[r] = k
    return out
