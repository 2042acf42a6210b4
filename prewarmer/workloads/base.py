"""Workload contract: a table of functions and a seeded stream of arrivals, chunk by chunk.

Every workload (Azure traces, synthetic generators) yields the same thing: time-sorted arrays of
(arrival time, function index, execution duration). Each function draws from its own random
stream keyed by (seed, function name), so a run gives the same arrivals whatever the chunk size
and whichever subset of functions a worker process simulates.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

#: Quantile levels of the Azure 2019 duration file (percentile_Average_{0,1,25,50,75,99,100}).
DURATION_QUANTILES = np.array([0.0, 0.01, 0.25, 0.50, 0.75, 0.99, 1.0])


class TraceError(Exception):
    """Bad workload input. Its message names the file, the line and the column when known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 column: str | None = None) -> None:
        self.path, self.line, self.column, self.reason = path, line, column, message
        where = path or ""
        if line is not None:
            where += f":{line}"
        if column is not None:
            where += f": column {column!r}"
        super().__init__(f"{where}: {message}" if where else message)


class Anomalies:
    """Recoverable problems of a trace (a duplicated row, a function without memory or duration row).

    Not strict: each kind is counted, its first occurrence kept for the message, and the loader applies
    the documented fallback; `warnings()` then says how many and where the first one is. Strict: the first
    occurrence raises its TraceError (file, line, column). Impossible values (NaN, inf, negative) are not
    anomalies: they always raise.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: dict[str, int] = {}
        self.first: dict[str, TraceError] = {}
        self.fallback: dict[str, str] = {}

    def add(self, kind: str, error: TraceError, fallback: str, n: int = 1) -> None:
        if self.strict:
            raise TraceError(f"{error.reason} (--strict)", error.path, error.line, error.column)
        self.counts[kind] = self.counts.get(kind, 0) + n
        self.first.setdefault(kind, error)
        self.fallback.setdefault(kind, fallback)

    def warnings(self) -> list[str]:
        return [f"{n} {kind}: {self.fallback[kind]}; the first: {self.first[kind]} (--strict makes this an error)"
                for kind, n in self.counts.items()]


@dataclass
class FunctionTable:
    """Static profile of the functions of a workload, one entry per function index."""

    names: list[str]
    apps: np.ndarray  # int32 app index per function (hybrid keeps one histogram per app)
    app_names: list[str]
    memory_mb: np.ndarray  # float64, held by an instance for its whole life
    cold_start_s: np.ndarray  # float64 per-function start-up time; NaN = use the start-up model
    triggers: list[str] = field(default_factory=list)
    tenants: np.ndarray | None = None  # int32 tenant (owner) index per function, for per-tenant quotas
    tenant_names: list[str] = field(default_factory=list)
    labels: list[dict[str, str]] = field(default_factory=list)  # per function (live platforms); traces have none

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: np.ndarray) -> FunctionTable:
        idx = np.asarray(idx)
        app_idx, apps = np.unique(self.apps[idx], return_inverse=True)
        return FunctionTable(
            names=[self.names[i] for i in idx],
            apps=apps.astype(np.int32),
            app_names=[self.app_names[i] for i in app_idx],
            memory_mb=self.memory_mb[idx].copy(),
            cold_start_s=self.cold_start_s[idx].copy(),
            triggers=[self.triggers[i] for i in idx] if self.triggers else [],
            tenants=self.tenants[idx].copy() if self.tenants is not None else None,
            tenant_names=list(self.tenant_names),
            labels=[self.labels[i] for i in idx] if self.labels else [],
        )


@dataclass
class ArrivalChunk:
    """Invocations arriving in [start, end), sorted by time. Indices refer to the workload's table."""

    start: float
    end: float
    t: np.ndarray  # float64 seconds since the workload start
    func: np.ndarray  # int32 function index
    duration: np.ndarray  # float64 seconds of warm execution

    def __len__(self) -> int:
        return len(self.t)


def function_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of one function: stable under slicing, sharding and chunking."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))


