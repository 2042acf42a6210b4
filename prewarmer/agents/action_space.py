"""The discrete choices of one agent per tick, and their translation into platform `Actions`.

keep (change nothing), release (let every idle instance go now and keep none), a keep-alive from a
ladder (1, 5, 10, 30 min), prewarm (one instance now if none is warm or starting, 10 min keep-alive),
scale-out (start instances up to the concurrency seen in the last tick) and hybrid (follow the
windows of the hybrid histogram policy, kept up to date for every function as a shadow). These map
onto the verbs every actuator implements (keep-alive, prewarm delay, release idle, prewarm k, scale to n).
"""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation

CHOICES = ("keep", "release", "keep-alive 1m", "keep-alive 5m", "keep-alive 10m", "keep-alive 30m", "prewarm",
           "scale-out", "hybrid")
N_CHOICES = len(CHOICES)
KEEP, RELEASE, KA1, KA5, KA10, KA30, PREWARM, SCALE_OUT, HYBRID = range(N_CHOICES)
_KEEP_ALIVE = np.array([np.nan, 0.0, 60.0, 300.0, 600.0, 1800.0, 600.0, 600.0, np.nan])


def to_actions(choice: np.ndarray, obs: Observation, keep_alive: np.ndarray, prewarm_delay: np.ndarray,
               hybrid: Actions | None = None) -> tuple[Actions, np.ndarray, np.ndarray]:
    """Platform actions for each function's choice, and the (keep-alive, prewarm delay) now in force.

    `hybrid` holds the shadow hybrid policy's current windows (needed for the `hybrid` choice)."""
    choice = np.asarray(choice, np.int64)
    ka = _KEEP_ALIVE[choice]
    surplus = ka.copy()
    pw = np.where(choice == KEEP, np.nan, 0.0)
    if hybrid is not None:
        use = choice == HYBRID
        ka = np.where(use, hybrid.keep_alive_s, ka)
        surplus = np.where(use, hybrid.surplus_keep_alive_s, surplus)
        pw = np.where(use, hybrid.prewarm_delay_s, pw)
    else:
        pw = np.where(choice == HYBRID, np.nan, pw)
    new_ka = np.where(np.isnan(ka), keep_alive, ka)
    new_pw = np.where(np.isnan(pw), prewarm_delay, pw)
    release = np.where(choice == RELEASE, np.iinfo(np.int32).max, 0).astype(np.int64)
    ready = obs.idle_warm + obs.starting
    prewarm = np.where((choice == PREWARM) & (ready == 0), 1, 0).astype(np.int64)
    want = np.ceil(obs.concurrency).astype(np.int64)
    scale = np.where(choice == SCALE_OUT, np.maximum(want, 1), -1)
    # scale-out never shrinks: it only adds up to the recent concurrency.
    scale = np.where((scale >= 0) & (scale < obs.alive), -1, scale).astype(np.int64)
    return Actions(keep_alive_s=ka, surplus_keep_alive_s=surplus, prewarm_delay_s=pw, prewarm=prewarm,
                   scale_to=scale, release_idle=release), new_ka, new_pw
