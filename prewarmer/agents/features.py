"""Per-function feature vectors built from tick observations: the agents' view of the world.

One builder serves the simulator and the live sidecar: it only reads `Observation`s (one per
control tick) and keeps small rolling state per function, updated for all functions at once.
Local features describe the function (recent counts, idle time and its hazard, instances, its own
cold starts and waste, time of day/week, profile, the hybrid policy's current windows, the peak
forecaster's quantiles of the instances it needs next tick, how much history it has); two global
features summarize the platform (memory pressure, aggregate load). Features are scaled to roughly
[-1, 3] for the networks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from prewarmer.actions import Actions
from prewarmer.forecast.peak import TAUS
from prewarmer.observation import Observation
from prewarmer.policies.base import pad

HISTORY = 60  # ticks of per-tick counts kept per function
GAP_BINS = 241  # idle gaps in ticks: 0..239 and "240 or more"
# Gaps shorter than this are kept as cumulative counts in one cache line per function (16 int32): a busy
# function's hazard reads only those, and the full histogram (F x 241 x 8 bytes, 19 MB at 10k functions)
# cost a cache miss per function and per read.
HEAD_BINS = 16
# log1p of the integers below this, as numpy computes them: most counts in a tick are small, and a lookup
# is a tenth of the time of the libm call per value (`log1p_count`).
LOG1P_TABLE = 4096
_LOG1P_INTEGERS = np.log1p(np.arange(LOG1P_TABLE, dtype=np.float64))
HAZARD_K = (1, 5, 15)

FEATURE_NAMES = (
    "log_count_1", "log_rate_5", "log_rate_60", "idle_ticks", "hazard_1", "hazard_5", "hazard_15",
    "log_idle_warm", "log_busy", "log_starting", "cold_ewma", "waste_ewma", "tod_sin", "tod_cos", "dow_sin",
    "dow_cos", "log_memory_gb", "log_duration_s", "log_startup_s", "last_keep_alive", "hybrid_keep_alive",
    "hybrid_prewarm", "memory_pressure", "global_load", "log_rate_ewma", "log_peak_1", "log_peak_q50",
    "log_peak_q90", "log_peak_q98", "history_fill",
)
N_FEATURES = len(FEATURE_NAMES)
_PEAK_COLUMNS = [TAUS.index(t) for t in (0.5, 0.9, 0.98)]  # the forecast quantiles fed as features


class FeatureBuilder:
    """Rolling per-function state; `update(obs, keep_alive_s)` returns the (F, N_FEATURES) matrix."""

    def __init__(self, n_functions: int) -> None:
        n = n_functions
        self.n = n
        self.counts = np.zeros((n, HISTORY))
        self.k = 0
        self.idle_ticks = np.full(n, GAP_BINS - 1, np.int64)  # ticks since the last tick with arrivals
        # Gaps between ticks with arrivals, and their number (see `cum_gaps`): gaps of fewer than HEAD_BINS
        # ticks as cumulative counts (column b: gaps of at most b ticks), longer ones as a histogram.
        self.gap_head = np.zeros((n, HEAD_BINS), np.int32)
        self.gap_tail = np.zeros((n, GAP_BINS), np.int64)  # columns below HEAD_BINS stay 0
        self.n_gaps = np.zeros(n, np.int64)
        self.sum5 = np.zeros(n)
        self.sum60 = np.zeros(n)
        self.seen = np.zeros(n, bool)
        self.cold_ewma = np.zeros(n)
        self.waste_ewma = np.zeros(n)
        self.duration_ewma = np.full(n, np.nan)
        self.rate_ewma = np.zeros(n)  # arrivals per tick, smoothed over ~10 ticks (the teacher rule reads it)

    def grow(self, n: int) -> None:
        """Rows for functions appended to the table: nothing seen yet."""
        for name, fill in (("counts", 0.0), ("idle_ticks", GAP_BINS - 1), ("gap_head", 0), ("gap_tail", 0),
                           ("n_gaps", 0),
                           ("sum5", 0.0), ("sum60", 0.0), ("seen", False), ("cold_ewma", 0.0), ("waste_ewma", 0.0),
                           ("duration_ewma", np.nan), ("rate_ewma", 0.0)):
            setattr(self, name, pad(getattr(self, name), n, fill))
        self.n = n

    def __setstate__(self, state: dict) -> None:
        # A builder pickled (shard checkpoint) before the gaps were split into head and tail.
        if "gap_hist" in state:
            hist = state.pop("gap_hist")
            state["gap_head"] = np.cumsum(hist[:, :HEAD_BINS], axis=1).astype(np.int32)
            state["gap_tail"] = hist.copy()
            state["gap_tail"][:, :HEAD_BINS] = 0
        self.__dict__.update(state)

    @property
    def gap_hist(self) -> np.ndarray:
        """(F, GAP_BINS) histogram of the gaps: column g counts the gaps of g ticks."""
        hist = self.gap_tail.copy()
        hist[:, :HEAD_BINS] = np.diff(self.gap_head, axis=1, prepend=0)
        return hist

    @property
    def cum_gaps(self) -> np.ndarray:
        """(F, GAP_BINS) cumulative histogram of the gaps: column b counts the gaps of at most b ticks."""
        return np.cumsum(self.gap_hist, axis=1).astype(np.float64)

    def update(self, obs: Observation, keep_alive_s: np.ndarray | None = None,
               hybrid: Actions | None = None, peak_quantiles: np.ndarray | None = None) -> np.ndarray:
        """Fold in one tick; `peak_quantiles` (F, len(TAUS)) is the peak forecaster's answer for the next tick."""
        n = self.n
        arr = obs.arrivals.astype(np.float64)
        slot = self.k % HISTORY
        # Rolling sums: O(F) per tick instead of re-reading the history.
        self.sum60 += arr - self.counts[:, slot]
        self.sum5 += arr - (self.counts[:, (self.k - 5) % HISTORY] if self.k >= 5 else 0.0)
        self.counts[:, slot] = arr
        self.k += 1
        hit = arr > 0
        # A gap is the number of ticks between two ticks with arrivals (1 = consecutive ticks). The cumulative
        # histogram is updated only for functions invoked this tick, which are few in a large fleet.
        gap = np.minimum(self.idle_ticks + 1, GAP_BINS - 1)
        rows = np.flatnonzero(hit & self.seen)
        if len(rows):
            _count_gaps(self.gap_head, self.gap_tail, self.n_gaps, rows, gap)
        self.seen |= hit
        self.idle_ticks = np.where(hit, 0, np.minimum(self.idle_ticks + 1, GAP_BINS - 1))

        a = 0.1
        self.rate_ewma = (1 - a) * self.rate_ewma + a * arr
        self.cold_ewma = (1 - a) * self.cold_ewma + a * obs.cold_starts
        mem_gb = np.maximum(obs.memory_mb / 1024.0, 1e-3)
        self.waste_ewma = (1 - a) * self.waste_ewma + a * obs.wasted_gb_s / mem_gb / 60.0
        done = obs.completions > 0
        dur = np.where(done, obs.busy_gb_s / mem_gb / np.maximum(obs.completions, 1), np.nan)
        self.duration_ewma = np.where(done, np.where(np.isnan(self.duration_ewma), dur,
                                                     0.8 * np.nan_to_num(self.duration_ewma) + 0.2 * dur),
                                      self.duration_ewma)

        filled = min(self.k, HISTORY)
        f = np.empty((n, N_FEATURES), order="F")  # filled a column at a time
        f[:, 0] = log1p_count(obs.arrivals)
        f[:, 1] = np.log1p(np.maximum(self.sum5, 0.0) / min(self.k, 5))
        f[:, 2] = np.log1p(np.maximum(self.sum60, 0.0) / filled)
        f[:, 3] = log1p_count(self.idle_ticks) / np.log(GAP_BINS)
        f[:, 4:7] = self.hazard(HAZARD_K)
        f[:, 7] = log1p_count(obs.idle_warm)
        f[:, 8] = log1p_count(obs.busy)
        f[:, 9] = log1p_count(obs.starting)
        f[:, 10] = np.log1p(self.cold_ewma)
        f[:, 11] = np.log1p(self.waste_ewma)
        t = obs.epoch_s + obs.now
        day = 2 * np.pi * (t % 86400.0) / 86400.0
        week = 2 * np.pi * (t % (7 * 86400.0)) / (7 * 86400.0)
        f[:, 12], f[:, 13], f[:, 14], f[:, 15] = np.sin(day), np.cos(day), np.sin(week), np.cos(week)
        f[:, 16] = np.log(mem_gb)
        f[:, 17] = np.log1p(np.nan_to_num(self.duration_ewma, nan=1.0))
        startup = obs.startup_s if obs.startup_s is not None else np.ones(n)
        f[:, 18] = np.log(np.maximum(startup, 1e-3))
        f[:, 19] = 0.0 if keep_alive_s is None else np.log1p(np.minimum(keep_alive_s, 86400.0) / 60.0) / 4.0
        if hybrid is not None:  # the hybrid histogram's current windows for this function, in log-minutes
            f[:, 20] = np.log1p(np.minimum(hybrid.keep_alive_s, 86400.0) / 60.0) / 4.0
            f[:, 21] = np.log1p(hybrid.prewarm_delay_s / 60.0) / 4.0
        else:
            f[:, 20:22] = 0.0
        cap = obs.memory_cap_gb
        f[:, 22] = obs.memory_used_gb / cap if np.isfinite(cap) and cap > 0 else 0.0
        f[:, 23] = np.log1p(arr.sum()) / 10.0
        f[:, 24] = np.log1p(self.rate_ewma)
        f[:, 25] = log1p_count(obs.peak_in_flight)
        if peak_quantiles is not None:
            f[:, 26:29] = np.log1p(peak_quantiles[:, _PEAK_COLUMNS])
        else:
            f[:, 26:29] = 0.0
        f[:, 29] = min(self.k, HISTORY) / HISTORY  # how much of the rolling history is real (vs empty at start)
        return np.ascontiguousarray(f, dtype=np.float32)

    def hazard(self, ks: tuple[int, ...]) -> np.ndarray:
        """P(an arrival within the next k ticks | idle for m ticks so far), from each function's gaps.

        Functions with fewer than 3 gaps fall back to the recent rate (Poisson)."""
        m = self.idle_ticks
        # The cumulative histogram at m (gaps <= m: already ruled out) and at m + k: integer counts, so these are
        # the same float64 values as columns of `cum_gaps`.
        cum = _cumulative_at(self.gap_head, self.gap_tail, self.n_gaps, m, np.array((0, *ks), np.int64))
        total = self.n_gaps.astype(np.float64)
        below = cum[:, 0]
        survive = np.maximum(total - below, 0.0)
        filled = max(min(self.k, HISTORY), 1)
        few = np.flatnonzero(total < 3)  # too few gaps: the rate's answer (exp only where it is used)
        rate = np.maximum(self.sum60[few], 0.0) / filled
        out = np.empty((self.n, len(ks)))
        for j, k in enumerate(ks):
            within = cum[:, j + 1] - below
            out[:, j] = np.where(survive > 0, within / np.maximum(survive, 1e-9), 0.0)
            out[few, j] = 1.0 - np.exp(-rate * k)
        return out


