"""Neural forecaster: one small MLP shared by all functions, fed each function's recent counts.

Input per function (125 values): log1p of the last 60 per-minute counts, the same 60 counts divided
by the function's scale (below; log1p hides a 3% change of a 1000/min function, which is most of
its next-minute error), sin/cos of the time of day and of the day of the week of the next minute,
and log1p of the function's mean rate since reset. Two heads over the next H = 10 minutes:
- counts, softplus(z) x scale, where scale = 0.01 + mean of the last 60 counts + mean rate, so one
  network serves functions whose rates differ by six orders of magnitude. Trained with MSE on
  log1p (see `_loss` for why not Poisson NLL): for bursty functions the forecast sits nearer the
  median than the mean, which is what a next-minute MAE rewards;
- P(at least one invocation within j minutes), j = 1..H, as 1 - exp(-cumulative hazard), hazards
  softplus >= 0, so the probabilities rise with j by construction. Trained with binary
  cross-entropy, it answers `prob_invoked` directly instead of through a Poisson assumption that
  bursty functions break.
Time features are fed only when the training data can teach them (`time_features="auto"`: time
of day with at least a day of training minutes, weekday with a week); otherwise they are zeros.

`fit(counts, epochs, seed)` samples (function, minute) windows from a training period and trains
with Adam on CPU (one thread); the network weights live in `state_dict` as numpy arrays. At run
time one batched forward pass serves all functions, cached until the next update. ~35k parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from prewarmer.forecast.base import Forecaster, check_steps

MINUTES_PER_DAY = 1440


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    # A model this small gains nothing from intra-op threads, and on a busy 2-core machine they made
    # training ~10x and the forward pass for 1000 functions ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, horizon: int) -> None:
        super().__init__()
        self.horizon = horizon
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2 * horizon)
        with torch.no_grad():  # start from "rarely invoked", as most functions are most minutes
            self.head.bias[horizon:].fill_(-6.0)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected counts relative to `scale`, cumulative hazard) for each of the next `horizon` minutes."""
        z = self.head(self.body(x))
        rel = nn.functional.softplus(z[:, :self.horizon])
        cum_hazard = torch.cumsum(nn.functional.softplus(z[:, self.horizon:]), dim=1)
        return rel, cum_hazard


N_EXTRA = 5  # time of day and day of week (sin, cos), log1p(mean rate)