def merge_sorted(start: float, end: float, parts_t: list[np.ndarray], parts_f: list[np.ndarray],
                 parts_d: list[np.ndarray]) -> ArrivalChunk:
    if not parts_t:
        e = np.empty(0)
        return ArrivalChunk(start, end, e, np.empty(0, np.int32), e)
    t = np.concatenate(parts_t)
    order = np.argsort(t, kind="stable")
    return ArrivalChunk(start, end, t[order], np.concatenate(parts_f)[order].astype(np.int32),
                        np.concatenate(parts_d)[order])


class Workload(ABC):
    """A set of functions and their arrivals over [0, horizon_s)."""

    functions: FunctionTable
    horizon_s: float

    @abstractmethod
    def describe(self) -> dict:
        """Model and parameters, written into reports."""

    @abstractmethod
    def chunks(self, seed: int, chunk_s: float = 3600.0,
               functions: np.ndarray | None = None) -> Iterator[ArrivalChunk]:
        """Arrivals chunk by chunk; `functions` restricts to those indices (others never appear)."""

    def total_invocations(self) -> int | None:
        """Invocation count if known without generating (used for progress bars)."""
        return None


def sample_percentile_durations(u: np.ndarray, knots_ms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling, linear between the given percentiles. Returns seconds."""
    q = DURATION_QUANTILES
    seg = np.clip(np.searchsorted(q, u, side="right") - 1, 0, len(q) - 2)
    lo, hi = knots_ms[seg], knots_ms[seg + 1]
    w = (u - q[seg]) / (q[seg + 1] - q[seg])
    return (lo + w * (hi - lo)) / 1000.0


class MinuteCountWorkload(Workload):
    """Per-minute invocation counts (the Azure 2019 layout), with duration percentiles per function.

    A minute's n invocations are placed at independent uniform times within the minute; durations
    are drawn by inverse CDF from the function's percentiles (BENCHMARKS.md replay model).
    """

    def __init__(self, functions: FunctionTable, counts: np.ndarray, duration_pct_ms: np.ndarray,
                 start_minute: int = 0, description: dict | None = None) -> None:
        if counts.shape[0] != len(functions) or duration_pct_ms.shape != (len(functions), 7):
            raise ValueError("counts / duration percentiles do not match the function table")
        self.functions = functions
        self.counts = np.ascontiguousarray(counts, dtype=np.int32)  # (F, minutes)
        self.duration_pct_ms = np.ascontiguousarray(duration_pct_ms, dtype=np.float64)
        self.start_minute = start_minute  # minute offset of column 0 in the original trace
        self.horizon_s = 60.0 * counts.shape[1]
        self._description = description or {}

    def describe(self) -> dict:
        return {**self._description, "functions": len(self.functions),
                "minutes": int(self.counts.shape[1]), "start_minute": self.start_minute,
                "invocations": int(self.counts.sum(dtype=np.int64)),
                "arrivals": "uniform within each minute", "durations": "inverse CDF, linear between percentiles"}

    def total_invocations(self) -> int:
        return int(self.counts.sum(dtype=np.int64))

    def chunks(self, seed: int, chunk_s: float = 3600.0,
               functions: np.ndarray | None = None) -> Iterator[ArrivalChunk]:
        idx = np.arange(len(self.functions)) if functions is None else np.asarray(functions)
        rngs = {int(f): function_rng(seed, self.functions.names[f]) for f in idx}
        m_per_chunk = max(1, int(round(chunk_s / 60.0)))
        n_min = self.counts.shape[1]
        for m0 in range(0, n_min, m_per_chunk):
            m1 = min(n_min, m0 + m_per_chunk)
            block = self.counts[idx, m0:m1]
            pt, pf, pd = [], [], []
            for row in np.flatnonzero(block.sum(axis=1)):
                f = int(idx[row])
                c = block[row]
                n = int(c.sum())
                rng = rngs[f]
                minute = np.repeat(np.arange(m0, m1, dtype=np.float64), c)
                pt.append((minute + rng.random(n)) * 60.0)
                pf.append(np.full(n, f, np.int32))
                pd.append(sample_percentile_durations(rng.random(n), self.duration_pct_ms[f]))
            yield merge_sorted(m0 * 60.0, m1 * 60.0, pt, pf, pd)
