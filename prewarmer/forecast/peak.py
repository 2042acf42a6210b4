"""Peak forecaster: quantiles of how many instances each function will need in the next tick.

What a function needs within a tick is its peak of requests in flight (`Observation.peak_in_flight`):
a pool that large at the start of the tick serves every request of the tick warm. One small network,
shared by all functions, maps a function's recent peaks and arrivals to several quantiles of its next
peak at once (`TAUS`). The agents choose which quantile to provision (see
`prewarmer.agents.action_space` and `prewarmer.agents.experts`).

Inputs per function (`N_INPUTS` = 30), scaled by s = 1 + mean of its last 10 peaks so that one network
serves functions whose peaks differ by four orders of magnitude: the last 20 peaks / s, the last 3
minute counts / (1 + their 10-minute mean) (a = that mean), log(s) / 5, log(memory GB), std of the last
10 peaks / s, log(s / a) / 5 (by Little's law the function's duration: whether a jump in arrivals moves
its peak now or over many minutes), and a seasonal guess from the last `HISTORY` peaks: the lag of
2–30 ticks with the highest autocorrelation, the peak that lag predicts for the next tick (and the
largest of it and its two neighbours, for timers that drift) / s, and that autocorrelation.
Outputs: quantiles in units of s, a correction added to the last peak (persistence is the default,
which keeps large smooth functions steady), increasing in tau by construction (a base plus softplus
steps), so they never cross. The network is an ensemble of `MEMBERS` MLPs trained from different
seeds whose quantiles are averaged: on functions unlike the training ones single members disagree by
a third of their under-provisioning (measured, see the README), the average does not.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import nn

TAUS = (0.5, 0.75, 0.85, 0.9, 0.95, 0.98)
N_PEAKS = 20  # peaks of the last ticks fed to the network
HISTORY = 60  # peaks kept for the seasonal lag; training pairs start once this much history exists
N_ARRIVALS = 10  # counts kept (the last 3 fed, the 10 for their scale)
SEASON_LAGS = np.arange(2, 31)
N_INPUTS = N_PEAKS + 3 + 4 + 3
MEMBERS = 3


class _QuantileMLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(N_INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, len(TAUS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quantiles(x, self.body(x))

    @staticmethod
    def _quantiles(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        base = x[:, :1] + z[:, :1]  # column 0 of the inputs is the last peak / s
        # softplus of a contiguous copy: on a column slice torch takes a scalar loop, five times as slow
        return torch.cat([base, base + torch.cumsum(nn.functional.softplus(z[:, 1:].contiguous()), dim=1)], dim=1)


class PeakQuantileNet(nn.Module):
    """`MEMBERS` quantile MLPs; the forecast is their average (still non-crossing)."""

    def __init__(self, hidden: int = 64, members: int = MEMBERS) -> None:
        super().__init__()
        self.members = nn.ModuleList(_QuantileMLP(hidden) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` for inference (no autograd), the same result to the bit: each member's network and the
        softplus of its steps run in torch as in `forward`; the sums that build and average the quantiles
        (`_average_quantiles`) run in one compiled pass instead of five tensor operations per member."""
        zs = tuple(mlp_inference(m.body, x).numpy() for m in self.members)
        steps = tuple(nn.functional.softplus(torch.from_numpy(z[:, 1:].copy())).numpy() for z in zs)
        out = np.empty((len(x), len(TAUS)), np.float32)
        _average_quantiles(x.numpy(), zs, steps, out)
        return torch.from_numpy(out)


@njit(cache=True)
def _average_quantiles(x, zs, steps, out):
    """The members' average of `_QuantileMLP._quantiles`, as torch computes it: each member's base (input 0
    plus output 0, float32), its cumulative steps (torch's CPU cumsum adds in float64 and rounds each sum to
    float32), base + step sums; then the members' float32 sum in order, divided by their number (torch's
    mean over the stacked members). tests/test_fast_paths.py checks `infer` against `forward` to the bit."""
    members = len(zs)
    width = out.shape[1]
    q = np.empty(width, np.float32)
    total = np.empty(width, np.float32)
    for r in range(out.shape[0]):
        total[:] = 0
        for m in range(members):
            z, step = zs[m], steps[m]
            base = np.float32(x[r, 0] + z[r, 0])
            q[0] = base
            acc = 0.0
            for j in range(1, width):
                acc += np.float64(step[r, j - 1])
                q[j] = np.float32(base + np.float32(acc))
            for j in range(width):
                total[j] = np.float32(total[j] + q[j])
        for j in range(width):
            out[r, j] = np.float32(total[j] / np.float32(members))