def _features(recent: torch.Tensor, minute: torch.Tensor, mean_rate: torch.Tensor, relative: bool,
              time_of_day: bool, day_of_week: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input and output scale from raw recent counts (N, lags), absolute minute (N,), mean rate (N,)."""
    tod = (2 * math.pi / MINUTES_PER_DAY) * torch.remainder(minute, MINUTES_PER_DAY)
    dow = (2 * math.pi / 7) * torch.remainder(torch.div(minute, MINUTES_PER_DAY, rounding_mode="floor"), 7)
    on_tod, on_dow = float(time_of_day), float(day_of_week)  # off: zeros, so the architecture stays the same
    scale = 0.01 + recent.mean(dim=1) + mean_rate
    parts = [torch.log1p(recent), torch.stack([on_tod * torch.sin(tod), on_tod * torch.cos(tod),
                                               on_dow * torch.sin(dow), on_dow * torch.cos(dow),
                                               torch.log1p(mean_rate)], dim=1)]
    if relative:
        # log1p hides a 3% change of a 1000/min function, which is most of the next-minute error.
        parts.append(recent / scale[:, None])
    return torch.cat(parts, dim=1), scale


def _loss(rel: torch.Tensor, cum_hazard: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # MSE on log1p: Poisson NLL is dominated by the few unforeseeable bursts of quiet functions (a
    # burst of 500 where 0.01 was expected), which made the epoch loss wander instead of falling.
    counts = torch.log1p(rel * scale[:, None])
    mse = ((counts - torch.log1p(target)) ** 2).mean()
    hit = torch.cummax((target > 0).to(rel.dtype), dim=1).values  # invoked within j minutes
    h = cum_hazard.clamp_min(1e-6)
    bce = -(hit * torch.log(-torch.expm1(-h)) - (1 - hit) * h).mean()
    return mse + bce


class NeuralForecaster(Forecaster):
    name = "neural"
    _config_keys = ("lags", "horizon", "hidden", "lr", "batch_size", "samples_per_epoch", "relative_inputs",
                    "time_features")
    _state_keys = ("recent", "total", "weights", "loss_history", "time_of_day", "day_of_week")

    def __init__(self, lags: int = 60, horizon: int = 10, hidden: int = 128, lr: float = 2e-3, batch_size: int = 512,
                 samples_per_epoch: int = 100_000, relative_inputs: bool = True, time_features: str = "auto") -> None:
        if time_features not in ("auto", "on", "off"):
            raise ValueError(f"time_features must be auto, on or off, got {time_features!r}")
        self.lags, self.horizon, self.hidden = int(lags), int(horizon), int(hidden)
        self.lr, self.batch_size, self.samples_per_epoch = float(lr), int(batch_size), int(samples_per_epoch)
        self.relative_inputs = bool(relative_inputs)
        self.time_features = time_features
        self.time_of_day = self.day_of_week = False  # decided by fit()
        self.weights: dict[str, np.ndarray] | None = None
        self.loss_history: list[float] = []
        self.fit_seconds = 0.0
        self._net: _Net | None = None
        self._net_weights: dict[str, np.ndarray] | None = None  # the weights `_net` was built from
        self.reset(0)

    @property
    def n_inputs(self) -> int:
        return self.lags * (2 if self.relative_inputs else 1) + N_EXTRA

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in _Net(self.n_inputs, self.hidden, self.horizon).parameters())

    def describe(self) -> dict:
        return {**super().describe(), "parameters": self.n_parameters, "fit_seconds": round(self.fit_seconds, 3),
                "loss_history": [round(v, 5) for v in self.loss_history]}

    def _reset_state(self) -> None:
        self.recent = np.zeros((self.n_functions, self.lags), np.float32)  # raw counts, oldest first
        self.total = np.zeros(self.n_functions)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ training
    def fit(self, counts: np.ndarray, epochs: int = 8, seed: int = 0, start_minute: int = 0) -> list[float]:
        """Train on a (functions, minutes) count matrix whose column 0 is absolute minute `start_minute`.

        Windows (function f, minute t) with t >= lags are drawn uniformly; the mean rate input is the
        function's mean over minutes [0, t), as the forecaster sees it when it is reset at column 0.
        Returns the mean training loss of each epoch.
        """
        c = np.asarray(counts)
        if c.ndim != 2:
            raise ValueError(f"counts must be a (functions, minutes) matrix, got shape {c.shape}")
        n_f, n_t = c.shape
        n_pos = n_t - self.lags - self.horizon + 1
        if n_f == 0 or n_pos <= 0:
            raise ValueError(f"need at least {self.lags + self.horizon} minutes of at least one function to train, "
                             f"got shape {c.shape}")
        check_steps(epochs, "epochs")
        # A time-of-day input trained on part of a day only ever sees part of the circle and
        # extrapolates at random to the rest (measured on a split of the training half: worse MAE and
        # Brier score), so "auto" feeds it only with a full day of training data, the weekday with a week.
        full = self.time_features == "on"
        self.time_of_day = full or (self.time_features == "auto" and n_t >= MINUTES_PER_DAY)
        self.day_of_week = full or (self.time_features == "auto" and n_t >= 7 * MINUTES_PER_DAY)
        t0 = time.perf_counter()
        with _one_torch_thread():
            history = self._train(c, epochs, seed, start_minute, n_pos)
        self.fit_seconds = time.perf_counter() - t0
        self._cache = None
        return history

    def _train(self, c: np.ndarray, epochs: int, seed: int, start_minute: int, n_pos: int) -> list[float]:
        n_f = c.shape[0]
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        data = torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))
        csum = torch.cat([torch.zeros(n_f, 1), torch.cumsum(data.double(), dim=1).float()], dim=1)
        net = _Net(self.n_inputs, self.hidden, self.horizon)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        lag_off = torch.arange(-self.lags, 0)
        out_off = torch.arange(self.horizon)
        n_samples = min(self.samples_per_epoch, n_f * n_pos)
        history: list[float] = []
        for _ in range(epochs):
            fi = torch.from_numpy(rng.integers(0, n_f, n_samples))
            ti = torch.from_numpy(rng.integers(self.lags, self.lags + n_pos, n_samples))
            total, batches = 0.0, 0
            for b in range(0, n_samples, self.batch_size):
                f, t = fi[b:b + self.batch_size], ti[b:b + self.batch_size]
                recent = data[f[:, None], t[:, None] + lag_off]
                target = data[f[:, None], t[:, None] + out_off]
                mean_rate = csum[f, t] / t
                x, scale = _features(recent, t + start_minute, mean_rate, self.relative_inputs, self.time_of_day,
                                     self.day_of_week)
                loss = _loss(*net(x, scale), target, scale)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, batches = total + loss.item(), batches + 1
            history.append(total / batches)
        self.weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        self.loss_history = history
        return history

    def _network(self) -> _Net:
        if self.weights is None:
            raise RuntimeError("NeuralForecaster is not trained: call fit() or load_state_dict() first")
        if self._net is None or self._net_weights is not self.weights:
            net = _Net(self.n_inputs, self.hidden, self.horizon)
            net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.weights.items()})
            net.eval()
            self._net, self._net_weights = net, self.weights
        return self._net

    # ------------------------------------------------------------------ run time
    def _update(self, counts: np.ndarray) -> None:
        self.recent[:, :-1] = self.recent[:, 1:]
        self.recent[:, -1] = counts
        self.total += counts
        self._cache = None

    def _outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(expected counts, cumulative hazard), each (F, H), from one batched forward pass."""
        if self._cache is None:
            net = self._network()
            mean_rate = self.total / max(self.n_seen, 1)
            with torch.inference_mode(), _one_torch_thread():
                x, scale = _features(torch.from_numpy(self.recent),
                                     torch.full((self.n_functions,), self.minute, dtype=torch.int64),
                                     torch.from_numpy(mean_rate.astype(np.float32)), self.relative_inputs,
                                     self.time_of_day, self.day_of_week)
                rel, cum_hazard = net(x, scale)
                self._cache = ((rel * scale[:, None]).double().numpy(), cum_hazard.double().numpy())
        return self._cache

    def _predict(self, horizon: int) -> np.ndarray:
        rate = self._outputs()[0]
        if horizon <= self.horizon:
            return rate[:, :horizon].copy()
        return np.concatenate([rate, np.repeat(rate[:, -1:], horizon - self.horizon, axis=1)], axis=1)

    def prob_invoked(self, k: int) -> np.ndarray:
        k = check_steps(k, "k")
        cum = self._outputs()[1]
        if k <= self.horizon:
            h = cum[:, k - 1]
        else:  # beyond the trained horizon the last minute's hazard continues
            last = cum[:, -1] - (cum[:, -2] if self.horizon > 1 else 0.0)
            h = cum[:, -1] + (k - self.horizon) * last
        return np.clip(-np.expm1(-h), 0.0, 1.0)

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self._cache = None
