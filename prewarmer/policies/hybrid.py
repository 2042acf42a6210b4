"""Hybrid histogram policy of Shahrad et al. ("Serverless in the Wild", ATC'20), vectorized over apps.

Per app, a 4-hour histogram of idle times (1-minute bins; idle time = arrival minus the function's
last completion). Each tick every app gets its windows:
- representative histogram (bin-count CV >= 2): pre-warm window = 5th percentile x 0.9, keep-alive
  window = 99th percentile (upper bin edge) x 1.1, counted from the pre-warm load;
- not representative (CV < 2): no pre-warming, keep-alive = the histogram range (4 h);
- too many idle times beyond the range (>= 50%): ARIMA (statsmodels) forecasts the next idle time;
  pre-warm = forecast x 0.85, keep-alive = forecast x 0.15 x 2.
The paper's windows decide whether the *application* is loaded. On a platform that scales out, the
windows govern a function's last instance; scale-out instances beyond it idle no longer than the
platform default (10 min) and never longer than the window (`surplus_keep_alive_s`).
The parameters and the percentile convention follow the paper, as reimplemented in dslab-faas.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import njit

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.policies.base import Policy, pad
from prewarmer.prefetch import prefetch2
from prewarmer.workloads.base import FunctionTable


class HybridHistogramPolicy(Policy):
    def __init__(self, range_s: float = 4 * 3600.0, bin_s: float = 60.0, cv_threshold: float = 2.0,
                 oob_threshold: float = 0.5, head: float = 0.05, tail: float = 0.99, hist_margin: float = 0.1,
                 arima_margin: float = 0.15, arima_history: int = 64, arima_min_samples: int = 4,
                 surplus_keep_alive_s: float = 600.0, tick_s: float = 60.0) -> None:
        self.range_s, self.bin_s = range_s, bin_s
        self.n_bins = int(round(range_s / bin_s))
        self.cv_threshold, self.oob_threshold = cv_threshold, oob_threshold
        self.head, self.tail = head, tail
        self.hist_margin, self.arima_margin = hist_margin, arima_margin
        self.arima_history, self.arima_min_samples = arima_history, arima_min_samples
        self.surplus_keep_alive_s = surplus_keep_alive_s
        self.tick_s = tick_s
        self.spec = "hybrid"
        self.arima_fits = 0

    def reset(self, functions: FunctionTable, now: float) -> Actions:
        self.apps = np.asarray(functions.apps, np.int64)
        n_apps = int(self.apps.max()) + 1 if len(self.apps) else 0
        self.bins = np.zeros((n_apps, self.n_bins), np.int64)
        self.bin_sum = np.zeros(n_apps, np.int64)  # per app: sum of its bin counts, and of their squares
        self.bin_sq = np.zeros(n_apps, np.int64)
        self.oob = np.zeros(n_apps, np.int64)
        self.raw = np.zeros((n_apps, self.arima_history))  # ring buffer of recent idle times (s)
        self.raw_ptr = np.zeros(n_apps, np.int64)
        self.raw_n = np.zeros(n_apps, np.int64)
        self.forecast = np.full(n_apps, np.nan)  # ARIMA forecast (s), refreshed when new samples arrive
        self.keep_alive = np.full(n_apps, self.range_s)
        self.prewarm = np.zeros(n_apps)
        return self.current()

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        first = len(self.apps)
        self.apps = np.asarray(functions.apps, np.int64)
        n_apps = int(self.apps.max()) + 1 if len(self.apps) else 0
        self.bins = pad(self.bins, n_apps, 0)
        self.bin_sum = pad(self.bin_sum, n_apps, 0)
        self.bin_sq = pad(self.bin_sq, n_apps, 0)
        self.oob = pad(self.oob, n_apps, 0)
        self.raw = pad(self.raw, n_apps, 0.0)
        self.raw_ptr = pad(self.raw_ptr, n_apps, 0)
        self.raw_n = pad(self.raw_n, n_apps, 0)
        self.forecast = pad(self.forecast, n_apps, np.nan)
        self.keep_alive = pad(self.keep_alive, n_apps, self.range_s)
        self.prewarm = pad(self.prewarm, n_apps, 0.0)
        return self.current().only_from(first)

    def current(self) -> Actions:
        """The windows every function has now, as settings."""
        keep = self.keep_alive[self.apps]
        return Actions(keep_alive_s=keep, surplus_keep_alive_s=np.minimum(keep, self.surplus_keep_alive_s),
                       prewarm_delay_s=self.prewarm[self.apps])

    # ------------------------------------------------------------------ histogram upkeep
    def observe_idle_times(self, func: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """Add idle-time samples; returns a mask of the apps that received any."""
        app = self.apps[func]
        seconds = np.asarray(seconds, np.float64)
        b = np.floor(seconds / self.bin_s).astype(np.int64)
        touched = np.zeros(len(self.oob), bool)
        _add_idle_times(self.bins, self.bin_sum, self.bin_sq, self.oob, self.raw, self.raw_ptr, self.raw_n, touched,
                        app, b, seconds)
        return touched

    def _remember(self, app: np.ndarray, seconds: np.ndarray) -> None:
        """Keep the last `arima_history` idle times per app (a ring buffer per app)."""
        _remember(self.raw, self.raw_ptr, self.raw_n, np.asarray(app, np.int64), np.asarray(seconds, np.float64))

    def history(self, app: int) -> np.ndarray:
        """The app's remembered idle times, oldest first."""
        n, p = int(self.raw_n[app]), int(self.raw_ptr[app])
        ring = np.roll(self.raw[app], -p)
        return ring[self.arima_history - n:]

    # ------------------------------------------------------------------ windows
    def windows(self, apps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pre-warm s, keep-alive s, pattern) for the apps; pattern 0 uncertain, 1 histogram, 2 ARIMA."""
        idx = np.arange(len(self.oob)) if apps is None else np.asarray(apps, np.int64)
        # The bin-count CV from the sums kept as samples come in, the same as numpy's std over the bins up to
        # rounding: rows within rounding of the threshold get numpy's own (`_cv`), as before. The percentile bins
        # from the cumulative counts, exactly as before (`_percentile_bins`).
        total = self.bin_sum[idx].astype(np.float64)
        mean = total / self.n_bins
        sq = self.bin_sq[idx].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            cv = np.where(mean > 0, np.sqrt(np.maximum(sq - total * mean, 0.0) / (self.n_bins - 1)) / mean, 0.0)
        near = (mean > 0) & ((np.abs(cv - self.cv_threshold) <= 1e-9 * max(self.cv_threshold, 1.0)) | (sq >= 2.0 ** 52))
        if near.any():
            cv[near] = _cv(self.bins[idx[near]], mean[near])
        head_bin, tail_bin = _percentile_bins(self.bins, idx, self.bin_sum, self.head - 1e-12, self.tail - 1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            oob_rate = np.where(total + self.oob[idx] > 0, self.oob[idx] / (total + self.oob[idx]), 0.0)
        cv = np.where(mean > 0, cv, 0.0)
        prewarm = head_bin * self.bin_s * (1.0 - self.hist_margin)
        keep = (tail_bin + 1) * self.bin_s * (1.0 + self.hist_margin)
        pattern = np.where(oob_rate >= self.oob_threshold, 2, np.where(cv < self.cv_threshold, 0, 1))
        prewarm = np.where(pattern == 0, 0.0, prewarm)
        keep = np.where(pattern == 0, self.range_s, keep)
        arima = pattern == 2
        if arima.any():
            prewarm[arima], keep[arima] = self._arima_windows(self.forecast[idx[arima]])
        return prewarm, keep, pattern

    def _arima_windows(self, forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return forecast * (1.0 - self.arima_margin), forecast * self.arima_margin * 2.0

    def _refresh_forecasts(self, apps: np.ndarray) -> None:
        for a in apps:
            self.forecast[a] = self.arima_forecast(self.history(int(a)))

    def arima_forecast(self, series: np.ndarray) -> float:
        """Next idle time by ARIMA(1,0,1); short or degenerate series use their mean."""
        if len(series) == 0:
            return self.range_s
        if len(series) < self.arima_min_samples or np.ptp(series) < 1e-6:
            return float(series.mean())
        from statsmodels.tools.sm_exceptions import ConvergenceWarning
        from statsmodels.tsa.arima.model import ARIMA

        from prewarmer.forecast.base import single_thread_blas

        self.arima_fits += 1
        with warnings.catch_warnings(), single_thread_blas():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                fit = ARIMA(series, order=(1, 0, 1)).fit()
                value = float(fit.forecast(1)[0])
            except Exception:  # statsmodels raises many types on degenerate data: fall back, never crash
                value = float(series.mean())
        if not np.isfinite(value) or value <= 0:
            value = float(series.mean())
        return value

    def decide(self, now: float, obs: Observation) -> Actions:
        touched = self.observe_idle_times(obs.idle_time_func, obs.idle_time_s)
        if touched.any():
            apps = np.flatnonzero(touched)
            pre, keep, pattern = self.windows(apps)
            arima = pattern == 2
            if arima.any():  # their windows need the forecast refreshed with this tick's idle times
                self._refresh_forecasts(apps[arima])
                pre[arima], keep[arima] = self._arima_windows(self.forecast[apps[arima]])
            self.prewarm[apps], self.keep_alive[apps] = pre, keep
        return self.current()

    def describe(self) -> dict:
        return {"spec": self.spec, "range_s": self.range_s, "bin_s": self.bin_s,
                "cv_threshold": self.cv_threshold, "oob_threshold": self.oob_threshold, "head": self.head,
                "tail": self.tail, "hist_margin": self.hist_margin, "arima_margin": self.arima_margin,
                "arima": f"statsmodels ARIMA(1,0,1) on the last {self.arima_history} idle times",
                "surplus_keep_alive_s": self.surplus_keep_alive_s, "tick_s": self.tick_s}


def _cv(bins: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Bin-count coefficient of variation of histogram rows, computed by numpy (the reference)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, bins.astype(np.float64).std(axis=1, ddof=1) / mean, 0.0)


@njit(cache=True)
def _percentile_bins(bins, rows, bin_sum, head, tail):
    """Per histogram row in `rows`: the first bin whose cumulative share of the row's count reaches `head`, and
    the same for `tail` (what numpy's argmax(cumsum / max(total, 1) >= q) gives: counts are integers, so the
    cumulative sums are exact in float64 and the shares are the same divisions; a share never reached gives
    bin 0, as argmax of an all-False row does). Stops at the later of the two."""
    k, nb = len(rows), bins.shape[1]
    head_bin = np.zeros(k, np.int64)
    tail_bin = np.zeros(k, np.int64)
    for j in range(k):
        r = rows[j]
        if bin_sum[r] == 0:
            continue
        denom = max(float(bin_sum[r]), 1.0)
        c = 0
        h = t = -1
        for i in range(nb):
            c += bins[r, i]
            share = float(c) / denom
            if h < 0 and share >= head:
                h = i
            if t < 0 and share >= tail:
                t = i
            if h >= 0 and t >= 0:
                break
        head_bin[j] = max(h, 0)
        tail_bin[j] = max(t, 0)
    return head_bin, tail_bin


# Samples ahead whose histogram cell and ring slot are prefetched: with thousands of apps in random order each
# sample's cell is a cache miss (the histograms are 240 bins x 8 bytes per app).
PREFETCH_AHEAD = 16


@njit(cache=True)
def _remember(raw, raw_ptr, raw_n, app, seconds):
    """Append each sample, in order, to its app's ring buffer of the last raw.shape[1] idle times."""
    h = raw.shape[1]
    for j in range(len(app)):
        if j + PREFETCH_AHEAD < len(app):
            ahead = app[j + PREFETCH_AHEAD]
            prefetch2(raw, ahead, raw_ptr[ahead])
        a = app[j]
        p = raw_ptr[a]
        raw[a, p] = seconds[j]
        raw_ptr[a] = (p + 1) % h
        if raw_n[a] < h:
            raw_n[a] += 1


@njit(cache=True)
def _add_idle_times(bins, bin_sum, bin_sq, oob, raw, raw_ptr, raw_n, touched, app, b, seconds):
    """Idle-time samples (app, bin b, seconds) into the histograms and their sums (bin >= the range: out of
    bounds), the ring buffers, and the mask of apps touched."""
    nb = bins.shape[1]
    for j in range(len(app)):
        if j + PREFETCH_AHEAD < len(app) and b[j + PREFETCH_AHEAD] < nb:
            prefetch2(bins, app[j + PREFETCH_AHEAD], b[j + PREFETCH_AHEAD])
        a = app[j]
        if b[j] < nb:
            c = bins[a, b[j]]
            bins[a, b[j]] = c + 1
            bin_sum[a] += 1
            bin_sq[a] += 2 * c + 1
        else:
            oob[a] += 1
        touched[a] = True
    _remember(raw, raw_ptr, raw_n, app, seconds)