class PeakHistory:
    """Rolling per-function peaks and counts, updated for all functions at once each tick."""

    def __init__(self, memory_mb: np.ndarray) -> None:
        n = len(memory_mb)
        self.log_mem = np.log(np.maximum(np.asarray(memory_mb, np.float64) / 1024.0, 1e-3))
        self.peaks = np.zeros((n, HISTORY))  # column 0 = the tick that just ended
        self.arrivals = np.zeros((n, N_ARRIVALS))

    def grow(self, memory_mb: np.ndarray) -> None:
        """Rows for functions appended to the table (`memory_mb` of all of them): no history yet."""
        n = len(memory_mb)
        self.log_mem = np.log(np.maximum(np.asarray(memory_mb, np.float64) / 1024.0, 1e-3))
        self.peaks = np.concatenate([self.peaks, np.zeros((n - len(self.peaks), self.peaks.shape[1]))])
        self.arrivals = np.concatenate([self.arrivals, np.zeros((n - len(self.arrivals), self.arrivals.shape[1]))])

    def update(self, peak_in_flight: np.ndarray, arrivals: np.ndarray) -> None:
        # Shifted into new arrays (a shift in place copies through a temporary: twice the memory traffic).
        for name, newest in (("peaks", peak_in_flight), ("arrivals", arrivals)):
            old = getattr(self, name)
            new = np.empty_like(old)
            new[:, 1:] = old[:, :-1]
            new[:, 0] = newest
            setattr(self, name, new)

    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(network inputs (F, N_INPUTS) float32, scale s (F,))."""
        return inputs(self.peaks, self.arrivals, self.log_mem)


SEASON_CHUNK = 512  # rows per FFT batch: its temporaries stay in cache (all rows at once is twice as slow)


def seasonal(peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows of peaks (newest first): (the next peak the best lag predicts, the largest of it and its
    neighbours, that lag's autocorrelation). All lags at once through one FFT per row.

    Functions with the same recent peaks are many (idle ones all have zeros; steady ones the same few values):
    each distinct row is computed once. Every row's result depends on that row alone, so this changes no bit."""
    peaks = np.ascontiguousarray(peaks, np.float64)
    group, first = _distinct_rows(peaks.view(np.int64))
    if len(first) < len(peaks):
        return tuple(o[group] for o in _seasonal_rows(peaks[first]))
    return _seasonal_rows(peaks)


