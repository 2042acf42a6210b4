"""Counter samples on a time grid into per-minute increments, and histogram buckets into quantiles.

A range query evaluated every `step` seconds gives each series' latest sample at or before each grid
point (or nothing). Increments follow Prometheus' counter rules: a value below the previous one is a
counter reset, after which the counter counted up from 0, so the increment is the new value. A series
first seen after the first grid point at which Prometheus had any data (`first_data`) was created
during the range and counted from 0 (a new pod, a gateway started later, a label value seen for the
first time); a series present from that point on had a history before the range, so its first value
is the baseline. The grid is anchored at the range start and `step` divides 60, so the increment
observed at grid point k (for the interval ending there) belongs to minute (k - 1) // (60 / step): an
invocation is counted in the minute in which Prometheus scraped it.
"""

from __future__ import annotations

import numpy as np

from prewarmer.workloads.base import DURATION_QUANTILES


def grid_matrix(series_t: list[list[float]], series_v: list[list[float]], start: float, step: float,
                n_points: int) -> np.ndarray:
    """(series, n_points) values on the grid start + k * step; NaN where a series has no sample."""
    out = np.full((len(series_t), n_points), np.nan)
    for i, (t, v) in enumerate(zip(series_t, series_v, strict=True)):
        if not t:
            continue
        k = np.rint((np.asarray(t) - start) / step).astype(np.int64)
        ok = (k >= 0) & (k < n_points)
        out[i, k[ok]] = np.asarray(v, np.float64)[ok]
    return out


def first_point(values: np.ndarray) -> np.ndarray:
    """Index of each series' first sample on the grid (n_points if it has none)."""
    present = ~np.isnan(values)
    return np.where(present.any(axis=1), present.argmax(axis=1), values.shape[1])


def increments(values: np.ndarray, first_data: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per grid point increase of each counter series (0 where it has no sample), with the number of
    counter resets seen in each series and whether each was created in the range.

    Between two samples (gaps skipped) the increase is the difference, or the new value after a reset.
    A series whose first sample comes after grid point `first_data` started at 0 at its creation.
    """
    s, n = values.shape
    present = ~np.isnan(values)
    pos = np.where(present, np.arange(n), -1)
    last = np.maximum.accumulate(pos, axis=1)  # latest sample at or before each point
    prev = np.concatenate([np.full((s, 1), -1), last[:, :-1]], axis=1)  # latest strictly before
    prev_v = np.take_along_axis(values, np.maximum(prev, 0), axis=1)
    both = present & (prev >= 0)
    v = np.nan_to_num(values)
    pv = np.nan_to_num(prev_v)
    reset = both & (v < pv)
    inc = np.where(both, np.where(reset, v, v - pv), 0.0)
    first = first_point(values)
    born = (first < n) & (first > first_data)
    rows = np.flatnonzero(born)
    inc[rows, first[rows]] = v[rows, first[rows]]
    return inc, reset.sum(axis=1), born


def per_minute(inc: np.ndarray, step: float, minutes: int) -> np.ndarray:
    """(series, minutes) sums of the increments of grid points 1..minutes * 60 / step."""
    per = int(round(60.0 / step))
    body = inc[:, 1:1 + minutes * per]
    if body.shape[1] < minutes * per:
        body = np.pad(body, ((0, 0), (0, minutes * per - body.shape[1])))
    return body.reshape(inc.shape[0], minutes, per).sum(axis=2)


def group_rows(rows: np.ndarray, keys: list[str]) -> tuple[list[str], np.ndarray]:
    """Sum rows that share a key; returns the keys in first-seen order and the summed rows."""
    names = list(dict.fromkeys(keys))
    index = {k: i for i, k in enumerate(names)}
    out = np.zeros((len(names),) + rows.shape[1:])
    np.add.at(out, np.array([index[k] for k in keys], np.int64), rows)
    return names, out


def integer_counts(per_min: np.ndarray) -> np.ndarray:
    """Whole invocations per minute whose running total follows the (possibly fractional) running total."""
    cum = np.rint(np.cumsum(per_min, axis=1))
    counts = np.diff(cum, axis=1, prepend=0.0)
    return np.maximum(counts, 0).astype(np.int64)


def histogram_percentiles_ms(bounds: np.ndarray, cumulative: np.ndarray, unit_s: float) -> np.ndarray | None:
    """Duration percentiles (ms) at DURATION_QUANTILES from one function's cumulative bucket counts.

    `bounds` are the `le` upper bounds in increasing order (+Inf last, as Prometheus exports them),
    `cumulative` the observations at or below each. Linear inside a bucket, as `histogram_quantile`;
    the +Inf bucket is capped at the highest finite bound. None without observations.
    """
    bounds = np.asarray(bounds, np.float64)
    cum = np.maximum.accumulate(np.maximum(np.asarray(cumulative, np.float64), 0.0))
    total = cum[-1] if len(cum) else 0.0
    if total <= 0:
        return None
    finite = bounds[np.isfinite(bounds)]
    top = finite[-1] if len(finite) else 1.0
    upper = np.where(np.isfinite(bounds), bounds, top)
    lower = np.concatenate([[0.0], upper[:-1]])
    below = np.concatenate([[0.0], cum[:-1]])
    out = np.empty(len(DURATION_QUANTILES))
    for j, q in enumerate(DURATION_QUANTILES):
        rank = max(q * total, 1e-9)
        b = int(np.searchsorted(cum, rank, side="left"))
        b = min(b, len(cum) - 1)
        inside = cum[b] - below[b]
        frac = (rank - below[b]) / inside if inside > 0 else 1.0
        out[j] = lower[b] + frac * (upper[b] - lower[b])
    return np.maximum.accumulate(out) * unit_s * 1000.0
