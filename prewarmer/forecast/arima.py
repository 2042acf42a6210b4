"""ARIMA forecaster: ARMA(1,1) around a mean per function, fitted by statsmodels on a slow schedule.

Choices:
- Order (1,0,1) on the last `window` (240) minutes of each function: small enough to fit quickly
  and to estimate from a few hours, and it covers both persistence (AR) and smoothing (MA).
- Fit: `statsmodels.tsa.statespace.sarimax.SARIMAX` on the demeaned, standardised window
  (mean = the window mean), concentrated scale, no covariance matrix: same AR/MA estimates as
  `ARIMA(order=(1, 0, 1), trend="c")` at ~40 ms instead of ~150 ms per fit on this machine, with
  one BLAS thread (`single_thread_blas`; with OpenBLAS's own threads a fit took up to 0.9 s).
- Per tick, the ARMA recursion runs with the fitted coefficients for all functions at once:
  x = y - mu, e = x - xhat, xhat' = phi x + theta e; the h-step forecast is mu + phi^(h-1) xhat'.
  Measured alternative: `results.append(new, refit=False)` costs 3-5 ms per function per tick
  (seconds per tick for 1000 functions), so it is not used.
- Refit rounds every `refit_every` minutes, at most `max_fits_per_call` fits per update
  (round-robin), only for functions with at least `min_nonzero` invoked minutes in the window and
  a non-constant series.
- Fallback (never fitted, all-zero, sparse, constant or failed fits): a rate EWMA, written as the
  same recursion with mu = 0, phi = 1, theta = alpha - 1 (an IMA(1,1), which is exactly an EWMA).
  Fits run under `warnings.catch_warnings()` and any exception keeps the fallback.
- `prob_invoked` is Poisson on the expected counts with the function's long-run clump size.
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


class ArimaForecaster(OccupancyMixin, RefitMixin, Forecaster):
    name = "arima"
    _config_keys = ("window", "refit_every", "first_fit", "max_fits_per_call", "min_nonzero", "fallback_alpha")
    _state_keys = ("mu", "phi", "theta", "xhat", "fitted", *OCCUPANCY_STATE, *REFIT_STATE)

    def __init__(self, window: int = 240, refit_every: int = 360, first_fit: int = 120, max_fits_per_call: int = 8,
                 min_nonzero: int = 10, fallback_alpha: float = 0.1) -> None:
        self.window, self.refit_every, self.first_fit = int(window), int(refit_every), int(first_fit)
        self.max_fits_per_call, self.min_nonzero = int(max_fits_per_call), int(min_nonzero)
        self.fallback_alpha = float(fallback_alpha)
        self.reset(0)

    @property
    def history_len(self) -> int:  # type: ignore[override]
        return self.window

    def _reset_state(self) -> None:
        n = self.n_functions
        self.mu = np.zeros(n)
        self.phi = np.ones(n)
        self.theta = np.full(n, self.fallback_alpha - 1.0)
        self.xhat = np.zeros(n)  # next minute's forecast minus mu
        self.fitted = np.zeros(n, bool)
        self._occ_reset(n)
        self._refit_reset(n)

    def _update(self, counts: np.ndarray) -> None:
        x = counts - self.mu
        e = x - self.xhat
        self.xhat = self.phi * x + self.theta * e
        self._occ_update(counts)
        self._push_history(counts, self.n_seen)
        for f in self._due(self.n_seen + 1):
            self._fit(int(f))

    def _predict(self, horizon: int) -> np.ndarray:
        decay = self.phi[:, None] ** np.arange(horizon)[None, :]
        return self.mu[:, None] + decay * self.xhat[:, None]

    # ------------------------------------------------------------------ slow refits
    def _start_round(self, n_seen: int) -> np.ndarray:
        recent = self._recent(self.window, n_seen)
        eligible = ((recent > 0).sum(axis=1) >= self.min_nonzero) & (np.ptp(recent, axis=1) > 0)
        self._fallback(np.flatnonzero(~eligible & self.fitted))
        return np.flatnonzero(eligible)

    def _fallback(self, rows: np.ndarray) -> None:
        """Rate EWMA for these functions, starting from their current next-minute forecast."""
        if len(rows) == 0:
            return
        self.xhat[rows] = self.mu[rows] + self.xhat[rows]
        self.mu[rows], self.phi[rows], self.theta[rows] = 0.0, 1.0, self.fallback_alpha - 1.0
        self.fitted[rows] = False

    def _fit(self, f: int) -> None:
        y = self._recent(self.window, self.n_seen + 1, np.array([f]))[0]
        if (y > 0).sum() < self.min_nonzero or np.ptp(y) <= 0:
            self._fallback(np.array([f]))
            return
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        self.fits += 1
        mu, sd = float(y.mean()), float(y.std())
        with warnings.catch_warnings(), single_thread_blas():
            warnings.simplefilter("ignore")  # convergence and optimiser warnings: a poor fit is still a fit
            try:
                res = SARIMAX((y - mu) / sd, order=(1, 0, 1), trend="n", concentrate_scale=True).fit(
                    disp=False, cov_type="none")
                phi, theta = (float(v) for v in res.params[:2])
                nxt = float(res.forecast(1)[0]) * sd
            except Exception:  # statsmodels raises many types on degenerate data: keep the fallback
                self._fallback(np.array([f]))
                return
        if not (np.isfinite([phi, theta, nxt]).all() and abs(phi) < 1.0 and abs(theta) <= 1.0):
            self._fallback(np.array([f]))
            return
        self.mu[f], self.phi[f], self.theta[f], self.xhat[f] = mu, phi, theta, nxt
        self.fitted[f] = True
