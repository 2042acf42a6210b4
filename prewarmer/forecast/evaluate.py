"""Offline comparison of forecasters on a per-minute count trace: error, hit rates and cost per tick.

Each forecaster is reset at the first training minute, warmed up minute by minute through the
training minutes (and any minutes between training and test), then run through the test minutes.
At each test minute t, before it sees minute t, it is scored on:
- `mae`: |predict(1) - count at t|, averaged over functions and test minutes;
- for each k, "invoked within minutes t..t+k-1", predicted "yes" when prob_invoked(k) >= 0.5:
  accuracy, precision, recall, the base rate of "yes", and the Brier score of prob_invoked(k). Only
  windows that end inside the test period are scored, so the last k-1 test minutes count for the
  MAE only.
The neural forecaster is trained on the training minutes first (never on test minutes). The
`last-value` baseline is always added. Timing: wall milliseconds of `update` per tick (all
functions; fits on the refit schedule included), of the scoring calls, and the training time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from prewarmer.forecast import make_forecaster
from prewarmer.forecast.base import check_steps
from prewarmer.forecast.neural import NeuralForecaster
from prewarmer.workloads.base import MinuteCountWorkload, Workload

BASELINE = "last-value"


def minute_counts(workload: Workload, seed: int = 0) -> np.ndarray:
    """(F, minutes) int counts of any workload: the counts of a MinuteCountWorkload, else binned arrivals."""
    if isinstance(workload, MinuteCountWorkload):
        return workload.counts
    n_min = int(np.ceil(workload.horizon_s / 60.0))
    counts = np.zeros((len(workload.functions), n_min), np.int32)
    for chunk in workload.chunks(seed):
        np.add.at(counts, (chunk.func, np.minimum((chunk.t // 60.0).astype(np.int64), n_min - 1)), 1)
    return counts


def _window(w: tuple[int, int], what: str, n_minutes: int) -> tuple[int, int]:
    a, b = (int(v) for v in w)
    if a < 0 or b <= a:
        raise ValueError(f"bad {what} minutes {a}:{b}: need 0 <= START < END")
    if b > n_minutes:
        raise ValueError(f"{what} minutes {a}:{b} out of range: the workload has {n_minutes} minutes")
    return a, b


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def evaluate(workload: Workload, train: tuple[int, int], test: tuple[int, int], names: Sequence[str],
             ks: Sequence[int] = (1, 5, 10), seed: int = 0, neural_epochs: int = 8,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Score forecasters `names` (plus the last-value baseline) on `test`, warmed up (and trained) on `train`.

    Windows are minutes (start, end) relative to the workload's first minute, end exclusive;
    the test period must start at or after the end of the training period. `progress(name, done,
    total)` is called once per simulated minute. Returns {name: {"mae", "k=K": {...}, "timing": {...}}}.
    """
    counts = minute_counts(workload, seed)
    n_f, n_min = counts.shape
    a, b = _window(train, "train", n_min)
    c, d = _window(test, "test", n_min)
    if c < b:
        raise ValueError(f"test minutes {c}:{d} overlap or precede the training minutes {a}:{b}: "
                         "the test period must start at or after the end of the training period")
    ks = sorted({check_steps(k, "k") for k in ks})
    if not ks:
        raise ValueError("give at least one k")
    names = list(dict.fromkeys([*names, BASELINE]))
    makers = {n: make_forecaster(n) for n in names}  # unknown names fail before any work
    start_minute = int(getattr(workload, "start_minute", 0))
    if {"holt-winters", "arima"} & set(names):
        # Import statsmodels now so that its seconds of import time are not counted as update time.
        import statsmodels.tsa.holtwinters  # noqa: F401
        import statsmodels.tsa.statespace.sarimax  # noqa: F401

    # Labels once for all forecasters: invoked[f, t] and "invoked within [t, t+k)" as prefix sums.
    invoked = counts[:, c:d] > 0
    occ_cum = np.concatenate([np.zeros((n_f, 1), np.int64), np.cumsum(invoked, axis=1)], axis=1)
    results: dict[str, dict] = {}
    for name in names:
        fc = makers[name]
        fit_s = 0.0
        if isinstance(fc, NeuralForecaster):
            t0 = time.perf_counter()
            fc.fit(counts[:, a:b], epochs=neural_epochs, seed=seed, start_minute=start_minute + a)
            fit_s = time.perf_counter() - t0
        fc.reset(n_f, start_minute=start_minute + a)
        upd_ms: list[float] = []
        score_ms: list[float] = []
        abs_err = 0.0
        conf = {k: np.zeros(4, np.int64) for k in ks}  # tp, fp, fn, tn
        brier = dict.fromkeys(ks, 0.0)
        scored = dict.fromkeys(ks, 0)
        total = d - a
        for m in range(a, d):
            if m >= c:
                i = m - c
                t0 = time.perf_counter()
                pred = fc.predict(1)[:, 0]
                probs = {k: fc.prob_invoked(k) for k in ks if i + k <= d - c}
                score_ms.append(1000.0 * (time.perf_counter() - t0))
                abs_err += float(np.abs(pred - counts[:, m]).sum())
                for k, p in probs.items():
                    actual = occ_cum[:, i + k] > occ_cum[:, i]
                    yes = p >= 0.5
                    conf[k] += [np.sum(yes & actual), np.sum(yes & ~actual), np.sum(~yes & actual),
                                np.sum(~yes & ~actual)]
                    brier[k] += float(np.sum((p - actual) ** 2))
                    scored[k] += n_f
            t0 = time.perf_counter()
            fc.update(counts[:, m])
            upd_ms.append(1000.0 * (time.perf_counter() - t0))
            if progress is not None:
                progress(name, m - a + 1, total)
        res: dict = {"mae": abs_err / (n_f * (d - c)) if n_f else None}
        for k in ks:
            tp, fp, fn, tn = (int(v) for v in conf[k])
            res[f"k={k}"] = {"accuracy": _ratio(tp + tn, scored[k]), "precision": _ratio(tp, tp + fp),
                             "recall": _ratio(tp, tp + fn), "base_rate": _ratio(tp + fn, scored[k]),
                             "brier": _ratio(brier[k], scored[k]), "n": scored[k]}
        upd = np.asarray(upd_ms)
        res["timing"] = {"update_ms_mean": float(upd.mean()), "update_ms_p50": float(np.median(upd)),
                         "update_ms_max": float(upd.max()), "score_ms_mean": float(np.mean(score_ms)),
                         "fit_s": round(fit_s, 3), "ticks": len(upd), "functions": n_f,
                         "fits": int(getattr(fc, "fits", 0))}
        res["forecaster"] = fc.describe()
        results[name] = res
    return results
