"""Peak forecaster: quantiles of how many instances each function will need in the next tick.

What a function needs within a tick is its peak of requests in flight (`Observation.peak_in_flight`):
a pool that large at the start of the tick serves every request of the tick warm. One small MLP,
shared by all functions, maps a function's recent peaks and arrivals to several quantiles of its next
peak at once (`TAUS`). The agents choose which quantile to provision: a high one for a small function
whose idle instance costs little, a lower one for a large function (an idle GB-minute against a cold
start is the trade, see `prewarmer.agents.action_space.teacher_choice`).

Inputs per function (26 values), scaled by s = 1 + mean of its last 10 peaks so that one network
serves functions whose peaks differ by four orders of magnitude: the last 20 peaks / s, the last 3
minute counts / (1 + their 10-minute mean), log(s) / 5, log(memory GB), std of the last 10 peaks / s.
Outputs: quantiles in units of s, increasing in tau by construction (a base plus softplus steps), so
they never cross. Trained with the pinball loss on a training trace (`fit`), on CPU in seconds.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

TAUS = (0.5, 0.75, 0.85, 0.9, 0.95, 0.98)
N_PEAKS = 20  # peaks of the last ticks fed to the network
N_ARRIVALS = 10  # counts kept (the last 3 fed, the 10 for their scale)
N_INPUTS = N_PEAKS + 3 + 3


class PeakQuantileNet(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(N_INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, len(TAUS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        steps = nn.functional.softplus(z[:, 1:])
        return torch.cat([z[:, :1], z[:, :1] + torch.cumsum(steps, dim=1)], dim=1)


class PeakHistory:
    """Rolling per-function peaks and counts, updated for all functions at once each tick."""

    def __init__(self, memory_mb: np.ndarray) -> None:
        n = len(memory_mb)
        self.log_mem = np.log(np.maximum(np.asarray(memory_mb, np.float64) / 1024.0, 1e-3))
        self.peaks = np.zeros((n, N_PEAKS))  # column 0 = the tick that just ended
        self.arrivals = np.zeros((n, N_ARRIVALS))

    def update(self, peak_in_flight: np.ndarray, arrivals: np.ndarray) -> None:
        self.peaks[:, 1:] = self.peaks[:, :-1]
        self.peaks[:, 0] = peak_in_flight
        self.arrivals[:, 1:] = self.arrivals[:, :-1]
        self.arrivals[:, 0] = arrivals

    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(network inputs (F, N_INPUTS) float32, scale s (F,))."""
        return inputs(self.peaks, self.arrivals, self.log_mem)


def inputs(peaks: np.ndarray, arrivals: np.ndarray, log_mem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs from the last N_PEAKS peaks and N_ARRIVALS counts (newest first) of each row."""
    recent = peaks[:, :10]
    s = recent.mean(axis=1) + 1.0
    a_scale = arrivals.mean(axis=1) + 1.0
    x = np.empty((len(peaks), N_INPUTS), np.float32)
    x[:, :N_PEAKS] = peaks / s[:, None]
    x[:, N_PEAKS:N_PEAKS + 3] = arrivals[:, :3] / a_scale[:, None]
    x[:, N_PEAKS + 3] = np.log(s) / 5.0
    x[:, N_PEAKS + 4] = log_mem
    x[:, N_PEAKS + 5] = recent.std(axis=1) / s
    return x, s


@torch.no_grad()
def predict(net: PeakQuantileNet, history: PeakHistory) -> np.ndarray:
    """(F, len(TAUS)) predicted peaks in instances, >= 0; one forward pass for all functions."""
    x, s = history.inputs()
    q = net(torch.from_numpy(x)).numpy()
    return np.maximum(q, 0.0) * s[:, None]


def training_pairs(peaks: np.ndarray, arrivals: np.ndarray, memory_mb: np.ndarray, min_rate: float = 0.2,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, next peak / s, s) for every (function, tick) of a recorded run, newest-last arrays (F, T).

    Functions slower than `min_rate` per tick are left out: their peaks are 0 or 1 and the agents
    leave them to the idle-time histogram."""
    keep = arrivals.mean(axis=1) >= min_rate
    p, a = peaks[keep].astype(np.float64), arrivals[keep].astype(np.float64)
    log_mem = np.log(np.maximum(np.asarray(memory_mb, np.float64)[keep] / 1024.0, 1e-3))
    xs, ys, ss = [], [], []
    for t in range(N_PEAKS, p.shape[1]):
        x, s = inputs(p[:, t - N_PEAKS:t][:, ::-1], a[:, t - N_ARRIVALS:t][:, ::-1], log_mem)
        xs.append(x)
        ys.append(p[:, t] / s)
        ss.append(s)
    if not xs:
        return np.zeros((0, N_INPUTS), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return (np.concatenate(xs), np.concatenate(ys).astype(np.float32), np.concatenate(ss).astype(np.float32))


def fit(net: PeakQuantileNet, peaks: np.ndarray, arrivals: np.ndarray, memory_mb: np.ndarray, steps: int = 4000,
        batch: int = 4096, lr: float = 1e-3, seed: int = 0) -> dict:
    """Train on a recorded run (arrays (F, T) per tick) with the pinball loss in instances; returns the
    samples, the final loss and the coverage of each quantile on the training data."""
    x, y, s = training_pairs(peaks, arrivals, memory_mb)
    if len(x) == 0:
        return {"samples": 0, "loss": float("nan"), "coverage": _coverage(net, x, y, s)}
    gen = torch.Generator().manual_seed(seed)
    xt, yt, st = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(s)
    taus = torch.tensor(TAUS, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # Decay to zero: the quantiles settle instead of wandering with the last minibatches.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / steps)
    net.train()
    loss_sum, n = 0.0, 0
    for step in range(steps):
        i = torch.randint(0, len(xt), (min(batch, len(xt)),), generator=gen)
        err = (yt[i, None] - net(xt[i])) * st[i, None]  # in instances: a cold start vs an idle instance-tick
        loss = torch.maximum(taus * err, (taus - 1.0) * err).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - 200:
            loss_sum += loss.item()
            n += 1
    net.eval()
    return {"samples": int(len(x)), "loss": loss_sum / max(n, 1), "coverage": _coverage(net, x, y, s)}


def coverage(net: PeakQuantileNet, peaks: np.ndarray, arrivals: np.ndarray, memory_mb: np.ndarray) -> list[float]:
    """Share of next peaks at or below each predicted quantile (calibration: close to TAUS)."""
    return _coverage(net, *training_pairs(peaks, arrivals, memory_mb))


def _coverage(net: PeakQuantileNet, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> list[float]:
    if len(x) == 0:
        return [float("nan")] * len(TAUS)
    with torch.no_grad():
        q = np.maximum(net(torch.from_numpy(x)).numpy(), 0.0) * s[:, None]
    return [float(np.mean(y * s <= np.ceil(q[:, k] - 1e-6))) for k in range(len(TAUS))]
