"""Open-loop timing, free of Locust and gevent so that it can be tested with a fake clock.

Open loop: request i is due at `start + t[i]` whatever happened to the earlier ones. The scheduler
(`run_schedule`) only ever sleeps until the next due time and hands the request to `dispatch`, which
must not block (the Locust side spawns one greenlet per request). A request's latency is counted from
its due time, not from when it actually went out: if the load generator falls behind, the delay is
part of the latency (no coordinated omission), and the send lag (actual - due) shows by how much.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def latency_ms(intended_s: float, done_s: float) -> float:
    """Response time charged to a request: from its intended send time to the end of its response."""
    return (done_s - intended_s) * 1000.0


def send_lag_ms(intended_s: float, sent_s: float) -> float:
    """How late the generator sent it (>= 0 up to clock granularity; large when the generator is overloaded)."""
    return (sent_s - intended_s) * 1000.0


def run_schedule(offsets: Sequence[float], start: float, clock: Callable[[], float],
                 sleep: Callable[[float], object], dispatch: Callable[[int, float], object],
                 stopped: Callable[[], bool] = lambda: False) -> int:
    """Dispatch request i at `start + offsets[i]` (same clock as `clock`), in order, without waiting for
    replies. Requests already due go out at once (late, their lag recorded by the dispatcher). Returns
    how many were dispatched (fewer than len(offsets) when `stopped()` became true)."""
    for i, off in enumerate(offsets):
        due = start + float(off)
        # Loop: a timer may fire a little early, and the request must never go out before its time.
        while (delay := due - clock()) > 0:
            sleep(delay)
        if stopped():
            return i
        dispatch(i, due)
    return len(offsets)
