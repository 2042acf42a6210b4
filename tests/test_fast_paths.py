"""The control tick's faster paths give the numbers the plain numpy ones gave (issue 15): reference
implementations here are the code they replaced."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from prewarmer.agents import checkpoint
from prewarmer.agents.features import FeatureBuilder
from prewarmer.forecast import peak
from prewarmer.observation import Observation
from prewarmer.policies.hybrid import HybridHistogramPolicy
from prewarmer.sidecar.fleet import WarmFleet
from prewarmer.sidecar.observer import LiveObserver
from prewarmer.sim import engine as E
from prewarmer.workloads.base import FunctionTable


def _table(n: int) -> FunctionTable:
    return FunctionTable(names=[f"f{i}" for i in range(n)], apps=np.arange(n, dtype=np.int32),
                         app_names=[f"f{i}" for i in range(n)], memory_mb=np.full(n, 128.0),
                         cold_start_s=np.full(n, np.nan))


def _reference_windows(p: HybridHistogramPolicy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows as numpy row reductions computed them before."""
    bins = p.bins.astype(np.float64)
    total = bins.sum(axis=1)
    mean = total / p.n_bins
    std = bins.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean > 0, std / mean, 0.0)
        oob_rate = np.where(total + p.oob > 0, p.oob / (total + p.oob), 0.0)
    cum = np.cumsum(bins, axis=1) / np.maximum(total, 1)[:, None]
    head_bin = np.argmax(cum >= p.head - 1e-12, axis=1)
    tail_bin = np.argmax(cum >= p.tail - 1e-12, axis=1)
    prewarm = head_bin * p.bin_s * (1.0 - p.hist_margin)
    keep = (tail_bin + 1) * p.bin_s * (1.0 + p.hist_margin)
    pattern = np.where(oob_rate >= p.oob_threshold, 2, np.where(cv < p.cv_threshold, 0, 1))
    return np.where(pattern == 0, 0.0, prewarm), np.where(pattern == 0, p.range_s, keep), pattern


def test_hybrid_windows_match_numpy_row_reductions():
    rng = np.random.default_rng(0)
    n = 400
    p = HybridHistogramPolicy()
    p.reset(_table(n), 0.0)
    for k in range(30):
        m = int(rng.integers(0, 2000))
        scale = (5.0, 60.0, 900.0, 20000.0)[k % 4]
        p.observe_idle_times(rng.integers(0, n, m), rng.exponential(scale, m))
        got = p.windows()
        want = _reference_windows(p)
        arima = want[2] == 2  # their windows come from the ARIMA forecast, not the histogram
        assert np.array_equal(got[2], want[2])
        assert np.array_equal(got[0][~arima], want[0][~arima]) and np.array_equal(got[1][~arima], want[1][~arima])


def test_hybrid_cv_exactly_at_the_threshold_is_decided_as_numpy_does():
    # 240 bins summing to 240 whose squares sum to 1196: a bin-count CV of exactly 2 in exact arithmetic.
    row = np.zeros(240, np.int64)
    row[:7], row[7], row[8], row[9:157] = 12, 6, 2, 1
    rng = np.random.default_rng(1)
    p = HybridHistogramPolicy()
    p.reset(_table(50), 0.0)
    p.bins = np.array([rng.permutation(row) for _ in range(50)])
    p.bin_sum, p.bin_sq = p.bins.sum(axis=1), (p.bins * p.bins).sum(axis=1)
    for got, want in zip(p.windows(), _reference_windows(p), strict=True):
        assert np.array_equal(got, want)


def _reference_peaks(obs: LiveObserver, n: int) -> np.ndarray:
    """The lexsort sweep `LiveObserver._peak_in_flight` made before."""
    peak_ = np.zeros(n, np.int64)
    if not obs.spans:
        return peak_
    f, arrival, done = (np.concatenate(col) for col in zip(*obs.spans, strict=True))
    t = np.concatenate([arrival, done])
    f2 = np.concatenate([f, f])
    step = np.repeat(np.array([1, -1], np.int64), len(f))
    order = np.lexsort((step, t, f2))
    f2, step = f2[order], step[order]
    run = np.cumsum(step)
    first = np.ones(len(f2), bool)
    first[1:] = f2[1:] != f2[:-1]
    starts = np.flatnonzero(first)
    base = np.repeat(run[starts] - step[starts], np.diff(np.append(starts, len(f2))))
    np.maximum.at(peak_, f2, run - base)
    return peak_


