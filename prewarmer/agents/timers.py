"""Timer pools: a function whose bursts start at equal intervals (a timer trigger) gets its last burst's pool
warm just before the next one is due.

A burst starts at a tick with arrivals after at least `QUIET_S` without any. When a function's last `INTERVALS`
intervals between burst starts agree within a tick, the next burst is due one interval after the last start;
from a tick before it until a tick after it, and once it has started until it reaches the pool or has risen as long
as the last bursts did, the function holds as many instances as the larger of the last two bursts needed at its
peak. Neither the forecaster (which predicts the next tick from the last ones, and a
timer's next tick looks like the quiet ones) nor hybrid's windows (which speak for one instance, and whose
idle-time histogram is dominated by the gaps within a burst) start a pool ahead of a timer's burst; a
keep-alive long enough to outlive the interval holds the whole pool the whole interval. This holds it for
about three ticks an interval.

State is per function and the rule reads only the tick's observation and `now`, so it runs the same in replay
and live.
"""

from __future__ import annotations

import numpy as np

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

    def grow(self, n: int) -> None:
        m = len(self.peak)
        self.starts = np.concatenate([self.starts, np.full((n - m, self.intervals + 1), np.nan)])
        self.last_arrival = np.concatenate([self.last_arrival, np.full(n - m, -np.inf)])
        self.peak, self.rise = (np.concatenate([a, np.zeros(n - m)]) for a in (self.peak, self.rise))
        self.done_peak, self.done_rise = (np.concatenate([a, np.zeros((n - m, 2))]) for a in (self.done_peak,
                                                                                               self.done_rise))

    def update(self, now: float, dt: float, arrivals: np.ndarray, peak_in_flight: np.ndarray) -> None:
        """Record the tick [now - dt, now) that just ended."""
        begin = now - dt
        need = np.asarray(peak_in_flight, np.float64)
        active = np.asarray(arrivals) > 0
        start = active & (begin - self.last_arrival >= self.quiet_s)
        for a, latest in ((self.starts, begin), (self.done_peak, self.peak), (self.done_rise, self.rise)):
            a[start] = np.roll(a[start], 1, axis=1)
            a[start, 0] = latest[start] if isinstance(latest, np.ndarray) else latest
        higher = need > self.peak
        self.rise = np.where(start, dt, np.where(higher, now - self.starts[:, 0], self.rise))
        self.peak = np.where(start, need, np.maximum(self.peak, need))
        self.last_arrival = np.where(active, now, self.last_arrival)

    def due(self, now: float, dt: float) -> np.ndarray:
        """(F,) instances to hold during the tick [now, now + dt) for a timer's burst (0: none)."""
        gaps = -np.diff(self.starts, axis=1)  # (F, intervals), NaN until enough bursts
        periodic = np.all(np.isfinite(gaps), axis=1)
        gaps = np.where(periodic[:, None], gaps, 0.0)
        periodic &= (gaps.max(axis=1) - gaps.min(axis=1) <= dt) & (gaps.min(axis=1) >= 2 * self.quiet_s)
        pool = np.maximum(self.done_peak.max(axis=1), 1.0)
        nxt = self.starts[:, 0] + gaps.mean(axis=1)
        before = (now >= nxt - dt) & (now <= nxt + dt)
        rising = (now < self.starts[:, 0] + self.done_rise.max(axis=1) + dt) & (self.peak < pool)
        return np.where(periodic & (before | rising), pool, 0.0)
