"""Peak of requests in flight (simulator and sidecar) and the peak quantile forecaster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prewarmer.actions import Actions
from prewarmer.forecast import peak
from prewarmer.policies.base import Policy
from prewarmer.sidecar.observer import LiveObserver
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.result import ReplayConfig
from prewarmer.workloads.azure2021 import load_azure2021


def brute_peaks(start: np.ndarray, end: np.ndarray, ticks: int, tick_s: float = 60.0) -> np.ndarray:
    """Most intervals [start, end) covering one instant, per tick: at the tick's start or at an arrival in it."""
    out = np.zeros(ticks, np.int64)
    for k in range(ticks):
        lo, hi = k * tick_s, (k + 1) * tick_s
        instants = [lo, *start[(start >= lo) & (start < hi)]]
        out[k] = max(int(((start <= t) & (end > t)).sum()) for t in instants)
    return out


class _WarmPool(Policy):
    """Ten instances per function from the start, kept forever: after the first second nothing waits."""

    tick_s = 60.0

    def reset(self, functions, now):
        n = len(functions)
        return Actions(keep_alive_s=np.full(n, np.inf), prewarm=np.full(n, 10, np.int64))


def test_simulator_peak_in_flight_matches_a_brute_force_count(tmp_path) -> None:
    rng = np.random.default_rng(3)
    n = 40
    start = np.sort(rng.uniform(2.0, 299.0, n))  # after the pool is ready: no request waits
    duration = rng.uniform(1.0, 40.0, n)
    rows = "\n".join(f"a,f,{s + d:.6f},{d:.6f}" for s, d in zip(start, duration, strict=True))
    path = tmp_path / "t.csv"
    path.write_text("app,func,end_timestamp,duration\n" + "a,f,0.000001,0.000001\n" + rows + "\n")
    wl = load_azure2021(path)
    t0 = 0.0  # the first row starts at 0: trace time = seconds above
    env = ReplayEnv(wl, ReplayConfig(seed=0, top_functions=0), tick_s=60.0)
    env.reset()
    actions = _WarmPool().reset(env.functions, 0.0)
    peaks = []
    while True:
        obs, done = env.step(actions)
        peaks.append(int(obs.peak_in_flight[0]))
        if done:
            break
        actions = Actions.none()
    expect = brute_peaks(np.append(0.0, start - t0), np.append(1e-6, start - t0 + duration), len(peaks) - 1)
    assert peaks[:-1] == expect.tolist()
    assert max(peaks) >= 2  # the test would not see an overlap bug otherwise


def test_sidecar_observer_peak_matches_a_brute_force_count() -> None:
    rng = np.random.default_rng(7)
    n = 200
    func = rng.integers(0, 3, n)
    arrival = rng.uniform(0.0, 60.0, n)
    duration = rng.uniform(0.1, 20.0, n)
    obs = LiveObserver(np.full(3, 256.0), epoch_s=0.0)
    half = n // 2  # two batches: the peak spans them
    for sl in (slice(0, half), slice(half, n)):
        obs.ingest(func[sl], arrival[sl], duration[sl], np.zeros(len(func[sl])), np.zeros(len(func[sl]), np.int64),
                   np.full(len(func[sl]), 200))
    o = obs.observe(60.0, np.full(3, 5), np.full(3, 5))
    for f in range(3):
        s, e = arrival[func == f], arrival[func == f] + duration[func == f]
        assert o.peak_in_flight[f] == max(int(((s <= t) & (e > t)).sum()) for t in s)
    # A new tick starts from nothing reported.
    assert obs.observe(120.0, np.full(3, 5), np.full(3, 5)).peak_in_flight.tolist() == [0, 0, 0]


def _fit(peaks: np.ndarray, arrivals: np.ndarray, steps: int = 600) -> peak.PeakQuantileNet:
    torch.manual_seed(0)
    net = peak.PeakQuantileNet()
    peak.fit(net, peaks, arrivals, np.full(len(peaks), 512.0), steps=steps, batch=512, lr=3e-3, seed=0)
    return net


