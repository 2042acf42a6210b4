"""The discrete choices of one agent per tick, and their translation into platform `Actions`.

- keep (change nothing); release (let every idle instance go now and keep none);
- a keep-alive from a ladder (1, 10, 30 min);
- hybrid: follow the windows of the hybrid histogram policy, kept up to date for every function as a
  shadow (what a rarely invoked function needs: an idle-time histogram, pre-warming before the call);
- provision a forecast quantile (0.75 … 0.98) of the next tick's peak in flight: scale to that many
  instances now (starting missing ones, releasing idle ones beyond it), instances that idle during
  the tick are kept 5 minutes (past the next decision, which trims them), the last one follows hybrid's keep-alive;
- forecast tracked: whichever of those quantiles or the 10-minute keep-alive has cost this function
  least so far (`prewarmer.agents.experts`); with `marl`'s `low` setting also the median (`LOW`, a choice
  only the tracker makes).
These map onto the verbs every actuator implements (keep-alive, prewarm delay, release idle, scale to n).

`teacher_choice` is the hand-written rule the agents are first cloned from before PPO (see
`prewarmer.agents.train`): busy functions take the tracked option (a 10-minute keep-alive while the
forecaster's history fills), the others follow hybrid.
"""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.forecast.peak import TAUS
from prewarmer.observation import Observation

FORECAST_TAUS = (0.75, 0.85, 0.9, 0.95, 0.98)
CHOICES = ("keep", "release", "keep-alive 1m", "keep-alive 10m", "keep-alive 30m", "hybrid",
           *(f"forecast q{round(100 * t)}" for t in FORECAST_TAUS), "forecast tracked")
N_CHOICES = len(CHOICES)
KEEP, RELEASE, KA1, KA10, KA30, HYBRID = range(6)
FORECAST = np.arange(6, 6 + len(FORECAST_TAUS))  # choice index of each FORECAST_TAUS entry
TRACKED = N_CHOICES - 1
# Forecast quantiles below the network's that only `forecast tracked` may provision (`marl`'s `low`
# setting): choice indices after the network's, so the network and its checkpoints are unchanged.
LOW_TAUS = (0.5,)
LOW = np.arange(N_CHOICES, N_CHOICES + len(LOW_TAUS))
_CHOICE_TAU_COLUMN = np.array([0] * FORECAST[0] + [TAUS.index(t) for t in FORECAST_TAUS] + [0]
                              + [TAUS.index(t) for t in LOW_TAUS])  # the forecast column of every choice
_KEEP_ALIVE = np.full(N_CHOICES + len(LOW_TAUS), np.nan)  # forecasts: below
_KEEP_ALIVE[[RELEASE, KA1, KA10, KA30]] = (0.0, 60.0, 600.0, 1800.0)
FORECAST_HOLD_S = 300.0  # instances idle after a forecast tick: long enough to outlive a tick, scale_to trims them


