"""Idle-gap histogram forecaster: the hybrid policy's idle-time histogram, read as a renewal process.

Per function: a histogram of the gaps (in minutes) between consecutive minutes that had
invocations (gap 1 = two invoked minutes in a row; 1-minute bins over 4 h plus an out-of-range
counter), the minutes elapsed since the last invoked minute `m`, and EWMAs of the count, of the
count in invoked minutes (the burst size) and of the occupancy (P(a minute is invoked)).

- `prob_invoked(k)` = P(gap <= m + k | gap > m): the hazard given the time already idle. It falls
  back to the occupancy rate, 1 - (1 - occupancy)^k, when the histogram has fewer than 3 gaps,
  when the function has been idle longer than every recorded gap or beyond the histogram range.
- `predict(h)`: P(minute j is invoked) from the renewal equation (first invocation at j from the
  hazard, later ones through the unconditional gap distribution) times the burst size; the same
  fallback uses the EWMA rate.

Everything is a (F,) or (F, bins) array; the histogram is kept cumulative, `cum[f, g]` = number of
gaps <= g minutes, so every conditional probability is two gathers and a division.
"""

from __future__ import annotations

import numpy as np

from prewarmer.forecast.base import Forecaster, check_steps


class IdleHistogramForecaster(Forecaster):
    name = "histogram"
    _config_keys = ("n_bins", "min_samples", "rate_alpha", "size_alpha")
    _state_keys = ("cum", "oob", "since", "seen", "rate", "occupancy", "size")

    def __init__(self, n_bins: int = 240, min_samples: int = 3, rate_alpha: float = 0.1,
                 size_alpha: float = 0.3) -> None:
        self.n_bins = check_steps(n_bins, "n_bins")  # 1-minute bins: 240 = the hybrid policy's 4 h range
        self.min_samples = int(min_samples)
        self.rate_alpha = float(rate_alpha)
        self.size_alpha = float(size_alpha)  # burst size follows load changes faster than the rate fallback
        self.reset(0)

    def _reset_state(self) -> None:
        n = self.n_functions
        self.cum = np.zeros((n, self.n_bins + 1), np.int64)  # cum[:, 0] = 0: no gap is <= 0 minutes
        self.oob = np.zeros(n, np.int64)
        self.since = np.zeros(n, np.int64)  # minutes since the last invoked minute (0: the last minute was)
        self.seen = np.zeros(n, bool)
        self.rate = np.zeros(n)
        self.occupancy = np.zeros(n)
        self.size = np.zeros(n)  # mean count of an invoked minute

    def _update(self, counts: np.ndarray) -> None:
        invoked = counts > 0
        ended = invoked & self.seen  # a gap ends only if there was an earlier invoked minute
        if ended.any():
            rows = np.flatnonzero(ended)
            gap = self.since[rows] + 1
            inside = gap <= self.n_bins
            r_in, g_in = rows[inside], gap[inside]
            self.cum[r_in] += np.arange(self.n_bins + 1)[None, :] >= g_in[:, None]
            np.add.at(self.oob, rows[~inside], 1)
        first = invoked & ~self.seen
        self.size = np.where(first, counts, np.where(invoked, self.size + self.size_alpha * (counts - self.size),
                                                     self.size))
        self.since = np.where(invoked, 0, self.since + 1)
        self.seen |= invoked
        self.rate += self.rate_alpha * (counts - self.rate)
        self.occupancy += self.rate_alpha * (invoked - self.occupancy)

    # ------------------------------------------------------------------ the hazard
    def _conditional(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(usable, idle minutes m clipped to the range, number of gaps > m) per function."""
        total = self.cum[:, -1] + self.oob
        m = np.minimum(self.since, self.n_bins)
        survivors = total - np.take_along_axis(self.cum, m[:, None], axis=1)[:, 0]
        # Beyond the range, or idle longer than every gap seen, the histogram says nothing useful.
        usable = self.seen & (total >= self.min_samples) & (self.since < self.n_bins) & (survivors > 0)
        return usable, m, survivors

    def prob_invoked(self, k: int) -> np.ndarray:
        k = check_steps(k, "k")
        usable, m, survivors = self._conditional()
        hi = np.minimum(m + k, self.n_bins)
        within = (np.take_along_axis(self.cum, hi[:, None], axis=1)[:, 0]
                  - np.take_along_axis(self.cum, m[:, None], axis=1)[:, 0])
        hist = within / np.maximum(survivors, 1)
        fallback = -np.expm1(k * np.log1p(-np.clip(self.occupancy, 0.0, 1.0 - 1e-12)))
        return np.clip(np.where(usable, hist, fallback), 0.0, 1.0)

    def _predict(self, horizon: int) -> np.ndarray:
        usable, m, survivors = self._conditional()
        total = np.maximum(self.cum[:, -1] + self.oob, 1)
        steps = np.arange(1, horizon + 1)
        # First invocation exactly j minutes ahead: gap = m + j given gap > m.
        hi = np.minimum(m[:, None] + steps[None, :], self.n_bins)
        cum_hi = np.take_along_axis(self.cum, hi, axis=1)
        cum_lo = np.concatenate([np.take_along_axis(self.cum, m[:, None], axis=1), cum_hi[:, :-1]], axis=1)
        first = (cum_hi - cum_lo) / np.maximum(survivors, 1)[:, None]
        # Unconditional gap pmf for gaps 1..horizon (later invocations after the first one).
        g = np.minimum(steps, self.n_bins)
        pmf = (self.cum[:, g] - self.cum[:, g - 1]) / total[:, None]
        u = np.empty_like(first)
        for j in range(horizon):  # renewal equation; the loop is over the horizon, never over functions
            u[:, j] = first[:, j] + np.einsum("fi,fi->f", u[:, :j], pmf[:, j - 1::-1][:, :j]) if j else first[:, 0]
        hist = u * self.size[:, None]
        return np.where(usable[:, None], hist, self.rate[:, None])