def _seasonal_rows(peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(peaks)
    out = np.empty(n), np.empty(n), np.empty(n)
    chunk = min(n, SEASON_CHUNK)
    width = 2 * peaks.shape[1]
    buffers = (np.empty((chunk, peaks.shape[1])), np.empty((chunk, width // 2 + 1), np.complex128),
               np.empty((chunk, width // 2 + 1), np.complex128), np.empty((chunk, width)))
    for i in range(0, n, SEASON_CHUNK):
        _seasonal(peaks[i:i + SEASON_CHUNK], tuple(o[i:i + SEASON_CHUNK] for o in out), buffers)
    return out


def _seasonal(peaks: np.ndarray, out: tuple[np.ndarray, ...] | None = None,
              buffers: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`seasonal` of one batch of rows, into `out` (three arrays of len(peaks)), with the work arrays of
    `seasonal` (or new ones). The arithmetic is numpy's: the compiled parts (`_centered`, `_best_lag`) sum as
    numpy's pairwise sums do, so every value is the same to the bit (tests/test_fast_paths.py)."""
    m, width = len(peaks), 2 * peaks.shape[1]
    if out is None:
        out = np.empty(m), np.empty(m), np.empty(m)
    if buffers is None:
        x, spec, power, corr = (np.empty((m, peaks.shape[1])), np.empty((m, width // 2 + 1), np.complex128),
                                np.empty((m, width // 2 + 1), np.complex128), np.empty((m, width)))
    else:
        x, spec, power, corr = (b[:m] for b in buffers)
    _centered(peaks, x)
    np.fft.rfft(x, n=width, out=spec)
    # The power spectrum as numpy computes `spec * np.conj(spec)` on large arrays (in place into the
    # conjugate, operands swapped: its temporary elision), whose rounding differs from the small-array
    # product; spelled out, every row gets the same result whatever the number of rows.
    np.conj(spec, out=power)
    np.multiply(power, spec, out=power)
    np.fft.irfft(power, n=width, out=corr)
    _best_lag(peaks, x, corr, SEASON_LAGS[0], SEASON_LAGS[-1], *out)
    return out


@njit(cache=True)
def _distinct_rows(bits):
    """Group equal rows (compared bit for bit): (the group of each row, the first row of each group), groups
    numbered in order of first appearance. One pass with an open-addressing hash table."""
    n, w = bits.shape
    size = 1
    while size < 2 * n:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, np.int64)  # group in each slot
    group = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    hashes = np.empty(n, np.uint64)  # of each group
    k = 0
    for r in range(n):
        v = np.uint64(14695981039346656037)
        for j in range(w):
            # A float's information is in its high bits, which a multiplication only moves higher: fold them
            # down first.
            x = np.uint64(bits[r, j])
            x = (x ^ (x >> np.uint64(32))) * np.uint64(0x9E3779B97F4A7C15)
            v = (v ^ x ^ (x >> np.uint64(29))) * np.uint64(1099511628211)
        v = (v ^ (v >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
        v ^= v >> np.uint64(29)
        slot = np.int64(v & np.uint64(mask))
        while True:
            g = table[slot]
            if g < 0:
                table[slot] = k
                first[k] = r
                hashes[k] = v
                group[r] = k
                k += 1
                break
            if hashes[g] == v:
                q = first[g]
                same = True
                for j in range(w):
                    if bits[r, j] != bits[q, j]:
                        same = False
                        break
                if same:
                    group[r] = g
                    break
            slot = (slot + 1) & mask
    return group, first[:k].copy()


@njit(cache=True, inline="always")
def _term(a, j, shift, square):
    d = a[j] - shift
    return d * d if square else d


@njit(cache=True, inline="always")
def _pairwise_sum(a, shift, square):
    """numpy's sum of the 1-D float64 array `a - shift` (or of its squares, with `square`): its pairwise
    summation, whose order (eight running sums, then the rest in turn, for up to 128 values) fixes the
    rounding; the difference and the square are rounded on their own, as numpy's temporaries are."""
    n = len(a)
    if n < 8:
        res = 0.0
        for i in range(n):
            res += _term(a, i, shift, square)
        return 0.0 + res
    r0, r1, r2, r3 = _term(a, 0, shift, square), _term(a, 1, shift, square), _term(a, 2, shift, square), \
        _term(a, 3, shift, square)
    r4, r5, r6, r7 = _term(a, 4, shift, square), _term(a, 5, shift, square), _term(a, 6, shift, square), \
        _term(a, 7, shift, square)
    i = 8
    while i < n - (n % 8):
        r0 += _term(a, i, shift, square)
        r1 += _term(a, i + 1, shift, square)
        r2 += _term(a, i + 2, shift, square)
        r3 += _term(a, i + 3, shift, square)
        r4 += _term(a, i + 4, shift, square)
        r5 += _term(a, i + 5, shift, square)
        r6 += _term(a, i + 6, shift, square)
        r7 += _term(a, i + 7, shift, square)
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += _term(a, i, shift, square)
        i += 1
    return 0.0 + res


@njit(cache=True)
def _centered(peaks, x):
    """x = peaks - peaks.mean(axis=1, keepdims=True), as numpy computes it."""
    w = peaks.shape[1]
    for r in range(peaks.shape[0]):
        mean = _pairwise_sum(peaks[r], 0.0, False) / w
        for j in range(w):
            x[r, j] = peaks[r, j] - mean


@njit(cache=True)
def _best_lag(peaks, x, corr, lo, hi, guess, around, acf):
    """From the autocorrelation of each row (`corr`, unnormalized, by lag): the lag in [lo, hi] where it is
    highest after dividing by the row's energy (numpy's argmax: the first of equal ones, NaN first), the peak
    that lag predicts for the next tick (lag L: column L - 1), the largest of it and its neighbours, and the
    normalized autocorrelation there."""
    w = peaks.shape[1]
    for r in range(peaks.shape[0]):
        energy = _pairwise_sum(x[r], 0.0, True) + 1e-9
        best = corr[r, lo] / energy
        lag = lo
        if best == best:
            for k in range(lo + 1, hi + 1):
                v = corr[r, k] / energy
                if v != v:
                    best, lag = v, k
                    break
                if v > best:
                    best, lag = v, k
        g = peaks[r, lag - 1]
        a = max(peaks[r, lag - 2], g)
        guess[r] = g
        around[r] = max(a, peaks[r, min(lag, w - 1)])
        acf[r] = best


@njit(cache=True)
def _scales(peaks, arrivals, recent, s, a_scale, spread):
    """Per row: s = 1 + mean of the last `recent` peaks, 1 + mean of the counts, and the standard deviation of
    those peaks (numpy's mean and std, to the bit)."""
    for r in range(peaks.shape[0]):
        p = peaks[r, :recent]
        mean = _pairwise_sum(p, 0.0, False) / recent
        s[r] = mean + 1.0
        a_scale[r] = _pairwise_sum(arrivals[r], 0.0, False) / arrivals.shape[1] + 1.0
        spread[r] = np.sqrt(_pairwise_sum(p, mean, True) / recent)


@njit(cache=True)
def _fill_inputs(x, peaks, arrivals, s, a_scale, spread, log_mem, guess, around, acf, n_peaks):
    """The network inputs that need no logarithm (see `inputs`), row by row."""
    for r in range(x.shape[0]):
        sr = s[r]
        for j in range(n_peaks):
            x[r, j] = peaks[r, j] / sr
        for j in range(3):
            x[r, n_peaks + j] = arrivals[r, j] / a_scale[r]
        x[r, n_peaks + 4] = log_mem[r]
        x[r, n_peaks + 5] = spread[r] / sr
        x[r, n_peaks + 7] = guess[r] / sr
        x[r, n_peaks + 8] = around[r] / sr
        x[r, n_peaks + 9] = min(max(acf[r], -1.0), 1.0)


def inputs(peaks: np.ndarray, arrivals: np.ndarray, log_mem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs from the last HISTORY peaks and N_ARRIVALS counts (newest first) of each row.

    Per row, with s = 1 + mean of the last 10 peaks and a = 1 + mean of the counts: the last N_PEAKS peaks / s,
    the last 3 counts / a, log(s) / 5, log(memory GB), std of the last 10 peaks / s, (log s - log a) / 5, the
    seasonal guess / s, the largest around it / s, and the autocorrelation clipped to [-1, 1]. The logarithms
    are numpy's (its own vector code on some CPUs); the rest is compiled, one pass per row."""
    peaks, arrivals = np.asarray(peaks, np.float64), np.asarray(arrivals, np.float64)
    n = len(peaks)
    s, a_scale, spread = np.empty(n), np.empty(n), np.empty(n)
    _scales(peaks, arrivals, 10, s, a_scale, spread)
    guess, around, acf = seasonal(peaks)
    x = np.empty((n, N_INPUTS), np.float32)
    _fill_inputs(x, peaks, arrivals, s, a_scale, spread, np.asarray(log_mem, np.float64), guess, around, acf,
                 N_PEAKS)
    log_s = np.log(s)
    x[:, N_PEAKS + 3] = log_s / 5.0
    x[:, N_PEAKS + 6] = (log_s - np.log(a_scale)) / 5.0
    return x, s


@torch.no_grad()
def predict(net: PeakQuantileNet, history: PeakHistory) -> np.ndarray:
    """(F, len(TAUS)) predicted peaks in instances, >= 0; one forward pass for all functions."""
    return _in_instances(net, *history.inputs())


@torch.no_grad()
def _in_instances(net: PeakQuantileNet, x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The network's quantiles (units of s) as instances, >= 0."""
    return np.maximum(in_row_blocks(net.infer, torch.from_numpy(x)).numpy(), 0.0) * s[:, None]


def mlp_inference(body: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`body(x)` for a Sequential of Linear layers and ReLU / Tanh activations, for inference: each Linear is
    the `addmm` that `nn.Linear` calls on a 2-D input (the same kernel, so the same result to the bit) and each
    activation runs in place on that fresh output, so no temporary is allocated for it (a tenth faster at 10k
    rows). Call it under `torch.no_grad()`."""
    h = x
    for layer in body:
        if isinstance(layer, nn.Linear):
            h = torch.addmm(layer.bias, h, layer.weight.t())
        elif isinstance(layer, nn.ReLU) and h is not x:
            h = h.relu_()
        elif isinstance(layer, nn.Tanh) and h is not x:
            h = h.tanh_()
        else:
            h = layer(h)
    return h


ROW_BLOCK = 4096


def in_row_blocks(fn, x: torch.Tensor, rows: int = ROW_BLOCK) -> torch.Tensor:
    """`fn(x)` for a row-wise network, `rows` rows at a time (the last block takes the remainder, so no block
    is smaller than `rows` unless x is): the activations stay in cache. On one core of an AMD EPYC (AVX2,
    MKL; CPU time, `mlp_inference`) the forecaster takes 98 ms for 100k rows in blocks of 4096, 94 ms in
    blocks of 8192, 118 ms in blocks of 1024 and 141 ms as one batch; at 10k rows blocks of 4096 or more are
    as fast as one batch, blocks of 1024 a fifth slower (on an AVX-512 Intel Xeon blocks of 1024 were the
    fastest: 4096 is the compromise). Blocks of at least 1024 rows take the same matrix kernels as one batch,
    so the result is the same to the bit (checked for 56 sizes from 1,025 to 120,000 rows with the shipped
    networks and MKL on AVX-512, and for 14 sizes up to 120,000 in blocks of 1024, 4096 and 8192 on that AVX2
    box; a block of one row would not be: torch multiplies a single row differently)."""
    n = x.shape[0]
    if n < 2 * rows:
        return fn(x)
    bounds = [*range(0, n // rows * rows, rows), n]  # blocks of rows .. 2 * rows - 1
    return torch.cat([fn(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


PAIR_MIN_RATE = 0.2  # arrivals per tick below which a function gives no training pairs (`training_pairs`)


def training_pairs(peaks: np.ndarray, arrivals: np.ndarray, memory_mb: np.ndarray, min_rate: float = PAIR_MIN_RATE,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, next peak / s, s) for every (function, tick) of a recorded run, newest-last arrays (F, T).

    Functions slower than `min_rate` per tick are left out: their peaks are 0 or 1 and the agents
    leave them to the idle-time histogram."""
    keep = arrivals.mean(axis=1) >= min_rate
    p, a = peaks[keep].astype(np.float64), arrivals[keep].astype(np.float64)
    log_mem = np.log(np.maximum(np.asarray(memory_mb, np.float64)[keep] / 1024.0, 1e-3))
    xs, ys, ss = [], [], []
    for t in range(HISTORY, p.shape[1]):
        x, s = inputs(p[:, t - HISTORY:t][:, ::-1], a[:, t - N_ARRIVALS:t][:, ::-1], log_mem)
        xs.append(x)
        ys.append(p[:, t] / s)
        ss.append(s)
    if not xs:
        return np.zeros((0, N_INPUTS), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return (np.concatenate(xs), np.concatenate(ys).astype(np.float32), np.concatenate(ss).astype(np.float32))


def fit(net: PeakQuantileNet, peaks: np.ndarray, arrivals: np.ndarray, memory_mb: np.ndarray, steps: int = 4000,
        batch: int = 4096, lr: float = 1e-3, seed: int = 0) -> dict:
    """Train every member (its own seed) on a recorded run (arrays (F, T) per tick) with the pinball
    loss in instances; returns the samples, the final loss and the ensemble's coverage of each quantile
    on the training data."""
    x, y, s = training_pairs(peaks, arrivals, memory_mb)
    if len(x) == 0:
        return {"samples": 0, "loss": float("nan"), "coverage": _coverage(net, x, y, s)}
    xt, yt, st = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(s)
    taus = torch.tensor(TAUS, dtype=torch.float32)
    losses = []
    net.train()
    for k, member in enumerate(net.members):
        gen = torch.Generator().manual_seed(seed + k)
        torch.manual_seed(seed + k)
        for layer in member.body:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()  # members differ by their seed, not only by their batches
        opt = torch.optim.Adam(member.parameters(), lr=lr)
        # Decay to zero: the quantiles settle instead of wandering with the last minibatches.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
        loss_sum, n = 0.0, 0
        for step in range(steps):
            i = torch.randint(0, len(xt), (min(batch, len(xt)),), generator=gen)
            err = (yt[i, None] - member(xt[i])) * st[i, None]  # in instances: a cold start vs an idle instance-tick
            loss = torch.maximum(taus * err, (taus - 1.0) * err).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step >= steps - 200:
                loss_sum += loss.item()
                n += 1
        losses.append(loss_sum / max(n, 1))
    net.eval()
    return {"samples": int(len(x)), "loss": float(np.mean(losses)), "coverage": _coverage(net, x, y, s)}


def coverage(net: PeakQuantileNet, peaks: np.ndarray, arrivals: np.ndarray, memory_mb: np.ndarray) -> list[float]:
    """Share of next peaks at or below each predicted quantile (calibration: close to TAUS)."""
    return _coverage(net, *training_pairs(peaks, arrivals, memory_mb))


def _coverage(net: PeakQuantileNet, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> list[float]:
    if len(x) == 0:
        return [float("nan")] * len(TAUS)
    q = _in_instances(net, x, s)
    return [float(np.mean(y * s <= np.ceil(q[:, k] - 1e-6))) for k in range(len(TAUS))]