def _predict_after(net: peak.PeakQuantileNet, peaks: np.ndarray, arrivals: np.ndarray) -> np.ndarray:
    h = peak.PeakHistory(np.full(len(peaks), 512.0))
    for t in range(peaks.shape[1]):
        h.update(peaks[:, t], arrivals[:, t])
    return peak.predict(net, h)


def test_forecaster_learns_a_constant_need() -> None:
    p = np.full((20, 80), 12.0)
    a = np.full((20, 80), 30.0)
    net = _fit(p, a)
    q = _predict_after(net, p, a)
    assert np.all(np.abs(q - 12.0) < 1.0), q[0]


def test_forecaster_learns_a_periodic_burst() -> None:
    # Every 5th tick 20 instances are needed, none in between: the forecast must rise before the burst.
    t = np.arange(100)
    p = np.tile(np.where(t % 5 == 4, 20.0, 0.0), (20, 1))
    a = p * 3
    net = _fit(p, a, steps=1200)
    median = peak.TAUS.index(0.5)
    before_burst = _predict_after(net, p[:, :99], a[:, :99])[0, median]  # next tick (99) is a burst
    after_burst = _predict_after(net, p, a)[0, median]  # next tick (100) is quiet
    assert before_burst > 15.0 and after_burst < 5.0, (before_burst, after_burst)


def test_forecaster_quantiles_never_cross_and_are_calibrated() -> None:
    rng = np.random.default_rng(1)
    rate = rng.uniform(2.0, 30.0, (40, 1))
    p = rng.poisson(np.repeat(rate, 300, axis=1)).astype(float)
    net = _fit(p[:, :200], p[:, :200] * 2, steps=1200)
    q = peak.predict(net, _history_of(p))
    assert (np.diff(q, axis=1) >= -1e-6).all() and (q >= 0).all()
    held_out = p[:, 200:]  # its first HISTORY ticks are history, the rest are forecast
    assert held_out.shape[1] > peak.HISTORY
    cov = peak.coverage(net, held_out, held_out * 2, np.full(40, 512.0))
    assert all(c >= tau - 0.1 for c, tau in zip(cov, peak.TAUS, strict=True)), cov
    assert cov[0] < cov[-1]


def _history_of(p: np.ndarray) -> peak.PeakHistory:
    h = peak.PeakHistory(np.full(len(p), 512.0))
    for t in range(p.shape[1]):
        h.update(p[:, t], p[:, t] * 2)
    return h


def test_forecaster_on_empty_and_silent_data() -> None:
    net = peak.PeakQuantileNet()
    # Nothing busy enough to learn from: no samples, no crash, the network is left as it was.
    before = [w.clone() for w in net.parameters()]
    stats = peak.fit(net, np.zeros((5, 50)), np.zeros((5, 50)), np.full(5, 256.0), steps=10)
    assert stats["samples"] == 0 and all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert peak.coverage(net, np.zeros((5, 10)), np.zeros((5, 10)), np.full(5, 256.0)) == pytest.approx(
        [float("nan")] * len(peak.TAUS), nan_ok=True)


def test_seasonal_guess_finds_the_period_and_copes_with_flat_series() -> None:
    t = np.arange(peak.HISTORY)[::-1]  # newest first: column 0 is the latest tick
    # A burst every 7 ticks; the next tick is t = 60 (60 % 7 = 4): quiet in row 0, a burst in row 1.
    rows = np.stack([np.where(t % 7 == 6, 30.0, 0.0), np.where(t % 7 == 4, 30.0, 0.0), np.zeros(peak.HISTORY),
                     np.full(peak.HISTORY, 4.0)])
    guess, around, acf = peak.seasonal(rows)
    assert guess[:2].tolist() == [0.0, 30.0] and acf[0] > 0.8 and acf[1] > 0.8
    assert around[0] == 0.0 and around[1] == 30.0
    assert np.isfinite(acf).all() and acf[2] == 0.0 and acf[3] == 0.0 and guess[3] == 4.0