@pytest.mark.parametrize("seed", range(20))
def test_peak_in_flight_matches_the_sorted_sweep(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    obs = LiveObserver(np.full(n, 128.0), 0.0)
    for _ in range(int(rng.integers(0, 4))):
        m = int(rng.integers(0, 400 if seed % 2 else 3000))
        a = np.round(rng.uniform(0, 60, m), int(rng.integers(0, 3)))  # rounded: ties between arrivals and ends
        d = np.round(rng.exponential(rng.uniform(0.1, 5), m), int(rng.integers(0, 2)))
        s = np.round(rng.uniform(0, 1, m), 1) * (rng.random(m) < 0.3)
        obs.ingest(rng.integers(0, n, m), a, d, s, (s > 0).astype(np.int64), np.full(m, 200))
    assert np.array_equal(obs._peak_in_flight(n), _reference_peaks(obs, n))


def _observation(n: int, arrivals: np.ndarray, now: float) -> Observation:
    z = np.zeros(n, np.int64)
    return Observation(now=now, dt=60.0, arrivals=arrivals, cold_starts=z, completions=arrivals, timed_out=z, alive=z,
                       starting=z, busy=z, idle_warm=z, in_flight=z, peak_in_flight=z, concurrency=np.zeros(n),
                       wasted_gb_s=np.zeros(n), busy_gb_s=arrivals * 0.1, memory_mb=np.full(n, 256.0),
                       idle_time_func=np.zeros(0, np.int32), idle_time_s=np.zeros(0), memory_used_gb=0.0,
                       memory_cap_gb=np.inf)


def test_feature_builder_gap_histogram_matches_the_cumulative_one():
    rng = np.random.default_rng(3)
    n = 300
    fb = FeatureBuilder(n)
    ref_cum = np.zeros((n, 241))  # the cumulative histogram as it was kept before
    idle = np.full(n, 240, np.int64)
    seen = np.zeros(n, bool)
    for k in range(250):
        arr = rng.poisson(rng.uniform(0, 2, n)) * (rng.random(n) < (0.02 if k % 50 < 25 else 0.5))
        hit = arr > 0
        gap = np.minimum(idle + 1, 240)
        rows = np.flatnonzero(hit & seen)
        ref_cum[rows] += np.arange(241)[None, :] >= gap[rows][:, None]
        seen |= hit
        idle = np.where(hit, 0, np.minimum(idle + 1, 240))
        fb.update(_observation(n, arr, 60.0 * k))
    assert np.array_equal(fb.cum_gaps, ref_cum)
    m = fb.idle_ticks
    rows = np.arange(n)
    for j, k in enumerate((1, 5, 15)):
        below = ref_cum[rows, np.minimum(m, 240)]
        within = ref_cum[rows, np.minimum(m + k, 240)] - below
        survive = np.maximum(ref_cum[:, -1] - below, 0.0)
        p_hist = np.where(survive > 0, within / np.maximum(survive, 1e-9), 0.0)
        rate = np.maximum(fb.sum60, 0.0) / max(min(fb.k, 60), 1)
        want = np.where(ref_cum[:, -1] >= 3, p_hist, 1.0 - np.exp(-rate * k))
        assert np.array_equal(fb.hazard((1, 5, 15))[:, j], want)


def test_seasonal_in_chunks_matches_one_batch():
    rng = np.random.default_rng(4)
    n = 3 * peak.SEASON_CHUNK + 17
    peaks = rng.poisson(rng.uniform(0, 4, (n, 1)), (n, peak.HISTORY)).astype(float)
    peaks[rng.random(n) < 0.2] = 0.0
    got = peak.seasonal(peaks)
    one = peak._seasonal(peaks)
    for a, b in zip(got, one, strict=True):
        assert np.array_equal(a, b)
    # the product as numpy's temporary elision computes it on a large array, whatever the chunk size
    x = peaks - peaks.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(x, n=2 * peaks.shape[1])
    power = spec * np.conj(spec)
    assert spec.nbytes >= 256 * 1024  # large enough for numpy to elide the temporary
    acf = np.fft.irfft(power, n=2 * peaks.shape[1])[:, peak.SEASON_LAGS]
    acf /= (x * x).sum(axis=1, keepdims=True) + 1e-9
    assert np.array_equal(got[2], acf[np.arange(n), acf.argmax(axis=1)])


def test_networks_in_row_blocks_match_one_batch():
    torch.set_num_threads(1)
    model, _ = checkpoint.load(checkpoint.DEFAULT_CHECKPOINT)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for n in (5, 2047, 2049, 3073, 10001):
            x = torch.from_numpy(rng.standard_normal((n, 30)).astype(np.float32))
            assert torch.equal(peak.in_row_blocks(model.forecaster, x), model.forecaster(x))
            assert torch.equal(peak.in_row_blocks(model.logits, x), model.logits(x))


def test_warm_fleet_keeps_its_heap_small_and_its_batches_through_pickles():
    f = WarmFleet(50)
    rng = np.random.default_rng(6)
    for k in range(1, 30):
        for _ in range(5):  # several small batches per tick
            m = 100
            f.reported(rng.integers(0, 50, m), rng.uniform((k - 1) * 60.0, k * 60.0, m), np.full(m, 0.5))
        if k == 15:
            f = pickle.loads(pickle.dumps(f))
        f.desired(k * 60.0)
    # one entry per instance (its expiry) and request in flight, not one per request of the last keep-alive
    assert f.state.gi[E.G_HSIZE] + f.state.gi[E.G_ESIZE] <= f.state.isi.shape[0]
    assert f.state.gi[E.G_ITN] == 0


def _reference_seasonal(peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = peaks - peaks.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(x, n=2 * peaks.shape[1])
    power = np.conj(spec)
    np.multiply(power, spec, out=power)
    acf = np.fft.irfft(power, n=2 * peaks.shape[1])[:, peak.SEASON_LAGS]
    acf /= (x * x).sum(axis=1, keepdims=True) + 1e-9
    k = acf.argmax(axis=1)
    lag = peak.SEASON_LAGS[k]
    rows = np.arange(len(peaks))
    guess = peaks[rows, lag - 1]
    around = np.maximum(np.maximum(peaks[rows, lag - 2], guess), peaks[rows, np.minimum(lag, peaks.shape[1] - 1)])
    return guess, around, acf[rows, k]


def _reference_inputs(peaks: np.ndarray, arrivals: np.ndarray, log_mem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    recent = peaks[:, :10]
    s = recent.mean(axis=1) + 1.0
    a_scale = arrivals.mean(axis=1) + 1.0
    parts = [_reference_seasonal(peaks[i:i + 512]) for i in range(0, len(peaks), 512)]
    guess, around, acf = (np.concatenate(col) for col in zip(*parts, strict=True))
    n_peaks = peak.N_PEAKS
    x = np.empty((len(peaks), peak.N_INPUTS), np.float32)
    x[:, :n_peaks] = peaks[:, :n_peaks] / s[:, None]
    x[:, n_peaks:n_peaks + 3] = arrivals[:, :3] / a_scale[:, None]
    x[:, n_peaks + 3] = np.log(s) / 5.0
    x[:, n_peaks + 4] = log_mem
    x[:, n_peaks + 5] = recent.std(axis=1) / s
    x[:, n_peaks + 6] = (np.log(s) - np.log(a_scale)) / 5.0
    x[:, n_peaks + 7] = guess / s
    x[:, n_peaks + 8] = around / s
    x[:, n_peaks + 9] = np.clip(acf, -1.0, 1.0)
    return x, s


def test_peak_inputs_match_the_numpy_code_they_replaced():
    """Compiled sums (numpy's pairwise order), work arrays reused across chunks and each distinct row of peaks
    computed once: the forecaster's inputs are the same to the bit, for idle, repeated and distinct rows."""
    rng = np.random.default_rng(8)
    n = 2 * peak.SEASON_CHUNK + 300
    for scale in (0.05, 1.0, 30.0, 3000.0):
        lam = rng.uniform(0, scale, (n, 1))
        peaks = rng.poisson(lam, (n, peak.HISTORY)).astype(float)
        peaks[rng.random(n) < 0.2] = 0.0
        peaks[rng.random(n) < 0.2] = peaks[0]  # repeated rows
        arrivals = rng.poisson(3 * lam, (n, peak.N_ARRIVALS)).astype(float)
        log_mem = np.log(rng.uniform(0.1, 2.0, n))
        for a, b in zip(peak.inputs(peaks, arrivals, log_mem), _reference_inputs(peaks, arrivals, log_mem),
                        strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(peak.seasonal(peaks), _reference_seasonal(peaks), strict=True):
            assert np.array_equal(a, b)
    # training reads its windows newest first through reversed views
    p, a = rng.poisson(3, (200, 100)).astype(float), rng.poisson(3, (200, 100)).astype(float)
    got = peak.inputs(p[:, 20:80][:, ::-1], a[:, 70:80][:, ::-1], np.zeros(200))
    want = _reference_inputs(p[:, 20:80][:, ::-1], a[:, 70:80][:, ::-1], np.zeros(200))
    assert all(np.array_equal(u, v) for u, v in zip(got, want, strict=True))


def test_inference_passes_match_the_modules():
    """`infer` (addmm and activations in place, no autograd) gives the forecaster's result to the bit, in blocks of
    any size of at least 1024 rows; `infer_logits` (tanh rewritten as sigmoid) the actor's within float rounding,
    with the same choice in every row."""
    torch.set_num_threads(1)
    model, _ = checkpoint.load(checkpoint.DEFAULT_CHECKPOINT)
    rng = np.random.default_rng(9)
    with torch.no_grad():
        for n in (5, 1500, 17000):
            x = torch.from_numpy(rng.standard_normal((n, 30)).astype(np.float32))
            want_q, want_l = model.forecaster(x), model.logits(x)
            for rows in (1024, peak.ROW_BLOCK):
                assert torch.equal(peak.in_row_blocks(model.forecaster.infer, x, rows), want_q)
                got_l = peak.in_row_blocks(model.infer_logits, x, rows)
                assert torch.allclose(got_l, want_l, rtol=1e-5, atol=1e-4)
                assert torch.equal(got_l.argmax(dim=1), want_l.argmax(dim=1))


def test_sigmoid_form_is_the_tanh_network():
    """`sigmoid_form` rewrites any Linear-Tanh stack (random weights, deeper than the actor) to the same function;
    a stack with another activation is refused rather than computed wrongly."""
    from torch import nn

    from prewarmer.agents.network import sigmoid_form, sigmoid_mlp

    torch.manual_seed(3)
    body = nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 9), nn.Tanh(),
                         nn.Linear(9, 4))
    x = torch.randn(500, 7) * 3
    with torch.no_grad():
        assert torch.allclose(sigmoid_mlp(body, x), body(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):
        sigmoid_form(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)))


def test_actor_inference_follows_weights_changed_in_place():
    """`infer_logits` keeps the actor's rewritten weights between calls; a change of the weights in place (an
    optimizer step, `load_state_dict`) must reach it, or an online learner would act on stale weights."""
    torch.set_num_threads(1)
    model, _ = checkpoint.load(checkpoint.DEFAULT_CHECKPOINT)
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((300, 30)).astype(np.float32))
    with torch.no_grad():
        before = model.infer_logits(x)
        for p in model.actor.parameters():
            p.mul_(0.5)
        after = model.infer_logits(x)
        assert not torch.allclose(after, before, atol=1e-3)
        assert torch.allclose(after, model.logits(x), rtol=1e-5, atol=1e-4)


