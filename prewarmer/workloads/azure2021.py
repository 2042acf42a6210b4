"""Load the Azure Functions 2021 invocation trace (one row per invocation) as a replayable workload.

Rows are `app,func,end_timestamp,duration` in seconds; an invocation starts at end - duration. Time 0
is the earliest start in the file, floored to the minute, so minute windows mean the same thing
whatever functions are selected. Replay is deterministic: the recorded times and durations are used.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .azure2019 import CsvFile, nonnegative_durations
from .base import Anomalies, ArrivalChunk, FunctionTable, TraceError, Workload

COLUMNS = ("app", "func", "end_timestamp", "duration")

FunctionSelection = slice | Sequence[str] | None


class Trace2021Workload(Workload):
    """Recorded invocations: time-sorted arrays of start time, function index and duration."""

    def __init__(self, functions: FunctionTable, t: np.ndarray, func: np.ndarray, duration: np.ndarray,
                 horizon_s: float, start_minute: int = 0, description: dict | None = None) -> None:
        order = np.argsort(t, kind="stable")
        self.functions = functions
        self.t = np.asarray(t, np.float64)[order]
        self.func = np.asarray(func, np.int32)[order]
        self.duration = np.asarray(duration, np.float64)[order]
        self.horizon_s = float(horizon_s)
        self.start_minute = start_minute  # minute of the trace (since its first minute) at t = 0
        self._description = description or {}

    def describe(self) -> dict:
        return {**self._description, "functions": len(self.functions), "invocations": len(self.t),
                "start_minute": self.start_minute, "minutes": int(round(self.horizon_s / 60.0)),
                "arrivals": "recorded", "durations": "recorded"}

    def total_invocations(self) -> int:
        return len(self.t)

    def chunks(self, seed: int, chunk_s: float = 3600.0,
               functions: np.ndarray | None = None) -> Iterator[ArrivalChunk]:
        # The seed is unused: a recorded trace replays identically.
        t, func, dur = self.t, self.func, self.duration
        if functions is not None:
            keep = np.isin(func, np.asarray(functions))
            t, func, dur = t[keep], func[keep], dur[keep]
        n_chunks = max(1, math.ceil(self.horizon_s / chunk_s - 1e-9))
        for k in range(n_chunks):
            start = k * chunk_s
            end = self.horizon_s if k == n_chunks - 1 else (k + 1) * chunk_s
            a, b = np.searchsorted(t, [start, end], side="left")
            yield ArrivalChunk(start, end, t[a:b].copy(), func[a:b].copy(), dur[a:b].copy())


def _read_rows(path: Path, anomalies: Anomalies) -> tuple[list[tuple[str, str]], array, array, array]:
    """Streams the file into compact arrays: function index (first appearance), start, duration."""
    keys: dict[tuple[str, str], int] = {}
    func, start, duration = array("i"), array("d"), array("d")
    with CsvFile(path, COLUMNS) as f:
        ia, ifn = f.index["app"], f.index["func"]
        for row in f.rows():
            (end_s,) = f.floats(row, ("end_timestamp",))
            (dur_s,) = nonnegative_durations(f, row, ("duration",), anomalies)
            key = (row[ia], row[ifn])
            func.append(keys.setdefault(key, len(keys)))
            start.append(end_s - dur_s)
            duration.append(dur_s)
    return list(keys), func, start, duration


def _select_functions(path: Path, keys: list[tuple[str, str]], functions: FunctionSelection) -> np.ndarray:
    n = len(keys)
    if functions is None:
        chosen = np.arange(n)
    elif isinstance(functions, slice):
        s = functions
        if any(v is not None and not isinstance(v, int) for v in (s.start, s.stop, s.step)) or s.step == 0:
            raise TraceError(f"bad function slice {s!r}", path=str(path))
        if s.stop is not None and s.stop > n or s.start is not None and s.start >= n:
            raise TraceError(f"function slice {s.start}:{s.stop} is out of range: the file has {n} functions",
                             path=str(path))
        chosen = np.arange(n)[s]
    else:
        if isinstance(functions, str) or not isinstance(functions, Iterable):
            raise TraceError("functions must be a slice or a list of function names", path=str(path))
        wanted = set(functions)
        missing = wanted - {name for _, name in keys}
        if missing:
            shown = ", ".join(sorted(map(str, missing))[:3]) + (", ..." if len(missing) > 3 else "")
            raise TraceError(f"{len(missing)} requested functions are not in the file: {shown}",
                             path=str(path))
        chosen = np.array([i for i, (_, name) in enumerate(keys) if name in wanted], np.int64)
    if len(chosen) == 0:
        raise TraceError("the function selection selects nothing", path=str(path))
    return chosen


def load_azure2021(path: str | Path, functions: FunctionSelection = None,
                   minutes: tuple[int, int] | None = None, memory_mb: float = 256.0,
                   strict: bool = False) -> Trace2021Workload:
    """Load a 2021 invocation CSV. functions: a slice over functions in order of first appearance, or
    func names. minutes: (start, end) in minutes since the trace's first minute, end exclusive.
    A NaN or inf raises TraceError naming file, line and column. A negative duration is an anomaly: clipped
    to 0 (start = end) and counted in `describe()["warnings"]`, or with `strict` a TraceError. (A repeated
    row is a second invocation, not a duplicate: every row is one invocation.)"""
    path = Path(path)
    if not (math.isfinite(memory_mb) and memory_mb > 0):
        raise TraceError(f"memory_mb must be a finite number > 0, got {memory_mb!r}", path=str(path))
    if not path.is_file():
        raise TraceError("not a file" if path.exists() else "no such file", path=str(path))
    anomalies = Anomalies(strict)
    keys, func_a, start_a, dur_a = _read_rows(path, anomalies)
    if not keys:
        raise TraceError("the file holds no invocation", path=str(path))
    func = np.frombuffer(func_a, np.int32)
    start = np.frombuffer(start_a, np.float64)
    duration = np.frombuffer(dur_a, np.float64)
    t0 = math.floor(start.min() / 60.0) * 60.0
    t = start - t0
    # The minute of the last invocation, plus one (exclusive end). Not ceil(t / 60 + epsilon): at a span of
    # ~1e9 s the epsilon is lost, and an invocation on an exact minute fell outside the range.
    total_min = math.floor(t.max() / 60.0) + 1

    if minutes is None:
        m0, m1 = 0, total_min
    else:
        try:
            m0, m1 = (int(m) for m in minutes)
        except (TypeError, ValueError):
            raise TraceError(f"minutes must be (start, end), got {minutes!r}", path=str(path)) from None
        if not 0 <= m0 < m1 <= total_min:
            raise TraceError(f"minutes {m0}:{m1} out of range: the trace spans minutes 0:{total_min}",
                             path=str(path))

    chosen = _select_functions(path, keys, functions)
    remap = np.full(len(keys), -1, np.int32)
    remap[chosen] = np.arange(len(chosen), dtype=np.int32)
    keep = (remap[func] >= 0) & (t >= m0 * 60.0) & (t < m1 * 60.0)

    sel_keys = [keys[i] for i in chosen]
    app_index: dict[str, int] = {}
    apps = np.array([app_index.setdefault(app, len(app_index)) for app, _ in sel_keys], np.int32)
    table = FunctionTable(names=[name for _, name in sel_keys], apps=apps, app_names=list(app_index),
                          memory_mb=np.full(len(sel_keys), float(memory_mb)),
                          cold_start_s=np.full(len(sel_keys), np.nan))
    description = {"format": "azure2021", "path": str(path), "memory_mb": float(memory_mb),
                   "trace_start_s": t0}
    if anomalies.counts:
        description["warnings"] = anomalies.warnings()
    return Trace2021Workload(table, t[keep] - m0 * 60.0, remap[func[keep]], duration[keep],
                             horizon_s=(m1 - m0) * 60.0, start_minute=m0, description=description)
