"""A keep-alive per function priced by its memory: what hybrid's windows cost a rarely invoked function.

Hybrid keeps an instance 4 hours when a function's idle-time histogram is not representative, and up to
its 99th percentile × 1.1 otherwise: a window chosen for the cold starts alone. Priced at the agents'
idle price (cold starts per idle GB-minute), a window of K minutes costs a function, over the idle gaps
it has had, one cold start per gap longer than K plus the idle GB-minutes min(gap, K) × its memory.
`priced_keep_alive` gives each function the candidate window of least cost, so a large function idle
for hours between calls is not held for hours to save one cold start.
"""

from __future__ import annotations

import numpy as np

#: The windows a function's keep-alive may be cut to, in minutes.
CANDIDATES_MIN = np.array([5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 240.0])


def window_idle_s(gap_s: np.ndarray, prewarm_s: np.ndarray, keep_alive_s: np.ndarray) -> np.ndarray:
    """Seconds an instance idles over each idle gap under windows (prewarm p, keep-alive k): from p to
    min(gap, p + k), or to min(gap, k) without prewarm."""
    return np.where(prewarm_s > 0, np.where(gap_s >= prewarm_s, np.minimum(gap_s, prewarm_s + keep_alive_s) - prewarm_s,
                                            0.0), np.minimum(gap_s, keep_alive_s))


def priced_keep_alive(gap_hist: np.ndarray, memory_gb: np.ndarray, price: float, prewarm_s: np.ndarray | None = None,
                      min_gaps: int = 3) -> np.ndarray:
    """(F,) seconds: each function's least-cost keep-alive window, or +inf (no opinion) with fewer than
    `min_gaps` gaps seen.

    `gap_hist` (F, B): counts of gaps between ticks with arrivals, column g = g ticks (the last column:
    g or more); a gap of g one-minute ticks leaves the instance idle about g - 0.5 minutes. With a
    prewarm delay (`prewarm_s`, hybrid's), the window opens when the instance is prewarmed: gaps shorter
    than the delay are cold whatever the window, and idle time counts from the delay."""
    counts = gap_hist.astype(np.float64)
    n, bins = counts.shape
    idle_min = np.arange(bins) - 0.5
    idle_min[0] = 0.0
    cum_n = np.concatenate([np.zeros((n, 1)), np.cumsum(counts, axis=1)], axis=1)  # column c: gaps of < c ticks
    cum_idle = np.concatenate([np.zeros((n, 1)), np.cumsum(counts * idle_min, axis=1)], axis=1)
    total = cum_n[:, -1]
    delay = np.zeros(n) if prewarm_s is None else np.asarray(prewarm_s, np.float64) / 60.0
    # Gaps the window [delay, delay + K] catches: idle from delay to delay + K, i.e. ticks g with
    # delay <= g - 0.5 <= delay + K.
    lo = np.minimum(np.ceil(delay + 0.5).astype(np.int64), bins)[:, None]
    hi = np.minimum(np.floor(delay[:, None] + CANDIDATES_MIN[None, :] + 0.5).astype(np.int64) + 1, bins)
    rows = np.arange(n)[:, None]
    warm = cum_n[rows, hi] - cum_n[rows, lo]  # (F, candidates)
    warm_idle = cum_idle[rows, hi] - cum_idle[rows, lo] - warm * delay[:, None]
    longer = total[:, None] - cum_n[rows, hi]
    cold = total[:, None] - warm
    idle = warm_idle + longer * CANDIDATES_MIN[None, :]
    cost = cold + price * np.asarray(memory_gb, np.float64)[:, None] * idle
    best = CANDIDATES_MIN[cost.argmin(axis=1)] * 60.0
    return np.where(total >= min_gaps, best, np.inf)
