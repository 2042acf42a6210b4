"""Seeded synthetic workloads: Poisson functions given on the command line, and an Azure-like mix.

`PoissonWorkload` generates continuous-time arrivals lazily, chunk by chunk, from one random
stream per function. `azure_like` builds a per-minute count matrix whose classes (timers, diurnal
HTTP, bursty, rare) and duration / memory profiles resemble the Azure Functions 2019 trace, and
replays it through `MinuteCountWorkload` like a real trace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prewarmer.workloads.base import (
    DURATION_QUANTILES,
    ArrivalChunk,
    FunctionTable,
    MinuteCountWorkload,
    Workload,
    function_rng,
    merge_sorted,
)

# --------------------------------------------------------------------------------------------------
# Poisson functions
# --------------------------------------------------------------------------------------------------


class PoissonFunction(BaseModel):
    """One function with homogeneous Poisson arrivals and exponential warm service times."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    rate_per_s: float = Field(gt=0)
    service_s: float = Field(gt=0)  # mean of the exponential warm execution time
    # None leaves the start-up time to the run's start-up model (NaN in the FunctionTable).
    cold_start_s: float | None = Field(default=None, ge=0)
    memory_mb: float = Field(default=256.0, gt=0)


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TIME_RE = re.compile(rf"^\s*({_NUMBER})\s*(ms|s|sec|min|m|h)?\s*$", re.IGNORECASE)
_RATE_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:/\s*(s|sec|min|m|h|hr)\s*)?$", re.IGNORECASE)
_MEMORY_RE = re.compile(rf"^\s*({_NUMBER})\s*(mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_TIME_UNITS = {None: 1.0, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RATE_UNITS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 1 / 60.0, "min": 1 / 60.0, "h": 1 / 3600.0,
               "hr": 1 / 3600.0}
_MEMORY_UNITS = {None: 1.0, "mb": 1.0, "mib": 1.0, "gb": 1024.0, "gib": 1024.0}

# Accepted spellings of each field (short CLI form first, then the model's own field name).
_FIELD_ALIASES = {
    "name": "name",
    "rate": "rate_per_s", "rate_per_s": "rate_per_s",
    "service": "service_s", "service_s": "service_s",
    "cold": "cold_start_s", "cold_start": "cold_start_s", "cold_start_s": "cold_start_s",
    "memory": "memory_mb", "mem": "memory_mb", "memory_mb": "memory_mb",
}


def _parse_quantity(key: str, value: str, pattern: re.Pattern[str], units: dict, minimum: float,
                    strict: bool, expected: str) -> float:
    m = pattern.match(value)
    if m is None:
        raise ValueError(f"bad {key} {value!r}: expected {expected}")
    unit = m.group(2).lower() if m.group(2) else None
    x = float(m.group(1)) * units[unit]
    if not math.isfinite(x) or (x <= minimum if strict else x < minimum):
        raise ValueError(f"bad {key} {value!r}: must be {'>' if strict else '>='} {minimum:g}")
    return x


def parse_poisson_function(text: str) -> PoissonFunction:
    """Parse `name=api,rate=5,service=0.12,cold=1.2,memory=256`.

    rate: per second unless suffixed `/s`, `/m`, `/h` (`30/m`); service and cold: seconds unless
    suffixed `ms`, `s`, `m`, `h` (`120ms`); memory: MB, or `mb` / `gb`. `cold` may be omitted to let
    the run's start-up model decide; `memory` defaults to 256 MB.
    """
    fields: dict[str, object] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"bad field {item!r} in {text!r}: expected key=value")
        field = _FIELD_ALIASES.get(key.lower())
        if field is None:
            raise ValueError(f"unknown field {key!r} in {text!r}: expected one of name, rate, service, "
                             "cold, memory")
        if field in fields:
            raise ValueError(f"field {key!r} given twice in {text!r}")
        if field == "name":
            if not value:
                raise ValueError(f"bad name {value!r}: must not be empty")
            fields[field] = value
        elif field == "rate_per_s":
            fields[field] = _parse_quantity(key, value, _RATE_RE, _RATE_UNITS, 0.0, True,
                                            "a number per second, or with /s, /m, /h")
        elif field == "memory_mb":
            fields[field] = _parse_quantity(key, value, _MEMORY_RE, _MEMORY_UNITS, 0.0, True,
                                            "megabytes, or with mb / gb")
        else:
            fields[field] = _parse_quantity(key, value, _TIME_RE, _TIME_UNITS, 0.0,
                                            field == "service_s", "seconds, or with ms, s, m, h")
    for required, key in (("name", "name"), ("rate_per_s", "rate"), ("service_s", "service")):
        if required not in fields:
            raise ValueError(f"missing field {key!r} in {text!r}")
    return PoissonFunction(**fields)


