"""The discrete choices of one agent per tick, and their translation into platform `Actions`.

keep (change nothing), release (let every idle instance go now and keep none), a keep-alive from a
ladder (1, 5, 10, 30 min), prewarm (one instance now if none is warm or starting, 10 min keep-alive)
and scale-out (start instances up to the concurrency seen in the last tick). These map onto the
verbs every actuator implements (keep-alive, release idle, prewarm k, scale to n).
"""

from __future__ import annotations

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation

CHOICES = ("keep", "release", "keep-alive 1m", "keep-alive 5m", "keep-alive 10m", "keep-alive 30m", "prewarm",
           "scale-out")
N_CHOICES = len(CHOICES)
KEEP, RELEASE, KA1, KA5, KA10, KA30, PREWARM, SCALE_OUT = range(N_CHOICES)
_KEEP_ALIVE = np.array([np.nan, 0.0, 60.0, 300.0, 600.0, 1800.0, 600.0, 600.0])


def to_actions(choice: np.ndarray, obs: Observation, current_keep_alive: np.ndarray) -> tuple[Actions, np.ndarray]:
    """Platform actions for each function's choice; also returns the keep-alive now in force."""
    choice = np.asarray(choice, np.int64)
    ka = _KEEP_ALIVE[choice]
    new_ka = np.where(np.isnan(ka), current_keep_alive, ka)
    release = np.where(choice == RELEASE, np.iinfo(np.int32).max, 0).astype(np.int64)
    ready = obs.idle_warm + obs.starting
    prewarm = np.where((choice == PREWARM) & (ready == 0), 1, 0).astype(np.int64)
    want = np.ceil(obs.concurrency).astype(np.int64)
    scale = np.where(choice == SCALE_OUT, np.maximum(want, 1), -1)
    # scale-out never shrinks: it only adds up to the recent concurrency.
    scale = np.where((scale >= 0) & (scale < obs.alive), -1, scale).astype(np.int64)
    return Actions(keep_alive_s=ka, surplus_keep_alive_s=ka, prewarm=prewarm, scale_to=scale,
                   release_idle=release), new_ka