def to_actions(choice: np.ndarray, obs: Observation, keep_alive: np.ndarray, prewarm_delay: np.ndarray,
               hybrid: Actions | None = None, peak_quantiles: np.ndarray | None = None,
               tracked: np.ndarray | None = None, hold_s: float = FORECAST_HOLD_S,
               floor: np.ndarray | None = None, held: np.ndarray | None = None,
               held_s: float = 0.0, timer: np.ndarray | None = None) -> tuple[Actions, np.ndarray, np.ndarray]:
    """Platform actions for each function's choice, and the (keep-alive, prewarm delay) now in force.

    `hybrid` holds the shadow hybrid policy's current windows (the `hybrid` and forecast choices use
    them); `peak_quantiles` (F, len(TAUS)) the peak forecaster's answer (needed by forecast choices);
    `tracked` the choice `forecast tracked` stands for, per function (a forecast quantile or KA10);
    `hold_s` how long a forecast choice's instances beyond the last one stay idle (the default outlives a
    tick, so the next decision trims them; shorter lets unused ones go within the tick). `floor` (F,), if
    given, is a warm floor for forecast choices (`Actions.min_instances`, at most the forecast's pool): those
    instances are held whatever `hold_s` says, so a short `hold_s` lets only the ones above it go within the
    tick, as hybrid lets a busy function's scale-out go; other choices lift any floor (0). `held` (F,) bool, if
    given, marks functions whose every instance stays at least `held_s` after it idles whatever the choice: no
    release-and-prewarm, and a forecast may start instances but not trim them (`marl`'s cold-share guard).
    `timer` (F,), if given, is a pool each function holds at least this tick whatever the choice (`marl`'s
    timer pools): missing instances start now, and none is released below it."""
    choice = np.asarray(choice, np.int64)
    if (choice == TRACKED).any():
        if tracked is None:
            raise ValueError("the 'forecast tracked' choice needs the tracked choices")
        choice = np.where(choice == TRACKED, tracked, choice)
    n = len(choice)
    ka = _KEEP_ALIVE[choice]
    surplus = ka.copy()
    pw = np.where(choice == KEEP, np.nan, 0.0)
    forecast = choice >= FORECAST[0]
    if hybrid is not None:
        use = choice == HYBRID
        ka = np.where(use, hybrid.keep_alive_s, ka)
        surplus = np.where(use, hybrid.surplus_keep_alive_s, surplus)
        pw = np.where(use, hybrid.prewarm_delay_s, pw)
        ka = np.where(forecast, np.maximum(hybrid.keep_alive_s, FORECAST_HOLD_S), ka)
    else:
        pw = np.where(choice == HYBRID, np.nan, pw)
        ka = np.where(forecast, FORECAST_HOLD_S, ka)
    surplus = np.where(forecast, hold_s, surplus)
    scale = np.full(n, -1, np.int64)
    if peak_quantiles is not None and forecast.any():
        pool = pool_size(peak_quantiles[np.arange(n), _CHOICE_TAU_COLUMN[choice]])
        # Trim to the forecast but never below one while an instance is alive: the last one's fate is
        # its keep-alive (hybrid's), as for a rarely invoked function under hybrid.
        target = np.maximum(pool, np.minimum(obs.alive, 1))
        scale = np.where(forecast, target, -1).astype(np.int64)
    if held is not None:
        ka = np.where(held, np.maximum(np.nan_to_num(ka, nan=0.0), held_s), ka)
        surplus = np.where(held, np.maximum(np.nan_to_num(surplus, nan=0.0), held_s), surplus)
        pw = np.where(held, 0.0, pw)
        scale = np.where(held & (scale >= 0), np.maximum(scale, obs.alive), scale)
    keeps = np.zeros(n, bool) if held is None else held.copy()
    if timer is not None:
        want = np.asarray(timer, np.int64)
        scale = np.where(forecast, np.maximum(scale, want), np.where(want > obs.alive, want, scale))
        keeps |= want > 0
    new_ka = np.where(np.isnan(ka), keep_alive, ka)
    new_pw = np.where(np.isnan(pw), prewarm_delay, pw)
    release = np.where((choice == RELEASE) & ~keeps, np.iinfo(np.int32).max, 0).astype(np.int64)
    floored = None
    if floor is not None:
        floored = np.where(forecast, np.minimum(np.asarray(floor, np.int64), np.maximum(scale, 0)), 0)
    return Actions(keep_alive_s=ka, surplus_keep_alive_s=surplus, prewarm_delay_s=pw, scale_to=scale,
                   release_idle=release, min_instances=floored), new_ka, new_pw


def forecast_pools(peak_quantiles: np.ndarray, choices: np.ndarray = FORECAST) -> np.ndarray:
    """(F, len(choices)) instances each forecast choice (default: the network's) provisions, from the
    forecaster's (F, len(TAUS))."""
    return pool_size(peak_quantiles[:, _CHOICE_TAU_COLUMN[choices]])


def pool_size(peak: np.ndarray) -> np.ndarray:
    """Instances that provision a forecast peak (float instances): rounded up, but a peak within 0.05 above
    an integer is that integer."""
    return np.ceil(peak - 0.05)


def newsvendor_choice(memory_mb: np.ndarray, cold_start_cost: float, idle_gb_tick_cost: float) -> np.ndarray:
    """The forecast choice nearest to cost(cold start) / (cost(cold start) + cost(one idle instance for a
    tick)): the quantile at which one more instance costs as much idle as it saves in cold starts."""
    idle = idle_gb_tick_cost * np.asarray(memory_mb, np.float64) / 1024.0
    tau = cold_start_cost / np.maximum(cold_start_cost + idle, 1e-12)
    return FORECAST[np.abs(np.asarray(FORECAST_TAUS)[None, :] - tau[:, None]).argmin(axis=1)]


def teacher_choice(rate_per_tick: np.ndarray, warming_up: bool, min_rate: float = 0.06) -> np.ndarray:
    """The rule the agents start from: functions invoked at least `min_rate` times per tick take the
    tracked provisioning option, or a 10-minute keep-alive while the forecaster is `warming_up` (its
    history is still mostly empty); the others follow hybrid. The rate is an EWMA over ~10 ticks, so a
    function invoked once stays above 0.06 for five ticks, in which its instance is kept (hybrid's
    keep-alive, at least 5 minutes) rather than released to be prewarmed later. Chosen on validation
    windows: 0.04–0.08 all gave fewer cold starts and a lower p75 than 0.3 at the same waste; 0 kept
    too much."""
    busy = np.asarray(rate_per_tick) >= min_rate
    return np.where(busy, KA10 if warming_up else TRACKED, HYBRID).astype(np.int64)