class _PoissonStream:
    """Arrivals of one function, drawn in fixed-size blocks from its own generator.

    The block size depends only on the function, and a block is drawn only when the previous one is
    used up, so the sequence of draws (hence every arrival) does not depend on the chunk size.
    """

    def __init__(self, fn: PoissonFunction, seed: int) -> None:
        self.rng = function_rng(seed, fn.name)
        self.mean_gap = 1.0 / fn.rate_per_s
        self.service_s = fn.service_s
        # About an hour of arrivals per block: few refills for busy functions, little waste for quiet ones.
        self.block = int(min(1 << 17, max(64, math.ceil(fn.rate_per_s * 3600.0))))
        self.last_t = 0.0
        self.t = np.empty(0)
        self.d = np.empty(0)
        self.pos = 0

    def _refill(self) -> None:
        gaps = self.rng.exponential(self.mean_gap, self.block)
        self.d = self.rng.exponential(self.service_s, self.block)
        self.t = self.last_t + np.cumsum(gaps)
        self.last_t = float(self.t[-1])
        self.pos = 0

    def take(self, end: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Arrivals before `end` not returned yet."""
        ts, ds = [], []
        while True:
            if self.pos == len(self.t):
                self._refill()
            k = int(np.searchsorted(self.t, end, side="left"))
            if k > self.pos:
                ts.append(self.t[self.pos:k])
                ds.append(self.d[self.pos:k])
            self.pos = k
            if k < len(self.t):  # the next arrival is at or after `end`: keep it for the next chunk
                return ts, ds


class PoissonWorkload(Workload):
    """Independent homogeneous Poisson arrivals per function over [0, duration_s)."""

    def __init__(self, functions: list[PoissonFunction], duration_s: float) -> None:
        if not functions:
            raise ValueError("a Poisson workload needs at least one function")
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"bad duration_s {duration_s!r}: must be > 0")
        names = [f.name for f in functions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            # Streams are keyed by name: duplicates would replay identical arrivals.
            raise ValueError(f"duplicate function names: {', '.join(dupes)}")
        self.specs = list(functions)
        self.horizon_s = float(duration_s)
        n = len(functions)
        self.functions = FunctionTable(
            names=names,
            apps=np.arange(n, dtype=np.int32),
            app_names=list(names),
            memory_mb=np.array([f.memory_mb for f in functions], dtype=np.float64),
            cold_start_s=np.array([np.nan if f.cold_start_s is None else f.cold_start_s
                                   for f in functions], dtype=np.float64),
            triggers=["others"] * n,
        )

    def describe(self) -> dict:
        return {"model": "poisson", "duration_s": self.horizon_s,
                "functions": [{"name": f.name, "rate_per_s": f.rate_per_s, "service_s": f.service_s,
                               "cold_start_s": f.cold_start_s, "memory_mb": f.memory_mb}
                              for f in self.specs]}

    def chunks(self, seed: int, chunk_s: float = 3600.0,
               functions: np.ndarray | None = None) -> Iterator[ArrivalChunk]:
        if not (math.isfinite(chunk_s) and chunk_s > 0):
            raise ValueError(f"bad chunk_s {chunk_s!r}: must be > 0")
        idx = np.arange(len(self.specs)) if functions is None else np.asarray(functions, dtype=np.int64)
        streams = [(int(f), _PoissonStream(self.specs[int(f)], seed)) for f in idx]
        n_chunks = max(1, math.ceil(self.horizon_s / chunk_s))
        for i in range(n_chunks):
            # Multiply rather than accumulate so boundaries do not drift.
            start, end = i * chunk_s, min(self.horizon_s, (i + 1) * chunk_s)
            pt, pf, pd = [], [], []
            for f, stream in streams:
                ts, ds = stream.take(end)
                for t, d in zip(ts, ds, strict=True):
                    pt.append(t)
                    pf.append(np.full(len(t), f, np.int32))
                    pd.append(d)
            yield merge_sorted(start, end, pt, pf, pd)


# --------------------------------------------------------------------------------------------------
# Azure-like mix
# --------------------------------------------------------------------------------------------------

TIMER_PERIODS_MIN = np.array([1, 2, 5, 10, 15, 30, 60, 120])
# 1, 5 and 60 minute schedules dominate real cron-like triggers.
_TIMER_PERIOD_WEIGHTS = np.array([0.20, 0.08, 0.20, 0.14, 0.10, 0.10, 0.12, 0.06])
CLASS_SHARES = {"timer": 0.30, "http": 0.35, "bursty": 0.15, "rare": 0.20}

# Normal quantiles at the duration percentile levels; the 0% / 100% levels use 0.1% / 99.9%
# because a lognormal has no finite minimum or maximum.
_DURATION_Z = np.array([NormalDist().inv_cdf(float(q)) for q in np.clip(DURATION_QUANTILES, 0.001, 0.999)])


class AzureLikeWorkload(MinuteCountWorkload):
    """A `MinuteCountWorkload` that also keeps each function's generating class and parameters."""

    def __init__(self, *args, profiles: list[dict], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.profiles = profiles  # per function: {"class": ..., parameters of that class}


def _class_sizes(n: int) -> dict[str, int]:
    sizes = {c: int(round(s * n)) for c, s in CLASS_SHARES.items() if c != "rare"}
    sizes["rare"] = n - sum(sizes.values())
    if sizes["rare"] < 0:  # only possible for tiny n: rounding overshoots
        sizes["http"] += sizes["rare"]
        sizes["rare"] = 0
    return sizes


def _stratified_lognormal(rng: np.random.Generator, n: int, median: float, sigma: float,
                          lo: float, hi: float) -> np.ndarray:
    """Lognormal draws, one per quantile stratum, so a class total does not hinge on a lucky tail."""
    u = (rng.permutation(n) + rng.random(n)) / max(n, 1)
    z = np.array([NormalDist().inv_cdf(float(x)) for x in np.clip(u, 1e-9, 1 - 1e-9)])
    return np.clip(median * np.exp(sigma * z), lo, hi)


def _poisson_by_rows(rng: np.random.Generator, n: int, minutes: int,
                     rate_rows: Callable[[slice], np.ndarray]) -> np.ndarray:
    """Poisson counts of a (n, minutes) rate matrix built a block of rows at a time.

    Bounds the float64 rate matrix to ~8 MB for long horizons; the block size depends only on the
    shape, so the draws stay deterministic for the seed.
    """
    counts = np.empty((n, minutes), np.int32)
    step = max(1, (1 << 20) // minutes)
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        counts[rows] = rng.poisson(rate_rows(rows))
    return counts


def _timer_counts(rng: np.random.Generator, n: int, minutes: int) -> tuple[np.ndarray, list[dict]]:
    period = rng.choice(TIMER_PERIODS_MIN, size=n, p=_TIMER_PERIOD_WEIGHTS)
    # Many schedules are cron expressions aligned to the hour; the rest start at a random offset.
    phase = np.where(rng.random(n) < 0.4, 0, (rng.random(n) * period).astype(np.int64))
    per_fire = rng.choice([1, 2, 3, 4], size=n, p=[0.75, 0.15, 0.07, 0.03])
    # A few timers drift by a minute now and then (late schedulers). Never for 1-2 minute periods,
    # where a shifted fire would land on the next one and the schedule would stop being visible.
    jitter = np.where((rng.random(n) < 0.25) & (period >= 5), rng.uniform(0.02, 0.15, n), 0.0)
    m = np.arange(minutes)
    fires = (m[None, :] - phase[:, None]) % period[:, None] == 0
    rows, cols = np.nonzero(fires)
    shift = np.where(rng.random(len(rows)) < jitter[rows], rng.choice([-1, 1], size=len(rows)), 0)
    moved = cols + shift
    cols = np.where((moved >= 0) & (moved < minutes), moved, cols)
    counts = np.zeros((n, minutes), np.int32)
    counts[rows, cols] = per_fire[rows]  # fires of one timer never collide: period >= 5 when shifted
    profiles = [{"class": "timer", "period_min": int(period[i]), "phase_min": int(phase[i]),
                 "per_fire": int(per_fire[i]), "jitter_prob": float(jitter[i])} for i in range(n)]
    return counts, profiles


def _http_counts(rng: np.random.Generator, n: int, minutes: int) -> tuple[np.ndarray, list[dict]]:
    # 5th-95th percentiles ~0.05-130 per minute, with a few heavier functions carrying much of
    # the volume, as in Azure where a small fraction of functions makes most invocations.
    base = _stratified_lognormal(rng, n, median=2.5, sigma=2.4, lo=0.01, hi=500.0)
    amp = rng.uniform(0.2, 0.9, n)
    # Peaks cluster in the working day (sin peaks at phase + 360 min, i.e. around 14:00).
    phase = rng.normal(480.0, 180.0, n)
    t = np.arange(minutes, dtype=np.float64)
    counts = _poisson_by_rows(rng, n, minutes, lambda r: base[r, None] * (
        1.0 + amp[r, None] * np.sin(2 * np.pi * (t[None, :] - phase[r, None]) / 1440.0)))
    profiles = [{"class": "http", "base_per_min": float(base[i]), "amplitude": float(amp[i]),
                 "phase_min": float(phase[i])} for i in range(n)]
    return counts, profiles


def _bursty_counts(rng: np.random.Generator, n: int, minutes: int) -> tuple[np.ndarray, list[dict]]:
    burst_rate = _stratified_lognormal(rng, n, median=600.0, sigma=1.0, lo=20.0, hi=5000.0)
    quiet_rate = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.005, 0.05, n))
    mean_gap = rng.uniform(30.0, 180.0, n)  # minutes of quiet between bursts
    mean_len = rng.uniform(2.0, 6.0, n)  # minutes per burst
    # Enough on/off cycles to cover the horizon even if every gap were at its 10-minute floor.
    k = minutes // 10 + 2
    gaps = np.maximum(10, np.rint(rng.exponential(mean_gap[:, None], (n, k)))).astype(np.int64)
    lens = np.maximum(1, np.rint(rng.exponential(mean_len[:, None], (n, k)))).astype(np.int64)
    # Start somewhere inside the first cycle rather than always with a full quiet gap.
    gaps[:, 0] = (rng.random(n) * (gaps[:, 0] + lens[:, 0])).astype(np.int64)
    starts = np.cumsum(gaps, axis=1) + np.concatenate([np.zeros((n, 1), np.int64),
                                                       np.cumsum(lens, axis=1)[:, :-1]], axis=1)
    ends = starts + lens
    edges = np.zeros((n, minutes + 1), np.int64)
    rows = np.repeat(np.arange(n), k)
    np.add.at(edges, (rows, np.minimum(starts.ravel(), minutes)), 1)
    np.add.at(edges, (rows, np.minimum(ends.ravel(), minutes)), -1)
    on = np.cumsum(edges, axis=1)[:, :minutes] > 0
    counts = _poisson_by_rows(rng, n, minutes,
                              lambda r: np.where(on[r], burst_rate[r, None], quiet_rate[r, None]))
    profiles = [{"class": "bursty", "burst_per_min": float(burst_rate[i]),
                 "quiet_per_min": float(quiet_rate[i]), "mean_gap_min": float(mean_gap[i]),
                 "mean_burst_min": float(mean_len[i])} for i in range(n)]
    return counts, profiles


def _rare_counts(rng: np.random.Generator, n: int, minutes: int) -> tuple[np.ndarray, list[dict]]:
    per_day = rng.uniform(1.0, 12.0, n)
    # At least one call so every generated function takes part in the simulation.
    total = np.maximum(1, rng.poisson(per_day * minutes / 1440.0))
    rows = np.repeat(np.arange(n), total)
    counts = np.zeros((n, minutes), np.int32)
    np.add.at(counts, (rows, rng.integers(0, minutes, len(rows))), 1)
    profiles = [{"class": "rare", "per_day": float(per_day[i])} for i in range(n)]
    return counts, profiles


def azure_like(n_functions: int = 200, duration_s: float = 6 * 3600, seed: int = 1) -> AzureLikeWorkload:
    """A synthetic mix shaped like the Azure Functions 2019 trace, as per-minute counts.

    About 30% timers, 35% diurnal HTTP, 15% bursty queue/event consumers and 20% rarely called
    functions; lognormal durations (median 50 ms - 5 s) and app memory (median ~150 MB). Every draw
    comes from `np.random.default_rng(seed)`. `duration_s` is rounded up to whole minutes.
    """
    if n_functions < 1:
        raise ValueError(f"bad n_functions {n_functions!r}: must be >= 1")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"bad duration_s {duration_s!r}: must be > 0")
    minutes = max(1, math.ceil(duration_s / 60.0 - 1e-9))
    rng = np.random.default_rng(seed)
    sizes = _class_sizes(n_functions)
    builders = {"timer": _timer_counts, "http": _http_counts, "bursty": _bursty_counts, "rare": _rare_counts}
    blocks, profiles, names, triggers = [], [], [], []
    for cls, build in builders.items():
        n = sizes[cls]
        if n == 0:
            continue
        counts, prof = build(rng, n, minutes)
        blocks.append(counts)
        profiles.extend(prof)
        width = max(3, len(str(n - 1)))
        names.extend(f"{cls}-{i:0{width}d}" for i in range(n))
        if cls == "timer":
            triggers.extend(["timer"] * n)
        elif cls == "http":
            triggers.extend(["http"] * n)
        elif cls == "bursty":
            triggers.extend(rng.choice(["queue", "event"], size=n).tolist())
        else:
            triggers.extend(rng.choice(["http", "queue", "event"], size=n, p=[0.5, 0.3, 0.2]).tolist())
    counts = np.concatenate(blocks, axis=0)
    n = n_functions

    # Medians spread log-normally over 50 ms - 5 s; sigma sets the tail. Tuned so about half of
    # the functions average under a second, as in Shahrad et al.
    median_ms = np.clip(np.exp(rng.normal(math.log(550.0), 1.1, n)), 50.0, 5000.0)
    sigma = rng.uniform(0.3, 1.6, n)
    duration_pct_ms = median_ms[:, None] * np.exp(sigma[:, None] * _DURATION_Z[None, :])
    for i in range(n):
        profiles[i].update(duration_median_ms=float(median_ms[i]), duration_sigma=float(sigma[i]))

    memory_mb = np.clip(150.0 * np.exp(rng.normal(0.0, 0.6, n)), 64.0, 1536.0)
    table = FunctionTable(
        names=names,
        apps=np.arange(n, dtype=np.int32),  # one app per function, as in the public sample
        app_names=[f"app-{name}" for name in names],
        memory_mb=memory_mb,
        cold_start_s=np.full(n, np.nan),
        triggers=triggers,
    )
    description = {"model": "azure-like", "seed": seed, "n_functions": n_functions,
                   "duration_s": 60.0 * minutes, "classes": sizes}
    return AzureLikeWorkload(table, counts, duration_pct_ms, description=description, profiles=profiles)
