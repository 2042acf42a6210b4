"""Timer pools: a function whose bursts start at equal intervals (a timer trigger) gets its last bursts' pool
warm just before the next one is due.

A burst starts at a tick with arrivals after at least `QUIET_S` without any. When a function's last `INTERVALS`
intervals between burst starts agree within a tick, the next burst is due one interval after the last start. From
the tick before it to the tick after it, and once it has started until it reaches the pool or has risen as long as
the last bursts did, the function holds as many instances as the larger of its last two bursts needed at their peak.

Why a rule of its own: the forecaster predicts the next tick from the last ones, and a timer's next tick looks like
the quiet ones before it; hybrid's windows speak for one instance, and its idle-time histogram is dominated by the
gaps within a burst. Neither starts a pool ahead of a timer's burst, and a keep-alive long enough to outlive the
interval holds the whole pool for the whole interval, where this holds it about three ticks an interval.

State is per function and the rule reads only the tick's observation and `now`, so it runs the same in replay
and live.
"""

from __future__ import annotations

import numpy as np

from prewarmer.policies.base import pad

QUIET_S = 60.0  # a burst starts after this long without arrivals
INTERVALS = 2  # equal intervals between burst starts before the next is expected


class TimerPools:
    def __init__(self, n: int, tick_s: float, quiet_s: float = QUIET_S, intervals: int = INTERVALS) -> None:
        self.tick_s, self.quiet_s, self.intervals = tick_s, quiet_s, intervals
        self.starts = np.full((n, intervals + 1), np.nan)  # burst start times, newest first
        self.last_arrival = np.full(n, -np.inf)
        self.peak = np.zeros(n)  # peak in flight of the burst under way (or the last one), so far
        self.rise = np.zeros(n)  # from its start to the end of the tick that reached that peak
        self.done_peak = np.zeros((n, 2))  # the two bursts before it
        self.done_rise = np.zeros((n, 2))
        # What `due` reads, recomputed only where a burst starts: whether the function is a timer, when its
        # next burst is due, the pool it holds, and until when a burst under way is held while it rises.
        self.periodic = np.zeros(n, bool)
        self.next_at = np.full(n, np.nan)
        self.pool = np.ones(n)
        self.rise_end = np.full(n, -np.inf)

    def grow(self, n: int) -> None:
        self.starts, self.next_at = pad(self.starts, n, np.nan), pad(self.next_at, n, np.nan)
        self.last_arrival, self.rise_end = pad(self.last_arrival, n, -np.inf), pad(self.rise_end, n, -np.inf)
        self.peak, self.rise = pad(self.peak, n, 0.0), pad(self.rise, n, 0.0)
        self.done_peak, self.done_rise = pad(self.done_peak, n, 0.0), pad(self.done_rise, n, 0.0)
        self.periodic, self.pool = pad(self.periodic, n, False), pad(self.pool, n, 1.0)

    def update(self, now: float, dt: float, arrivals: np.ndarray, peak_in_flight: np.ndarray) -> None:
        """Record the tick [now - dt, now) that just ended."""
        begin = now - dt
        need = np.asarray(peak_in_flight, np.float64)
        active = np.asarray(arrivals) > 0
        started = np.flatnonzero(active & (begin - self.last_arrival >= self.quiet_s))
        if len(started):
            for a, latest in ((self.starts, begin), (self.done_peak, self.peak[started]),
                              (self.done_rise, self.rise[started])):
                a[started, 1:] = a[started, :-1]
                a[started, 0] = latest
            self._judge(started)
        higher = need > self.peak
        self.rise = np.where(higher, now - self.starts[:, 0], self.rise)
        self.peak = np.maximum(self.peak, need)
        self.rise[started] = dt
        self.peak[started] = need[started]
        self.last_arrival = np.where(active, now, self.last_arrival)

    def _judge(self, rows: np.ndarray) -> None:
        """Whether the functions `rows`, whose burst just started, are timers, and what `due` holds for them."""
        starts = self.starts[rows]
        gaps = -np.diff(starts, axis=1)  # NaN until enough bursts
        periodic = np.all(np.isfinite(gaps), axis=1)
        gaps = np.where(periodic[:, None], gaps, 0.0)
        periodic &= (gaps.max(axis=1) - gaps.min(axis=1) <= self.tick_s) & (gaps.min(axis=1) >= 2 * self.quiet_s)
        self.periodic[rows] = periodic
        self.next_at[rows] = starts[:, 0] + gaps.mean(axis=1)
        self.pool[rows] = np.maximum(self.done_peak[rows].max(axis=1), 1.0)
        self.rise_end[rows] = starts[:, 0] + self.done_rise[rows].max(axis=1)

    def due(self, now: float, dt: float) -> np.ndarray:
        """(F,) instances to hold during the tick [now, now + dt) for a timer's burst (0: none)."""
        before = (now >= self.next_at - dt) & (now <= self.next_at + dt)
        rising = (now < self.rise_end + dt) & (self.peak < self.pool)
        return np.where(self.periodic & (before | rising), self.pool, 0.0)
