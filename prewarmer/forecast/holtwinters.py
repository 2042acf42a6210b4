"""Holt-Winters forecaster: trend-free exponential smoothing, parameters fitted by statsmodels on a slow schedule.

Choices:
- No trend: invocation counts are level shifts and bursts; an extrapolated trend overshoots and a
  damped one adds a parameter that the short, noisy per-minute series cannot pin down.
- Additive daily season (1440 minutes) only for a function with at least two full seasons of
  history (2880 minutes), else simple exponential smoothing (SES). A 60-minute season is not used by
  default: the Azure per-minute series show daily rather than hourly patterns, and a season
  estimated from a few hours mostly memorises noise. `season` is configurable (tests use 60). On
  a one-day trace the daily season therefore never engages: every function runs SES.
- Fits: `statsmodels.tsa.holtwinters.ExponentialSmoothing` on the last `fit_window` minutes (SES,
  estimated initial level) or the last two seasons (seasonal, heuristic initialisation: estimating
  1440 initial seasonal states by optimisation is far too slow). Rounds every `refit_every`
  minutes, at most `max_fits_per_call` fits per update (round-robin), only for functions with at
  least `min_nonzero` invoked minutes in the window and a non-constant series. 10-20 ms per SES fit
  (with one BLAS thread, see `single_thread_blas`).
- Per tick, the recursions run with the fitted parameters for all functions at once:
  level = a (y - s_old) + (1 - a) level_prev; s_new = g (y - level_prev) + (1 - g) s_old (the
  statsmodels update), with s = 0 and g = 0 for non-seasonal functions.
- Fallback (never fitted, all-zero, sparse, constant or failed fits): SES with `fallback_alpha`,
  i.e. a rate EWMA. Fits run under `warnings.catch_warnings()` and any exception keeps the fallback.
- `prob_invoked` is Poisson on the expected counts with the function's long-run clump size
  (see `OccupancyMixin`), since one busy minute of 50 invocations is one chance of being invoked.
"""

from __future__ import annotations

import warnings

import numpy as np

from prewarmer.forecast.base import (
    OCCUPANCY_STATE,
    REFIT_STATE,
    Forecaster,
    OccupancyMixin,
    RefitMixin,
    single_thread_blas,
)


class HoltWintersForecaster(OccupancyMixin, RefitMixin, Forecaster):
    name = "holt-winters"
    _config_keys = ("season", "fit_window", "refit_every", "first_fit", "max_fits_per_call", "min_nonzero",
                    "fallback_alpha")
    _state_keys = ("level", "alpha", "gamma", "seasonal", "season_state", *OCCUPANCY_STATE, *REFIT_STATE)

    def __init__(self, season: int = 1440, fit_window: int = 720, refit_every: int = 360, first_fit: int = 120,
                 max_fits_per_call: int = 25, min_nonzero: int = 10, fallback_alpha: float = 0.1) -> None:
        self.season, self.fit_window = int(season), int(fit_window)
        self.refit_every, self.first_fit = int(refit_every), int(first_fit)
        self.max_fits_per_call = int(max_fits_per_call)
        self.min_nonzero, self.fallback_alpha = int(min_nonzero), float(fallback_alpha)
        self.reset(0)

    @property
    def history_len(self) -> int:  # type: ignore[override]
        return max(self.fit_window, 2 * self.season)

    def _reset_state(self) -> None:
        n = self.n_functions
        self.level = np.zeros(n)
        self.alpha = np.full(n, self.fallback_alpha)
        self.gamma = np.zeros(n)
        self.seasonal = np.zeros(n, bool)
        # (F, season) only once some function is seasonal: a day of float64 per function is 11 kB.
        self.season_state: np.ndarray | None = None
        self._occ_reset(n)
        self._refit_reset(n)

    def _update(self, counts: np.ndarray) -> None:
        col = self.minute % self.season
        s_old = self.season_state[:, col] if self.season_state is not None else 0.0
        prev = self.level
        self.level = self.alpha * (counts - s_old) + (1.0 - self.alpha) * prev
        if self.season_state is not None:
            self.season_state[:, col] = self.gamma * (counts - prev) + (1.0 - self.gamma) * s_old
        self._occ_update(counts)
        self._push_history(counts, self.n_seen)
        for f in self._due(self.n_seen + 1):
            self._fit(int(f))

    def _predict(self, horizon: int) -> np.ndarray:
        out = np.repeat(self.level[:, None], horizon, axis=1)
        if self.season_state is not None:
            cols = (self.minute + np.arange(horizon)) % self.season
            out += self.season_state[:, cols]
        return out

    # ------------------------------------------------------------------ slow refits
    def _start_round(self, n_seen: int) -> np.ndarray:
        recent = self._recent(self.history_len, n_seen)
        eligible = ((recent[:, -self.fit_window:] > 0).sum(axis=1) >= self.min_nonzero) & (np.ptp(recent, axis=1) > 0)
        self._fallback(np.flatnonzero(~eligible))
        return np.flatnonzero(eligible)

    def _fallback(self, rows: np.ndarray) -> None:
        """Plain rate EWMA for these functions; the level keeps its value so forecasts stay continuous."""
        if len(rows) == 0:
            return
        if self.season_state is not None:
            self.level[rows] += self.season_state[rows, (self.minute + 1) % self.season]
            self.season_state[rows] = 0.0
        self.alpha[rows], self.gamma[rows], self.seasonal[rows] = self.fallback_alpha, 0.0, False

    def _fit(self, f: int) -> None:
        # Called after the minute was observed: the history ends at absolute minute self.minute.
        n_seen = self.n_seen + 1
        seasonal = n_seen >= 2 * self.season
        y = self._recent(2 * self.season if seasonal else self.fit_window, n_seen, np.array([f]))[0]
        if (y > 0).sum() < self.min_nonzero or np.ptp(y) <= 0:
            self._fallback(np.array([f]))
            return
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        self.fits += 1
        with warnings.catch_warnings(), single_thread_blas():
            warnings.simplefilter("ignore")  # convergence and optimiser warnings: a poor fit is still a fit
            try:
                if seasonal:
                    res = ExponentialSmoothing(y, trend=None, seasonal="add", seasonal_periods=self.season,
                                               initialization_method="heuristic").fit()
                else:
                    res = ExponentialSmoothing(y, trend=None, seasonal=None, initialization_method="estimated").fit()
                alpha = float(res.params["smoothing_level"])
                gamma = float(res.params["smoothing_seasonal"]) if seasonal else 0.0
                level = float(res.level[-1])
                season = np.asarray(res.season[-self.season:], np.float64) if seasonal else None
            except Exception:  # statsmodels raises many types on degenerate data: keep the fallback
                self._fallback(np.array([f]))
                return
        ok = np.isfinite([alpha, gamma, level]).all() and 0 <= alpha <= 1 and 0 <= gamma <= 1
        if season is not None:
            ok = ok and bool(np.isfinite(season).all())
        if not ok:
            self._fallback(np.array([f]))
            return
        self.alpha[f], self.gamma[f], self.level[f] = alpha, gamma, level
        if season is not None:
            if self.season_state is None:
                self.season_state = np.zeros((self.n_functions, self.season))
            # res.season[i] was updated by observation i; the last one is absolute minute self.minute.
            cols = (self.minute - self.season + 1 + np.arange(self.season)) % self.season
            self.season_state[f, cols] = season
            self.seasonal[f] = True
        elif self.season_state is not None:
            self.season_state[f] = 0.0
            self.seasonal[f] = False
