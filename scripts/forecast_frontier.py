#!/usr/bin/env python3
"""How good is a fold model's peak forecaster on its held-out fold, and would a refit do better?

For every (function, tick) of the held-out fold's evaluation minutes (functions invoked at least 0.2 times a
tick, as the forecaster is trained), each forecast quantile is scored as a pool against the next tick's peak of
requests in flight: instances short (cold starts it would leave) and idle GB-s (instances beyond the peak, held
a tick). The quantiles trace a curve; a better forecaster has less idle memory at the same shortfall.

    .venv/bin/python scripts/forecast_frontier.py --trace ../shared/traces/azure2019-d01-sample1000 \\
        --model build/folds/fold0.pt --fold 0 --refit steps=4000 --refit steps=16000 --refit hidden=128

`--refit KEY=VALUE,...` fits a new forecaster on the fold's training functions and minutes (`steps`, `hidden`,
`lr`, and `seeds`: training pairs from that many arrival seeds) and scores it the same way; `steps=4000` with
the default seed reproduces the forecaster `prewarmer train` fits.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from prewarmer.agents import checkpoint
from prewarmer.agents.train import record_peaks, window
from prewarmer.forecast import peak as P
from prewarmer.workloads.azure2019 import load_azure2019
from prewarmer.workloads.detect import parse_minutes
from prewarmer.workloads.folds import held_out, training


def score(quantiles: np.ndarray, peak: np.ndarray, gb: np.ndarray) -> list[tuple[float, float, float]]:
    """(tau, instances short, idle GB-s) of the pool each forecast quantile provisions (`quantiles` (N, len(TAUS)),
    in instances), against the peaks that came (N,), each pool held one 60-s tick of memory `gb` (N,)."""
    out = []
    for k, tau in enumerate(P.TAUS):
        pool = np.ceil(quantiles[:, k] - 0.05)  # as `action_space.pool_size`
        short = float(np.maximum(peak - pool, 0.0).sum())
        idle = float((np.maximum(pool - peak, 0.0) * gb).sum() * 60.0)
        out.append((tau, short, idle))
    return out


def line(net: P.PeakQuantileNet, x: np.ndarray, s: np.ndarray, peak: np.ndarray, gb: np.ndarray) -> str:
    return " | ".join(f"q{round(100 * tau)} {short:,.0f} short {idle / 1e6:.2f}M GB-s"
                      for tau, short, idle in score(P._in_instances(net, x, s), peak, gb))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", required=True)
    p.add_argument("--model", required=True, help="the fold's model (prewarmer train --folds K --holdout I)")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--train-minutes", default="0:720")
    p.add_argument("--eval-minutes", default="720:1440")
    p.add_argument("--refit", action="append", default=[], metavar="KEY=VALUE,...")
    args = p.parse_args()
    torch.set_num_threads(1)
    full = load_azure2019(args.trace)
    ev = window(held_out(full, args.folds, args.fold), *parse_minutes(args.eval_minutes))
    tr = window(training(full, args.folds, args.fold), *parse_minutes(args.train_minutes))
    peaks, arrivals = record_peaks(ev, seed=0)
    x, y, s = P.training_pairs(peaks, arrivals, ev.functions.memory_mb)
    kept = arrivals.mean(axis=1) >= P.PAIR_MIN_RATE  # the functions `training_pairs` keeps, tick after tick
    gb = np.tile(np.asarray(ev.functions.memory_mb)[kept] / 1024.0, peaks.shape[1] - P.HISTORY)
    peak = y * s
    model, _ = checkpoint.load(args.model)
    print(f"{args.model}: " + line(model.forecaster, x, s, peak, gb), flush=True)
    data: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for spec in args.refit:
        kw = dict(part.split("=", 1) for part in spec.split(",") if part)
        unknown = set(kw) - {"steps", "hidden", "lr", "seeds"}
        if unknown:
            p.error(f"--refit {spec}: unknown {', '.join(sorted(unknown))} (known: steps, hidden, lr, seeds)")
        seeds = int(kw.get("seeds", 1))
        if seeds not in data:
            runs = [record_peaks(tr, seed=k) for k in range(seeds)]
            data[seeds] = (np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs]),
                           np.tile(np.asarray(tr.functions.memory_mb), seeds))
        net = P.PeakQuantileNet(hidden=int(kw.get("hidden", 64)))
        t0 = time.perf_counter()
        P.fit(net, *data[seeds], steps=int(kw.get("steps", 4000)), lr=float(kw.get("lr", 1e-3)), seed=0)
        print(f"refit {spec} ({time.perf_counter() - t0:.0f} s): " + line(net, x, s, peak, gb), flush=True)


if __name__ == "__main__":
    main()