def test_feature_builder_pickled_with_the_whole_gap_histogram_reads_on():
    """A shard checkpoint written before the gaps were split (head of cumulative counts, tail histogram) holds
    `gap_hist`: it must load into the same state, so the agents' hazards go on where they were."""
    import pickle

    rng = np.random.default_rng(5)
    n = 200
    fb = FeatureBuilder(n)
    for k in range(120):
        arr = rng.poisson(rng.uniform(0, 2, n)) * (rng.random(n) < (0.05 if k % 40 < 20 else 0.7))
        fb.update(_observation(n, arr, 60.0 * k))
    old = dict(fb.__dict__)
    hist = fb.gap_hist
    assert hist[:, 16:].sum() > 0 and hist[:, :16].sum() > 0  # both parts in use
    del old["gap_head"], old["gap_tail"]
    old["gap_hist"] = hist
    restored = FeatureBuilder.__new__(FeatureBuilder)
    restored.__setstate__(old)
    assert np.array_equal(restored.cum_gaps, fb.cum_gaps)
    assert np.array_equal(restored.hazard((1, 5, 15)), fb.hazard((1, 5, 15)))
    assert np.array_equal(pickle.loads(pickle.dumps(restored)).gap_head, fb.gap_head)


def test_provisioning_tracker_kernels_match_numpy():
    """The tracker's charge, keep-alive pool and cheapest option are numpy's arithmetic to the bit, ties (first
    wins) and NaN (argmin: the first NaN) included."""
    from prewarmer.agents import experts

    rng = np.random.default_rng(8)
    n, k = 3000, 5
    short = rng.integers(0, 4, (n, k)).astype(np.float64) * rng.choice([1.0, 0.3], (n, k))
    idle = rng.random((n, k)) * rng.integers(0, 2, (n, k))
    pools = rng.integers(0, 6, (n, k)).astype(np.float64)
    need = rng.integers(0, 6, n).astype(np.float64)
    gb = rng.choice([0.125, 0.25, 1.5], n)
    decay = 0.5 ** (1 / 120)
    want_short = decay * short + np.maximum(need[:, None] - pools, 0.0)
    want_idle = decay * idle + np.maximum(pools - need[:, None], 0.0) * gb[:, None]
    experts._charge(short, idle, pools, need, gb, decay)
    assert np.array_equal(short, want_short) and np.array_equal(idle, want_idle)
    short[:50] = 1.0  # ties
    idle[:50] = 0.0
    short[60, 2] = np.nan
    for cold, price in ((1.0, 0.07), (1.0, 0.0), (2.0, 1.3)):
        want = np.argmin(cold * short + price * idle, axis=1)
        assert np.array_equal(experts._cheapest(short, idle, cold, price), want)
    peaks = rng.integers(0, 9, (n, 60)).astype(np.float64)
    peaks[7, 3] = np.nan
    assert np.array_equal(experts._row_max(peaks, 10), peaks[:, :10].max(axis=1), equal_nan=True)
    before = rng.integers(0, 6, (n, k)).astype(np.float64)
    early = rng.random(n) * 7.0
    want = short + np.maximum(np.minimum(np.minimum(early, need)[:, None], pools) - before, 0.0)
    experts._charge_start_ups(short, pools, before, early, need)
    assert np.array_equal(short, want, equal_nan=True)


