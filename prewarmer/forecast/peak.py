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
        z = self.body(x)
        base = x[:, :1] + z[:, :1]  # column 0 of the inputs is the last peak / s
        return torch.cat([base, base + torch.cumsum(nn.functional.softplus(z[:, 1:]), dim=1)], dim=1)


class PeakQuantileNet(nn.Module):
    """`MEMBERS` quantile MLPs; the forecast is their average (still non-crossing)."""

    def __init__(self, hidden: int = 64, members: int = MEMBERS) -> None:
        super().__init__()
        self.members = nn.ModuleList(_QuantileMLP(hidden) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


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
    neighbours, that lag's autocorrelation). All lags at once through one FFT per row."""
    if len(peaks) <= SEASON_CHUNK:
        return _seasonal(peaks)
    parts = [_seasonal(peaks[i:i + SEASON_CHUNK]) for i in range(0, len(peaks), SEASON_CHUNK)]
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _seasonal(peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = peaks - peaks.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(x, n=2 * peaks.shape[1])
    # The power spectrum as numpy computes `spec * np.conj(spec)` on large arrays (in place into the
    # conjugate, operands swapped: its temporary elision), whose rounding differs from the small-array
    # product; spelled out, every row gets the same result whatever the number of rows.
    power = np.conj(spec)
    np.multiply(power, spec, out=power)
    acf = np.fft.irfft(power, n=2 * peaks.shape[1])[:, SEASON_LAGS]
    acf /= (x * x).sum(axis=1, keepdims=True) + 1e-9
    k = acf.argmax(axis=1)
    lag = SEASON_LAGS[k]
    rows = np.arange(len(peaks))
    guess = peaks[rows, lag - 1]  # lag L before the next tick is column L - 1 (column 0 = now)
    around = np.maximum(np.maximum(peaks[rows, lag - 2], guess), peaks[rows, np.minimum(lag, peaks.shape[1] - 1)])
    return guess, around, acf[rows, k]


def inputs(peaks: np.ndarray, arrivals: np.ndarray, log_mem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs from the last HISTORY peaks and N_ARRIVALS counts (newest first) of each row."""
    recent = peaks[:, :10]
    s = recent.mean(axis=1) + 1.0
    a_scale = arrivals.mean(axis=1) + 1.0
    guess, around, acf = seasonal(peaks)
    x = np.empty((len(peaks), N_INPUTS), np.float32)
    x[:, :N_PEAKS] = peaks[:, :N_PEAKS] / s[:, None]
    x[:, N_PEAKS:N_PEAKS + 3] = arrivals[:, :3] / a_scale[:, None]
    x[:, N_PEAKS + 3] = np.log(s) / 5.0
    x[:, N_PEAKS + 4] = log_mem
    x[:, N_PEAKS + 5] = recent.std(axis=1) / s
    x[:, N_PEAKS + 6] = (np.log(s) - np.log(a_scale)) / 5.0
    x[:, N_PEAKS + 7] = guess / s
    x[:, N_PEAKS + 8] = around / s
    x[:, N_PEAKS + 9] = np.clip(acf, -1.0, 1.0)
    return x, s


@torch.no_grad()
def predict(net: PeakQuantileNet, history: PeakHistory) -> np.ndarray:
    """(F, len(TAUS)) predicted peaks in instances, >= 0; one forward pass for all functions."""
    return _in_instances(net, *history.inputs())


@torch.no_grad()
def _in_instances(net: PeakQuantileNet, x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The network's quantiles (units of s) as instances, >= 0."""
    return np.maximum(in_row_blocks(net, torch.from_numpy(x)).numpy(), 0.0) * s[:, None]


ROW_BLOCK = 1024


def in_row_blocks(fn, x: torch.Tensor, rows: int = ROW_BLOCK) -> torch.Tensor:
    """`fn(x)` for a row-wise network, `rows` rows at a time (the last block takes the remainder, so no block
    is smaller than `rows` unless x is): the activations stay in cache, a third faster at 10k rows. Blocks of
    at least 1024 rows take the same matrix kernels as one batch, so the result is the same to the bit
    (checked for 56 sizes from 1,025 to 120,000 rows with the shipped networks and MKL on AVX-512; a block of
    one row would not be: torch multiplies a single row differently)."""
    n = x.shape[0]
    if n < 2 * rows:
        return fn(x)
    bounds = [*range(0, n // rows * rows, rows), n]  # blocks of rows .. 2 * rows - 1
    return torch.cat([fn(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def training_pairs(peaks: np.ndarray, arrivals: np.ndarray, memory_mb: np.ndarray, min_rate: float = 0.2,
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
