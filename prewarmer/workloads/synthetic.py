"""Seeded synthetic workloads: Poisson functions given on the command line, and an Azure-like mix.

`PoissonWorkload` generates continuous-time arrivals lazily, chunk by chunk, from one random
stream per function. `azure_like` builds a per-minute count matrix whose classes (timers, diurnal
HTTP, bursty, rare) and duration / memory profiles resemble the Azure Functions 2019 trace, and
replays it through `MinuteCountWorkload` like a real trace. Above `STREAM_CELLS` function-minutes
(50k functions x 14 days would be 1e9 counts, 4 GB) it returns an `AzureLikeStream` instead: the same
model, generated block by block while replaying, so memory follows what is simulated, not the horizon.
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


#: Functions x minutes above which `azure_like` generates while replaying (`AzureLikeStream`) instead of
#: materializing the count matrix (2^26 int32 counts = 256 MB, ~0.5 GB at the peak of generation).
STREAM_CELLS = 1 << 26


def azure_like(n_functions: int = 200, duration_s: float = 6 * 3600, seed: int = 1,
               stream: bool | None = None) -> AzureLikeWorkload | AzureLikeStream:
    """A synthetic mix shaped like the Azure Functions 2019 trace, as per-minute counts.

    About 30% timers, 35% diurnal HTTP, 15% bursty queue/event consumers and 20% rarely called
    functions; lognormal durations (median 50 ms - 5 s) and app memory (median ~150 MB). Every draw
    comes from `np.random.default_rng(seed)`. `duration_s` is rounded up to whole minutes.

    `stream=None` (default) materializes the counts up to `STREAM_CELLS` function-minutes and streams
    above; `stream=True` / `False` forces either. A streamed workload is the same model but a different
    sample for the same seed (see `AzureLikeStream`).
    """
    if n_functions < 1:
        raise ValueError(f"bad n_functions {n_functions!r}: must be >= 1")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"bad duration_s {duration_s!r}: must be > 0")
    minutes = max(1, math.ceil(duration_s / 60.0 - 1e-9))
    if stream is None:
        stream = n_functions * minutes > STREAM_CELLS
    if stream:
        return AzureLikeStream(n_functions, 60.0 * minutes, seed)
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


# --------------------------------------------------------------------------------------------------
# Azure-like mix, generated while replaying
# --------------------------------------------------------------------------------------------------

_TAG_PARAMS, _TAG_COUNTS, _TAG_PLACE, _TAG_JITTER = 0x50415241, 0x434E5453, 0x504C4143, 0x4A495454
_CLASS_CODE = {"timer": 0, "http": 1, "bursty": 2, "rare": 3}
_U64 = np.uint64


def _hash_uniform(key: int, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """A uniform in [0, 1) per (function, minute): splitmix64 of the pair, stateless and order-free."""
    with np.errstate(over="ignore"):
        x = (f.astype(_U64) * _U64(0x9E3779B97F4A7C15) + m.astype(_U64) * _U64(0xD1B54A32D192ED03)
             + _U64(key & 0xFFFFFFFFFFFFFFFF))
        x ^= x >> _U64(30)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= x >> _U64(27)
        x *= _U64(0x94D049BB133111EB)
        x ^= x >> _U64(31)
    return (x >> _U64(11)).astype(np.float64) * 2.0**-53


class AzureLikeStream(Workload):
    """The azure-like mix generated block by block while replaying: memory follows the simulated rate.

    Same classes and parameter distributions as `azure_like`, but not the same sample for a seed: the
    materialized generator draws every count from one sequential stream (a function's parameters come
    after all earlier functions' counts), which cannot be cut into time blocks. Here

    * parameters come from `default_rng([seed, tag])`, all functions' at construction (O(functions));
      bursty on/off periods and rare calls are laid out then too (a few per function and day);
    * counts of a block of `BLOCK_MIN` minutes for a group of `group_size` consecutive functions come
      from `default_rng([seed, tag, block, group])`; timer jitter is a hash of (function, minute);
    * arrival times within the minute and durations come from `default_rng([replay seed, tag, block,
      group])`, vectorized over the group.

    So arrivals depend on neither the chunk size nor which functions a worker replays (a group is
    generated whole and filtered), and `prewarmer.sim.replay.shard_functions` is fastest when shards
    are whole groups. `rate_scale` multiplies the HTTP and bursty rates (timers and rare calls keep
    theirs), for benchmarks that want the full trace's functions and days at a smaller volume.
    """

    BLOCK_MIN = 15

    def __init__(self, n_functions: int, duration_s: float, seed: int = 1, rate_scale: float = 1.0) -> None:
        if n_functions < 1:
            raise ValueError(f"bad n_functions {n_functions!r}: must be >= 1")
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"bad duration_s {duration_s!r}: must be > 0")
        if not (math.isfinite(rate_scale) and rate_scale > 0):
            raise ValueError(f"bad rate_scale {rate_scale!r}: must be > 0")
        n = n_functions
        self.minutes = minutes = max(1, math.ceil(duration_s / 60.0 - 1e-9))
        self.horizon_s = 60.0 * minutes
        self.seed, self.rate_scale, self.n = seed, float(rate_scale), n
        self.group_size = min(256, max(1, math.ceil(n / 64)))
        rng = np.random.default_rng([seed, _TAG_PARAMS])
        self.sizes = sizes = _class_sizes(n)
        names: list[str] = []
        triggers: list[str] = []
        self.cls = np.empty(n, np.int8)
        f32 = lambda: np.zeros(n)  # noqa: E731
        self.period, self.phase, self.per_fire, self.jitter = (np.ones(n, np.int64), np.zeros(n, np.int64),
                                                               np.zeros(n, np.int64), f32())
        self.base, self.amp, self.hphase, self.burst, self.quiet = f32(), f32(), f32(), f32(), f32()
        self.profiles: list[dict] = []
        bursts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        rare_f: np.ndarray = np.empty(0, np.int64)
        rare_m: np.ndarray = np.empty(0, np.int64)
        f0 = 0
        for cls in ("timer", "http", "bursty", "rare"):
            k = sizes[cls]
            if k == 0:
                continue
            sl = slice(f0, f0 + k)
            self.cls[sl] = _CLASS_CODE[cls]
            width = max(3, len(str(k - 1)))
            names.extend(f"{cls}-{i:0{width}d}" for i in range(k))
            if cls == "timer":
                period = rng.choice(TIMER_PERIODS_MIN, size=k, p=_TIMER_PERIOD_WEIGHTS)
                self.period[sl] = period
                self.phase[sl] = np.where(rng.random(k) < 0.4, 0, (rng.random(k) * period).astype(np.int64))
                self.per_fire[sl] = rng.choice([1, 2, 3, 4], size=k, p=[0.75, 0.15, 0.07, 0.03])
                self.jitter[sl] = np.where((rng.random(k) < 0.25) & (period >= 5), rng.uniform(0.02, 0.15, k), 0.0)
                triggers.extend(["timer"] * k)
                self.profiles.extend({"class": "timer", "period_min": int(self.period[i]),
                                      "phase_min": int(self.phase[i]), "per_fire": int(self.per_fire[i]),
                                      "jitter_prob": float(self.jitter[i])} for i in range(f0, f0 + k))
            elif cls == "http":
                self.base[sl] = _stratified_lognormal(rng, k, median=2.5, sigma=2.4, lo=0.01, hi=500.0)
                self.amp[sl] = rng.uniform(0.2, 0.9, k)
                self.hphase[sl] = rng.normal(480.0, 180.0, k)
                triggers.extend(["http"] * k)
                self.profiles.extend({"class": "http", "base_per_min": float(self.base[i]),
                                      "amplitude": float(self.amp[i]), "phase_min": float(self.hphase[i])}
                                     for i in range(f0, f0 + k))
            elif cls == "bursty":
                self.burst[sl] = _stratified_lognormal(rng, k, median=600.0, sigma=1.0, lo=20.0, hi=5000.0)
                self.quiet[sl] = np.where(rng.random(k) < 0.5, 0.0, rng.uniform(0.005, 0.05, k))
                mean_gap, mean_len = rng.uniform(30.0, 180.0, k), rng.uniform(2.0, 6.0, k)
                bursts.append(self._on_periods(rng, f0, mean_gap, mean_len))
                triggers.extend(rng.choice(["queue", "event"], size=k).tolist())
                self.profiles.extend({"class": "bursty", "burst_per_min": float(self.burst[f0 + i]),
                                      "quiet_per_min": float(self.quiet[f0 + i]), "mean_gap_min": float(mean_gap[i]),
                                      "mean_burst_min": float(mean_len[i])} for i in range(k))
            else:
                per_day = rng.uniform(1.0, 12.0, k)
                total = np.maximum(1, rng.poisson(per_day * minutes / 1440.0))
                rare_f = np.repeat(np.arange(f0, f0 + k), total)
                rare_m = rng.integers(0, minutes, len(rare_f))
                triggers.extend(rng.choice(["http", "queue", "event"], size=k, p=[0.5, 0.3, 0.2]).tolist())
                self.profiles.extend({"class": "rare", "per_day": float(per_day[i])} for i in range(k))
            f0 += k
        # Bursty on-periods sorted by start; rare calls sorted by minute (both found per block by bisection).
        bs, be, bf = (np.concatenate(x) for x in zip(*bursts, strict=True)) if bursts else (np.empty(0, np.int64),) * 3
        order = np.argsort(bs, kind="stable")
        self.b_start, self.b_end, self.b_func = bs[order], be[order], bf[order]
        self.max_burst = int((be - bs).max(initial=0))
        order = np.argsort(rare_m, kind="stable")
        self.rare_m, self.rare_f = rare_m[order], rare_f[order]

        median_ms = np.clip(np.exp(rng.normal(math.log(550.0), 1.1, n)), 50.0, 5000.0)
        sigma = rng.uniform(0.3, 1.6, n)
        self.duration_pct_ms = median_ms[:, None] * np.exp(sigma[:, None] * _DURATION_Z[None, :])
        for i in range(n):
            self.profiles[i].update(duration_median_ms=float(median_ms[i]), duration_sigma=float(sigma[i]))
        memory_mb = np.clip(150.0 * np.exp(rng.normal(0.0, 0.6, n)), 64.0, 1536.0)
        self.functions = FunctionTable(names=names, apps=np.arange(n, dtype=np.int32),
                                       app_names=[f"app-{name}" for name in names], memory_mb=memory_mb,
                                       cold_start_s=np.full(n, np.nan), triggers=triggers)

    def _on_periods(self, rng: np.random.Generator, f0: int, mean_gap: np.ndarray,
                    mean_len: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Alternating quiet gaps (>= 10 min) and bursts (>= 1 min) per function up to the horizon."""
        k, minutes = len(mean_gap), self.minutes
        pos = np.zeros(k, np.int64)
        active = np.arange(k)
        out_s, out_e, out_f = [], [], []
        first = True
        while active.size:
            c = 32  # cycles per round for the functions not yet at the horizon
            gaps = np.maximum(10, np.rint(rng.exponential(mean_gap[active, None], (active.size, c)))).astype(np.int64)
            lens = np.maximum(1, np.rint(rng.exponential(mean_len[active, None], (active.size, c)))).astype(np.int64)
            if first:  # start somewhere inside the first cycle
                gaps[:, 0] = (rng.random(active.size) * (gaps[:, 0] + lens[:, 0])).astype(np.int64)
                first = False
            ends = pos[active, None] + np.cumsum(gaps + lens, axis=1)
            starts = ends - lens
            keep = starts < minutes
            rows = np.broadcast_to(active[:, None], keep.shape)[keep]
            out_s.append(starts[keep])
            out_e.append(np.minimum(ends[keep], minutes))
            out_f.append(rows + f0)
            pos[active] = ends[:, -1]
            active = active[pos[active] < minutes]
        return np.concatenate(out_s), np.concatenate(out_e), np.concatenate(out_f)

    # ------------------------------------------------------------------ contract
    def describe(self) -> dict:
        return {"model": "azure-like", "generation": "streamed (AzureLikeStream)", "seed": self.seed,
                "n_functions": self.n, "duration_s": self.horizon_s, "classes": self.sizes,
                "rate_scale": self.rate_scale, "block_min": self.BLOCK_MIN, "group_size": self.group_size,
                "arrivals": "uniform within each minute", "durations": "inverse CDF, linear between percentiles"}

    def function_weights(self) -> np.ndarray:
        """Expected invocations per function over the horizon (balances the shards of a parallel replay)."""
        minutes, w = self.minutes, np.zeros(self.n)
        timer = self.cls == 0
        w[timer] = self.per_fire[timer] * np.ceil((minutes - self.phase[timer]) / self.period[timer])
        w += self.base * minutes * self.rate_scale  # (zero outside HTTP)
        w += self.quiet * minutes * self.rate_scale
        np.add.at(w, self.b_func, (self.b_end - self.b_start) * (self.burst[self.b_func] - self.quiet[self.b_func])
                  * self.rate_scale)
        np.add.at(w, self.rare_f, 1.0)
        return w

    def block_counts(self, block: int, group: int) -> np.ndarray:
        """(functions of the group, minutes of the block) invocation counts."""
        g0, g1 = group * self.group_size, min(self.n, (group + 1) * self.group_size)
        m0, m1 = block * self.BLOCK_MIN, min(self.minutes, (block + 1) * self.BLOCK_MIN)
        rows, width = g1 - g0, m1 - m0
        counts = np.zeros((rows, width), np.int64)
        cls = self.cls[g0:g1]
        # Timers: fires on the schedule, a few moved a minute either way (a hash decides, per fire).
        t_rows = np.flatnonzero(cls == 0)
        if t_rows.size:
            f = g0 + t_rows
            fm = np.arange(max(0, m0 - 1), min(self.minutes, m1 + 1))
            fires = (fm[None, :] - self.phase[f, None]) % self.period[f, None] == 0
            r, c = np.nonzero(fires)
            fr, fmin = f[r], fm[c]
            moved = _hash_uniform(self.seed ^ _TAG_JITTER, fr, fmin) < self.jitter[fr]
            up = _hash_uniform(self.seed ^ _TAG_JITTER ^ 0x5A5A5A5A, fr, fmin) < 0.5
            dest = fmin + np.where(moved, np.where(up, 1, -1), 0)
            dest = np.where((dest >= 0) & (dest < self.minutes), dest, fmin)
            ok = (dest >= m0) & (dest < m1)
            np.add.at(counts, (t_rows[r[ok]], dest[ok] - m0), self.per_fire[fr[ok]])
        # HTTP (diurnal) and bursty (on/off) rows: Poisson counts from the (block, group) stream.
        p_rows = np.flatnonzero((cls == 1) | (cls == 2))
        if p_rows.size:
            f = g0 + p_rows
            t = np.arange(m0, m1, dtype=np.float64)
            rate = np.where((cls[p_rows] == 1)[:, None],
                            self.base[f, None] * (1.0 + self.amp[f, None]
                                                  * np.sin(2 * np.pi * (t[None, :] - self.hphase[f, None]) / 1440.0)),
                            self.quiet[f, None])
            lo = np.searchsorted(self.b_start, m0 - self.max_burst, side="left")
            hi = np.searchsorted(self.b_start, m1, side="left")
            bf, bs, be = self.b_func[lo:hi], self.b_start[lo:hi], self.b_end[lo:hi]
            sel = (bf >= g0) & (bf < g1) & (be > m0)
            if sel.any():
                local = np.full(rows, -1, np.int64)
                local[p_rows] = np.arange(p_rows.size)
                edges = np.zeros((p_rows.size, width + 1), np.int64)
                li = local[bf[sel] - g0]
                np.add.at(edges, (li, np.maximum(bs[sel], m0) - m0), 1)
                np.add.at(edges, (li, np.minimum(be[sel], m1) - m0), -1)
                on = np.cumsum(edges, axis=1)[:, :width] > 0
                rate = np.where(on, self.burst[f, None], rate)
            rng = np.random.default_rng([self.seed, _TAG_COUNTS, block, group])
            counts[p_rows] = rng.poisson(rate * self.rate_scale)
        # Rare calls laid out at construction.
        lo, hi = np.searchsorted(self.rare_m, m0), np.searchsorted(self.rare_m, m1)
        rf, rm = self.rare_f[lo:hi], self.rare_m[lo:hi]
        sel = (rf >= g0) & (rf < g1)
        if sel.any():
            np.add.at(counts, (rf[sel] - g0, rm[sel] - m0), 1)
        return counts

    def _block_arrivals(self, seed: int, block: int, groups: np.ndarray,
                        want: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m0 = block * self.BLOCK_MIN
        pt, pf, pd = [], [], []
        q = DURATION_QUANTILES
        for g in groups:
            counts = self.block_counts(block, int(g))
            total = int(counts.sum())
            if total == 0:
                continue
            rows, width = counts.shape
            cell = np.repeat(np.arange(rows * width), counts.ravel())
            f = (cell // width + int(g) * self.group_size).astype(np.int32)
            rng = np.random.default_rng([seed, _TAG_PLACE, block, int(g)])
            t = (m0 + cell % width + rng.random(total)) * 60.0
            u = rng.random(total)
            seg = np.clip(np.searchsorted(q, u, side="right") - 1, 0, len(q) - 2)
            lo, hi = self.duration_pct_ms[f, seg], self.duration_pct_ms[f, seg + 1]
            d = (lo + (u - q[seg]) / (q[seg + 1] - q[seg]) * (hi - lo)) / 1000.0
            if want is not None:
                keep = want[f]
                t, f, d = t[keep], f[keep], d[keep]
            pt.append(t)
            pf.append(f)
            pd.append(d)
        c = merge_sorted(0.0, 0.0, pt, pf, pd)
        return c.t, c.func, c.duration

    def chunks(self, seed: int, chunk_s: float = 3600.0,
               functions: np.ndarray | None = None) -> Iterator[ArrivalChunk]:
        if not (math.isfinite(chunk_s) and chunk_s > 0):
            raise ValueError(f"bad chunk_s {chunk_s!r}: must be > 0")
        want = None
        groups = np.arange(math.ceil(self.n / self.group_size))
        if functions is not None:
            idx = np.asarray(functions, dtype=np.int64)
            want = np.zeros(self.n, bool)
            want[idx] = True
            groups = np.unique(idx // self.group_size)
        n_blocks = math.ceil(self.minutes / self.BLOCK_MIN)
        buf_t, buf_f, buf_d = np.empty(0), np.empty(0, np.int32), np.empty(0)
        block, covered = 0, 0.0  # blocks generated so far, and the time they cover
        n_chunks = max(1, math.ceil(self.horizon_s / chunk_s))
        for i in range(n_chunks):
            start, end = i * chunk_s, min(self.horizon_s, (i + 1) * chunk_s)
            while covered < end and block < n_blocks:
                t, f, d = self._block_arrivals(seed, block, groups, want)
                buf_t, buf_f, buf_d = np.concatenate([buf_t, t]), np.concatenate([buf_f, f]), np.concatenate([buf_d, d])
                block += 1
                covered = min(self.horizon_s, 60.0 * self.BLOCK_MIN * block)
            k = int(np.searchsorted(buf_t, end, side="left")) if end < self.horizon_s else len(buf_t)
            yield ArrivalChunk(start, end, buf_t[:k], buf_f[:k], buf_d[:k])
            buf_t, buf_f, buf_d = buf_t[k:], buf_f[k:], buf_d[k:]
