"""What an agent may do, as arrays over functions: the same verbs the live actuators implement.

- `keep_alive_s`: how long an instance stays warm after it idles (applies to instances that idle
  from now on); `inf` keeps it until released by another action.
- `surplus_keep_alive_s`: a cap on the keep-alive of a function's instances other than its last
  one (scale-out instances); `inf` (the default) means they follow `keep_alive_s` too.
- `prewarm_delay_s`: > 0 releases an instance as soon as it idles and starts a fresh one that many
  seconds later (the hybrid policy's pre-warming window); 0 disables.
- `prewarm`: start k more instances now (they idle under the keep-alive once ready).
- `scale_to`: start or release (idle ones, oldest first) instances to reach n in total.
- `release_idle`: release up to k idle instances now, oldest first.
- `max_hold`: an award from a budget coordinator: the most ready instances the function may hold
  idle; beyond it instances are released as they idle and prewarms are cut; `inf` = no limit.
- `max_instances`: an award of running capacity: the most instances (busy or not) the function may
  have; its further requests wait for one of its own instances (-1 = no change).
- `min_instances`: a warm floor (Knative's min-scale): the fewest instances (starting, idle or busy)
  the function keeps; missing ones start now, idle ones are neither released nor expired below it,
  whatever the other verbs say (0 = no floor; -1 = no change). Lowering it gives the idle instances it
  held their keep-alive back, counted from when each idled.

Entries that mean "no change": NaN for the float arrays, 0 for prewarm/release_idle, -1 for scale_to.
A field left as None means no change for every function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_NO_CHANGE = {"keep_alive_s": np.nan, "surplus_keep_alive_s": np.nan, "prewarm_delay_s": np.nan, "prewarm": 0,
              "scale_to": -1, "release_idle": 0, "max_hold": np.nan, "max_instances": -1, "min_instances": -1}
_FIELDS = tuple(_NO_CHANGE)


@dataclass
class Actions:
    keep_alive_s: np.ndarray | None = None
    surplus_keep_alive_s: np.ndarray | None = None
    prewarm_delay_s: np.ndarray | None = None
    prewarm: np.ndarray | None = None
    scale_to: np.ndarray | None = None
    release_idle: np.ndarray | None = None
    max_hold: np.ndarray | None = None
    max_instances: np.ndarray | None = None
    min_instances: np.ndarray | None = None

    @classmethod
    def none(cls) -> Actions:
        return cls()

    def validate(self, n_functions: int) -> None:
        for name in _FIELDS:
            a = getattr(self, name)
            if a is not None and np.shape(a) != (n_functions,):
                raise ValueError(f"Actions.{name} has shape {np.shape(a)}, expected ({n_functions},)")

    def only_from(self, first: int) -> Actions:
        """These actions for functions `first`.. only: "no change" for the ones before (see `Policy.grow`)."""
        out = Actions()
        for name in _FIELDS:
            a = getattr(self, name)
            if a is not None:
                a = np.array(a, copy=True)
                a[:first] = _NO_CHANGE[name]
            setattr(out, name, a)
        return out

    def counts(self) -> dict[str, int]:
        """How many functions each verb touched (for logs and metrics)."""
        out = {}
        for name, a in (("keep_alive", self.keep_alive_s), ("prewarm_delay", self.prewarm_delay_s)):
            out[name] = 0 if a is None else int(np.count_nonzero(~np.isnan(a)))
        out["prewarm"] = 0 if self.prewarm is None else int(np.count_nonzero(self.prewarm > 0))
        out["scale_to"] = 0 if self.scale_to is None else int(np.count_nonzero(self.scale_to >= 0))
        out["release_idle"] = 0 if self.release_idle is None else int(np.count_nonzero(self.release_idle > 0))
        return out