def log1p_count(x: np.ndarray) -> np.ndarray:
    """`np.log1p(x)` (float64), by lookup where `x` holds integers in [0, LOG1P_TABLE): the table holds
    numpy's own values, so the result is the same to the bit either way."""
    x = np.asarray(x)
    if x.dtype.kind in "iu" and len(x) and x.min() >= 0 and x.max() < LOG1P_TABLE:
        return _LOG1P_INTEGERS[x]
    return np.log1p(x)


@njit(cache=True)
def _count_gaps(gap_head, gap_tail, n_gaps, rows, gap):
    """One more gap of `gap[r]` ticks for each row r of `rows`."""
    head = gap_head.shape[1]
    for r in rows:
        g = gap[r]
        if g < head:
            for b in range(g, head):
                gap_head[r, b] += 1
        else:
            gap_tail[r, g] += 1
        n_gaps[r] += 1


@njit(cache=True)
def _cumulative_at(gap_head, gap_tail, n_gaps, idle, ks):
    """(F, len(ks)) float64: for each row r, the number of its gaps of at most idle[r] + ks[j] ticks (the
    cumulative histogram there): from the head's cumulative counts, or the head's total plus the tail up to
    the bin, or all gaps less the tail above it, whichever reads fewer bins."""
    n, nb = gap_tail.shape
    head = gap_head.shape[1]
    out = np.empty((n, len(ks)))
    for r in range(n):
        for j in range(len(ks)):
            b = min(idle[r] + ks[j], nb - 1)
            if b >= nb - 1:
                c = n_gaps[r]
            elif b < head:
                c = np.int64(gap_head[r, b])
            elif 2 * b < nb + head:
                c = np.int64(gap_head[r, head - 1])
                for g in range(head, b + 1):
                    c += gap_tail[r, g]
            else:
                c = n_gaps[r]
                for g in range(b + 1, nb):
                    c -= gap_tail[r, g]
            out[r, j] = c
    return out