def test_a_state_without_latency_histogram_runs_the_same():
    """The warm fleet's engine keeps no latency histogram (a logarithm per request spared): every other
    figure of the state is the same as with it."""
    from prewarmer.actions import Actions
    from prewarmer.sim.state import SimState

    rng = np.random.default_rng(6)
    n = 300
    states = [SimState(np.full(n, 256.0), np.full(n, 0.4), np.zeros(n), latency_histogram=h) for h in (True, False)]
    for st in states:
        st.apply(0.0, Actions(keep_alive_s=np.full(n, 120.0)))
    for k in range(1, 6):
        m = n * 4
        f, t = rng.integers(0, n, m), np.sort(rng.uniform((k - 1) * 60, k * 60, m))
        d = rng.exponential(2.0, m)
        for st in states:
            st.advance(k * 60.0, t, f, d, 0)
    with_hist, without = states
    assert with_hist.lat_hist.sum() > 0 and len(without.lat_hist) == 0
    assert np.array_equal(with_hist.fi, without.fi) and np.array_equal(with_hist.fs, without.fs)


def test_prefetch_hints_compile_and_change_nothing():
    """The engine's prefetch hints (`prewarmer/prefetch.py`) compile for the arrays it passes (1-D and 2-D, int and
    float) and leave every value as it was; a call that does not fit (a 2-D array to the 1-D hint) is refused
    when compiled, not turned into a wild address."""
    from numba import njit
    from numba.core.errors import TypingError

    from prewarmer.prefetch import prefetch, prefetch2

    @njit
    def touch(a, b, k):
        prefetch(a, k)
        prefetch2(b, k, b.shape[1] - 1)
        return a[k] + b[k, 0]

    a, b = np.arange(10.0), np.arange(30, dtype=np.int64).reshape(10, 3)
    before = a.copy(), b.copy()
    assert touch(a, b, 4) == 4.0 + 12
    assert np.array_equal(a, before[0]) and np.array_equal(b, before[1])

    @njit
    def wrong(b):
        prefetch(b, 1)

    with pytest.raises(TypingError):
        wrong(b)
