"""Forecaster contract: per-minute invocation counts of every function in, per-function forecasts out.

A forecaster is fed once per 1-minute tick with the counts of the minute that just ended, for all
functions at once (one array), and answers for all functions at once: expected counts for the next
minutes and the probability of at least one invocation within the next k minutes. Its state is
plain numpy / python values (`state_dict`) so it can be checkpointed and restored exactly.

Shared pieces live here too: argument checks, the long-run occupancy statistics that turn expected
counts into P(invoked), the slow round-robin refit schedule of the statsmodels forecasters, and the
`last-value` baseline.
"""

from __future__ import annotations

import ctypes
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def check_counts(counts: np.ndarray, n_functions: int) -> np.ndarray:
    """Counts as float64 of shape (F,); raises ValueError on a wrong shape or negative / non-finite values."""
    c = np.asarray(counts)
    if c.shape != (n_functions,):
        raise ValueError(f"counts must have shape ({n_functions},), got {c.shape}")
    c = c.astype(np.float64, copy=False)
    if c.size and (not np.isfinite(c).all() or c.min() < 0):
        raise ValueError("counts must be finite and non-negative")
    return c


def check_steps(value: int, what: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _openblas_thread_setters() -> list[Any]:
    """`openblas_set_num_threads_local` of every OpenBLAS already loaded (numpy's and scipy's each bundle one)."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1].lower()})
    except OSError:  # not Linux: leave the thread counts alone
        return []
    setters = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # only libraries loaded already
            fn = lib.openblas_set_num_threads_local  # OpenBLAS >= 0.3.27; returns the previous value
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        setters.append(fn)
    return setters


@contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run the block with one OpenBLAS thread in this thread.

    statsmodels fits call BLAS on tiny matrices thousands of times; OpenBLAS threads spinning for
    such work on a busy 2-core machine made a SARIMAX(1,0,1) fit ~30x slower (0.9 s instead of 30 ms).
    """
    setters = _openblas_thread_setters()
    previous = [fn(1) for fn in setters]
    try:
        yield
    finally:
        for fn, n in zip(setters, previous, strict=True):
            fn(n)


def poisson_prob(expected: np.ndarray, clump: np.ndarray | float = 1.0) -> np.ndarray:
    """P(at least one invocation) for a total expected count, invocations arriving in clumps of mean `clump`."""
    return np.clip(-np.expm1(-np.maximum(expected, 0.0) / clump), 0.0, 1.0)


class Forecaster(ABC):
    """Per-minute forecasts for F functions, updated incrementally once per tick (vectorized over functions).

    Subclasses list their configuration in `_config_keys` (constructor arguments) and their
    evolving state in `_state_keys` (numpy arrays or python scalars); `state_dict` /
    `load_state_dict` copy exactly these, so a restored forecaster predicts exactly like the original.
    """

    name: str = "forecaster"
    _config_keys: tuple[str, ...] = ()
    _state_keys: tuple[str, ...] = ()

    n_functions: int = 0
    minute: int = 0  # absolute minute (since the trace start) of the next minute to be observed
    n_seen: int = 0  # minutes observed since reset

    def reset(self, n_functions: int, start_minute: int = 0) -> None:
        """Forget everything; `start_minute` is the absolute minute of the first update (time-of-day features)."""
        if isinstance(n_functions, bool) or int(n_functions) != n_functions or n_functions < 0:
            raise ValueError(f"n_functions must be a non-negative integer, got {n_functions!r}")
        self.n_functions, self.minute, self.n_seen = int(n_functions), int(start_minute), 0
        self._reset_state()

    @abstractmethod
    def _reset_state(self) -> None:
        """Allocate the per-function state for `self.n_functions` functions."""

    def update(self, counts: np.ndarray) -> None:
        """Feed the invocation counts of every function for the minute that just ended (shape (F,))."""
        c = check_counts(counts, self.n_functions)
        self._update(c)
        self.minute += 1
        self.n_seen += 1

    @abstractmethod
    def _update(self, counts: np.ndarray) -> None:
        """Advance the state by one minute (`self.minute` is still the minute being observed)."""

    def predict(self, horizon: int) -> np.ndarray:
        """Expected counts for each of the next `horizon` minutes: shape (F, horizon), float64 >= 0."""
        h = check_steps(horizon, "horizon")
        out = np.asarray(self._predict(h), np.float64)
        return np.maximum(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), 0.0)

    @abstractmethod
    def _predict(self, horizon: int) -> np.ndarray: ...

    def prob_invoked(self, k: int) -> np.ndarray:
        """P(at least one invocation in the next k minutes), shape (F,), in [0, 1].

        Default: Poisson on the expected counts, with invocations in clumps of each function's
        long-run mean clump size (`clump_size`), since a burst of n invocations in one minute is one
        chance of being invoked, not n.
        """
        k = check_steps(k, "k")
        return poisson_prob(self.predict(k).sum(axis=1), self.clump_size())

    def clump_size(self) -> np.ndarray | float:
        """Mean number of invocations per independent arrival event; 1 = plain Poisson."""
        return 1.0

    def describe(self) -> dict:
        return {"name": self.name, **{k: getattr(self, k) for k in self._config_keys}}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Configuration and state as plain numpy / python values (copies)."""
        state: dict[str, Any] = {}
        for key in ("n_functions", "minute", "n_seen", *self._state_keys):
            value = getattr(self, key)
            state[key] = _copy(value)
        return {"name": self.name, "config": {k: _plain(getattr(self, k)) for k in self._config_keys},
                "state": state}

    def load_state_dict(self, d: dict) -> None:
        """Restore a `state_dict` (configuration included)."""
        if d.get("name") != self.name:
            raise ValueError(f"state of forecaster {d.get('name')!r} cannot be loaded into {self.name!r}")
        config, state = d.get("config", {}), d.get("state", {})
        unknown = set(config) - set(self._config_keys)
        missing = {"n_functions", "minute", "n_seen", *self._state_keys} - set(state)
        if unknown or missing:
            raise ValueError(f"bad {self.name} state: unknown config {sorted(unknown)}, "
                             f"missing state {sorted(missing)}")
        for key, value in config.items():
            setattr(self, key, value)
        for key, value in state.items():
            setattr(self, key, _copy(value))


def _copy(value: Any) -> Any:
    """A copy of a state value: arrays copied, dicts of arrays copied deeply, numpy scalars made python."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


class OccupancyMixin:
    """Long-run EWMAs of each function's count and of whether its minute had an invocation.

    Their ratio gives the clump size: if arrival events are Poisson with rate r per minute and
    bring `s` invocations each, then E[count] = r s and P(minute occupied) = 1 - exp(-r), so
    s = E[count] / -log(1 - P(occupied)). Bias-corrected, so the first minutes already give means.
    State: `occ_count`, `occ_occupied` (F,) and `occ_weight` (add them to `_state_keys`).
    """

    occ_alpha: float = 1.0 / 720.0  # ~8 h half-life: burstiness is a trait of the function, not of the hour

    def _occ_reset(self, n_functions: int) -> None:
        self.occ_count = np.zeros(n_functions)
        self.occ_occupied = np.zeros(n_functions)
        self.occ_weight = 0.0  # 1 - (1 - alpha)^n: the bias correction of a zero-started EWMA

    def _occ_update(self, counts: np.ndarray) -> None:
        a = self.occ_alpha
        self.occ_count += a * (counts - self.occ_count)
        self.occ_occupied += a * ((counts > 0) - self.occ_occupied)
        self.occ_weight += a * (1.0 - self.occ_weight)

    def clump_size(self) -> np.ndarray | float:
        if self.occ_weight <= 0.0:
            return 1.0
        mean = self.occ_count / self.occ_weight
        occ = np.clip(self.occ_occupied / self.occ_weight, 0.0, 1.0 - 1e-9)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = mean / -np.log1p(-occ)
        return np.where(occ > 0, np.maximum(s, 1.0), 1.0)


OCCUPANCY_STATE = ("occ_count", "occ_occupied", "occ_weight")


class RefitMixin:
    """Slow refits: a round every `refit_every` minutes, at most `max_fits_per_call` fits per update.

    A round starts once `first_fit` minutes have been seen and the previous round is done; its
    queue holds the eligible functions in index order and is consumed a few at a time, so the cost
    of the statsmodels fits is spread over ticks and bounded per tick (round-robin over functions).
    The history the fits need is a ring `history` (F, history_len) of float32 counts.
    State: `refit_queue`, `next_round`, `history`, `fits` (add them to `_state_keys`).
    """

    refit_every: int = 360
    first_fit: int = 120
    max_fits_per_call: int = 20
    history_len: int = 240

    def _refit_reset(self, n_functions: int) -> None:
        self.refit_queue = np.empty(0, np.int64)
        self.next_round = self.first_fit
        self.history = np.zeros((n_functions, self.history_len), np.float32)
        self.fits = 0

    def _push_history(self, counts: np.ndarray, n_seen: int) -> None:
        self.history[:, n_seen % self.history_len] = counts

    def _recent(self, minutes: int, n_seen: int, rows: np.ndarray | None = None) -> np.ndarray:
        """The last min(minutes, seen) minutes of the functions `rows` (all if None), oldest first, float64."""
        m = min(minutes, n_seen, self.history_len)
        cols = np.arange(n_seen - m, n_seen) % self.history_len
        data = self.history if rows is None else self.history[rows]
        return data[:, cols].astype(np.float64)

    def _due(self, n_seen: int) -> np.ndarray:
        """Functions to refit in this call (starting a round when one is due)."""
        if len(self.refit_queue) == 0 and n_seen >= self.next_round:
            self.refit_queue = self._start_round(n_seen).astype(np.int64)
            self.next_round = n_seen + self.refit_every
        batch, self.refit_queue = self.refit_queue[:self.max_fits_per_call], self.refit_queue[self.max_fits_per_call:]
        return batch

    def _start_round(self, n_seen: int) -> np.ndarray:
        """Indices of the functions to refit in the round starting now (and put the others on the fallback)."""
        raise NotImplementedError


REFIT_STATE = ("refit_queue", "next_round", "history", "fits")


class LastValueForecaster(Forecaster):
    """Baseline: the next minutes look like the last one (P(invoked) = 1 if the last minute had any)."""

    name = "last-value"
    _state_keys = ("last",)

    def _reset_state(self) -> None:
        self.last = np.zeros(self.n_functions)

    def _update(self, counts: np.ndarray) -> None:
        self.last = counts.copy()

    def _predict(self, horizon: int) -> np.ndarray:
        return np.repeat(self.last[:, None], horizon, axis=1)

    def prob_invoked(self, k: int) -> np.ndarray:
        check_steps(k, "k")
        return (self.last > 0).astype(np.float64)
