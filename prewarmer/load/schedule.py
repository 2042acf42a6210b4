"""Request schedules for load tests: when to call which function with which payload, and the functions
to deploy for it.

A `Schedule` is three aligned arrays (intended send time in seconds from the start, function index,
payload-kind index) plus the deployed functions and metadata. Builders:

- `from_workload` / `from_trace`: arrivals of chosen functions of a trace (Azure 2019 directory or
  Azure 2021 CSV, through the project's loaders) or of any `Workload`, time-compressed by a factor
  (`t_real = t_trace / factor`);
- `select_functions`: picks "several functions, including a periodic one" from per-minute counts, by
  regularity and volume, bounded so a small machine can serve the load;
- `synthetic`: a built-in pattern on the sample functions (a periodic `echo`, Poisson `cpu`, bursts
  of `io`).

The gateway only runs the sample functions (`functions/`: `echo`, `cpu`, `io`, `heavy`), so every
trace function becomes a function of its own (`t-<hash>`, its memory from the trace) whose handler is
the sample matching its typical duration; `write_functions_dir` writes that per-run `stack.yml`.
Schedules are saved as JSON or .npz (`save` / `load`), the format `openloop` reads; `request_for_kind`
turns a payload kind into the query string and body the sample functions understand.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prewarmer.workloads.base import TraceError, Workload

FORMAT = "prewarmer-schedule"
VERSION = 1

#: Typical (median) trace duration below which a function maps onto `echo`, then `cpu`; longer is `io`.
#: Long functions are mostly waiting on something in practice, and an I/O-bound stand-in keeps the
#: cores of a small load-test machine free for the gateway and the workers' start-ups.
ECHO_BELOW_MS = 100.0
CPU_BELOW_MS = 1000.0
#: Per-request work is capped so a 2-core machine serves ~20 req/s: CPU work costs cores, waiting does not.
MAX_CPU_WORK_MS = 50.0
MAX_IO_WORK_MS = 2000.0
#: Work amounts are rounded to these levels so that a schedule has a handful of payload kinds.
WORK_LEVELS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

DEFAULT_MAX_TOTAL_RPS = 20.0
DEFAULT_MAX_FUNCTION_RPS = 5.0
PERIODIC_THRESHOLD = 0.8
#: A function this rare (real time) is where `heavy` goes: one call every 5 s at most.
RARE_MAX_RPS = 0.2


def default_samples_dir() -> Path:
    """The repository's `functions/` (the package is installed in development mode), or $PREWARMER_SAMPLES_DIR."""
    env = os.environ.get("PREWARMER_SAMPLES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "functions"


@dataclass
class Deployment:
    """One function the gateway serves during the run."""

    name: str  # gateway function name
    sample: str  # sample function it runs (directory under functions/)
    memory_mb: float
    source: str = ""  # the trace function it stands for ("" for the synthetic pattern)
    median_ms: float | None = None  # typical trace duration that chose the sample
    rate_rps: float = 0.0  # mean request rate in the schedule (real time)


@dataclass
class Schedule:
    t: np.ndarray  # float64 intended send time, seconds from the start, sorted
    func: np.ndarray  # int32 index into `functions`
    kind: np.ndarray  # int32 index into `kinds`
    functions: list[Deployment]
    kinds: list[str]
    duration_s: float
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t = np.asarray(self.t, np.float64)
        self.func = np.asarray(self.func, np.int32)
        self.kind = np.asarray(self.kind, np.int32)
        if not (len(self.t) == len(self.func) == len(self.kind)):
            raise ValueError("schedule arrays differ in length")
        if len(self.t) and (np.any(np.diff(self.t) < 0) or self.t[0] < 0):
            raise ValueError("schedule times must be sorted and non-negative")
        if len(self.t) and (self.func.min() < 0 or self.func.max() >= len(self.functions)
                            or self.kind.min() < 0 or self.kind.max() >= len(self.kinds)):
            raise ValueError("schedule indices out of range")

    def __len__(self) -> int:
        return len(self.t)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.functions]

    def counts(self) -> dict[str, int]:
        """Requests per function name."""
        c = np.bincount(self.func, minlength=len(self.functions))
        return {d.name: int(n) for d, n in zip(self.functions, c, strict=True)}

    def truncated(self, duration_s: float) -> Schedule:
        """The first `duration_s` seconds."""
        keep = self.t < duration_s
        return Schedule(self.t[keep], self.func[keep], self.kind[keep], self.functions, self.kinds,
                        min(self.duration_s, duration_s), {**self.meta, "truncated_to_s": duration_s})

    def describe(self) -> dict:
        """What a report says about the schedule."""
        return {**self.meta, "requests": len(self), "duration_s": self.duration_s,
                "mean_rps": len(self) / self.duration_s if self.duration_s > 0 else 0.0,
                "functions": [asdict(d) for d in self.functions], "kinds": list(self.kinds),
                "requests_per_function": self.counts()}

    # ------------------------------------------------------------------ files
    def _header(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "duration_s": self.duration_s, "meta": self.meta,
                "functions": [asdict(d) for d in self.functions], "kinds": list(self.kinds)}

    def save(self, path: str | Path) -> Path:
        """JSON (any suffix but .npz) or compressed .npz."""
        path = Path(path)
        header = self._header()
        if path.suffix == ".npz":
            with open(path, "wb") as f:
                np.savez_compressed(f, t=self.t, func=self.func, kind=self.kind, header=np.array(json.dumps(header)))
        else:
            doc = {**header, "t": [round(float(x), 6) for x in self.t], "func": self.func.tolist(),
                   "kind": self.kind.tolist()}
            path.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        path = Path(path)
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    header = json.loads(str(z["header"])) if "header" in z.files else None
                    arrays = {k: z[k] for k in ("t", "func", "kind") if k in z.files}
            else:
                header = json.loads(path.read_text(encoding="utf-8"))
                arrays = header if isinstance(header, dict) else {}
        except (OSError, ValueError) as e:
            raise TraceError(f"not a readable schedule: {e}", path=str(path)) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise TraceError(f"not a schedule file (format is not {FORMAT!r})", path=str(path))
        try:
            return cls(np.asarray(arrays["t"], np.float64), np.asarray(arrays["func"]), np.asarray(arrays["kind"]),
                       [Deployment(**d) for d in header["functions"]], list(header["kinds"]),
                       float(header["duration_s"]), dict(header.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise TraceError(f"bad schedule: {type(e).__name__}: {e}", path=str(path)) from None


# ---------------------------------------------------------------------------------------------------
# Payloads


def work_kind(sample: str, work_ms: float) -> str:
    """Payload kind of one request: `echo`, `heavy`, or `cpu:<ms>` / `io:<ms>` with the work rounded."""
    if sample in ("echo", "heavy"):
        return sample
    cap = MAX_CPU_WORK_MS if sample == "cpu" else MAX_IO_WORK_MS
    ms = min(max(work_ms, WORK_LEVELS_MS[0]), cap)
    level = min(WORK_LEVELS_MS, key=lambda v: abs(math.log(v) - math.log(ms)))
    return f"{sample}:{min(level, int(cap))}"


#: cpu's SHA-256 chain runs about this many rounds per millisecond on one core (functions/cpu).
CPU_ROUNDS_PER_MS = 1000


def request_for_kind(kind: str) -> tuple[str, bytes]:
    """Query string and body of a payload kind, in the sample functions' own terms: `cpu` takes
    `?n=` SHA-256 rounds, `io` waits `?ms=`, `heavy` classifies a JSON list of floats, `echo` echoes."""
    sample, _, ms = kind.partition(":")
    if sample == "cpu":
        return f"n={max(1, round(float(ms or 20) * CPU_ROUNDS_PER_MS))}", b"prewarmer"
    if sample == "io":
        return f"ms={float(ms or 50):g}", b""
    if sample == "heavy":
        return "", b"[0.5, -1.0, 0.25, 2.0]"
    return "", b'{"hello":"prewarmer"}'


def sample_for_duration(median_ms: float) -> str:
    if not np.isfinite(median_ms) or median_ms < ECHO_BELOW_MS:
        return "echo"
    return "cpu" if median_ms < CPU_BELOW_MS else "io"


def deployed_name(source: str) -> str:
    """Gateway name of a trace function: a DNS label, stable for a given trace function name."""
    return "t-" + hashlib.sha1(source.encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------------
# Choosing functions


def minute_counts(workload: Workload, seed: int = 0) -> np.ndarray:
    """(functions, minutes) invocation counts: the trace's own for per-minute traces, else binned arrivals."""
    counts = getattr(workload, "counts", None)
    if isinstance(counts, np.ndarray) and counts.ndim == 2:
        return counts
    n_min = max(1, math.ceil(workload.horizon_s / 60.0 - 1e-9))
    out = np.zeros((len(workload.functions), n_min), np.int64)
    for chunk in workload.chunks(seed, chunk_s=3600.0):
        np.add.at(out, (chunk.func, np.minimum((chunk.t // 60.0).astype(np.int64), n_min - 1)), 1)
    return out


def periodicity(row: np.ndarray) -> float:
    """How timer-like a function's per-minute counts are, in [0, 1]; 1 = same count at a constant period.

    0 when it fires fewer than 3 times or is silent for longer than its period at either end of the
    window (it started or stopped inside the window: not a timer over this window).
    """
    row = np.asarray(row)
    nz = np.flatnonzero(row)
    if len(nz) < 3:
        return 0.0
    gaps = np.diff(nz).astype(np.float64)
    period = float(np.median(gaps))
    if nz[0] > period or (len(row) - 1 - nz[-1]) > period:
        return 0.0
    vals = row[nz].astype(np.float64)
    cv_gaps = gaps.std() / gaps.mean()
    cv_vals = vals.std() / vals.mean()
    return float(1.0 / (1.0 + cv_gaps + cv_vals))


@dataclass
class Selection:
    indices: list[int]  # chosen functions (workload indices), the periodic one first
    periodic: int | None  # the periodic one, if there was one
    rates_rps: dict[int, float]  # real-time request rate of each chosen function
    considered: int  # functions with any invocation in the window

    def describe(self, names: Sequence[str]) -> dict:
        return {"selected": [names[i] for i in self.indices],
                "periodic": names[self.periodic] if self.periodic is not None else None,
                "rates_rps": {names[i]: round(r, 4) for i, r in self.rates_rps.items()},
                "considered": self.considered}


def select_functions(counts: np.ndarray, compress: float = 1.0, n: int = 4,
                     max_total_rps: float = DEFAULT_MAX_TOTAL_RPS,
                     max_function_rps: float = DEFAULT_MAX_FUNCTION_RPS,
                     min_invocations: int = 3, rare: bool = False) -> Selection:
    """Up to `n` functions: the most regular timer-like one, then the busiest that fit the rate bounds.

    With `rare`, the busiest function under `RARE_MAX_RPS` is taken second: a slow-starting stand-in
    (`heavy`) belongs on a rarely called function, or its cold starts would pile up on a small machine.

    Rates are real-time (after compression): a function's rate is its count over the window divided
    by the window's real length. Functions above `max_function_rps` are never chosen, and the total
    stays under `max_total_rps`, so the machine running the gateway can keep up.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] == 0:
        raise ValueError("counts must be (functions, minutes)")
    if n < 1:
        raise ValueError("n must be >= 1")
    real_s = counts.shape[1] * 60.0 / compress
    totals = counts.sum(axis=1)
    rates = totals / real_s
    ok = (totals >= min_invocations) & (rates <= max_function_rps)
    chosen: list[int] = []
    periodic = None
    scores = np.array([periodicity(counts[i]) if ok[i] else 0.0 for i in range(len(counts))])
    if len(scores) and scores.max() >= PERIODIC_THRESHOLD:
        # The most regular; among equally regular ones the busiest (more requests make a better test).
        best = max(np.flatnonzero(scores >= scores.max() - 1e-9), key=lambda i: totals[i])
        if rates[best] <= max_total_rps:
            periodic = int(best)
            chosen.append(periodic)
    if rare and len(chosen) < n:
        cand = np.flatnonzero(ok & (rates <= RARE_MAX_RPS))
        cand = [int(i) for i in cand if int(i) not in chosen]
        if cand:
            chosen.append(max(cand, key=lambda i: totals[i]))
    total = float(sum(rates[i] for i in chosen))
    for i in np.argsort(-totals, kind="stable"):
        if len(chosen) >= n:
            break
        i = int(i)
        if not ok[i] or i in chosen or total + rates[i] > max_total_rps:
            continue
        chosen.append(i)
        total += float(rates[i])
    if not chosen:
        raise ValueError(f"no function fits: every function with >= {min_invocations} invocations in the window "
                         f"is above {max_function_rps:g} req/s after compression; lower the compression")
    return Selection(chosen, periodic, {i: float(rates[i]) for i in chosen}, int((totals > 0).sum()))


# ---------------------------------------------------------------------------------------------------
# Builders


def _median_ms(workload: Workload, idx: int, durations_s: np.ndarray) -> float:
    pct = getattr(workload, "duration_pct_ms", None)
    if isinstance(pct, np.ndarray) and pct.ndim == 2:
        return float(pct[idx, 3])  # the 50th percentile column
    return float(np.median(durations_s) * 1000.0) if len(durations_s) else float("nan")


def from_workload(workload: Workload, indices: Sequence[int], compress: float = 1.0, seed: int = 0,
                  duration_s: float | None = None, include_heavy: bool = False,
                  compress_durations: bool = True, meta: dict | None = None) -> Schedule:
    """The arrivals of `indices` of `workload`, at `t / compress` real seconds.

    Each function is deployed as `t-<hash>` with its trace memory, running the sample chosen by its
    median duration (`sample_for_duration`); with `include_heavy`, the function with the fewest
    requests runs `heavy` instead. Each request's work is its trace duration, divided by `compress` too when
    `compress_durations` (so the number of concurrently busy instances is the trace's), capped and
    rounded (`work_kind`).
    """
    if not compress > 0:
        raise ValueError(f"compression factor must be > 0, got {compress}")
    idx = np.asarray(list(dict.fromkeys(int(i) for i in indices)), np.int64)
    if len(idx) == 0:
        raise ValueError("no function chosen")
    horizon = workload.horizon_s / compress
    if duration_s is not None:
        horizon = min(horizon, duration_s)
    parts_t, parts_f, parts_d = [], [], []
    for chunk in workload.chunks(seed, chunk_s=3600.0, functions=idx):
        t = chunk.t / compress
        keep = t < horizon
        parts_t.append(t[keep])
        parts_f.append(chunk.func[keep])
        parts_d.append(chunk.duration[keep])
        if len(t) and t[-1] >= horizon:
            break
    t = np.concatenate(parts_t) if parts_t else np.empty(0)
    f = np.concatenate(parts_f) if parts_f else np.empty(0, np.int32)
    d = np.concatenate(parts_d) if parts_d else np.empty(0)
    order = np.argsort(t, kind="stable")
    t, f, d = t[order], f[order], d[order]

    table = workload.functions
    # heavy (seconds of start-up, a model in memory) goes to the rarest function: that is where a
    # cold start is most likely and each one costs the machine the least overall.
    per_fn = np.bincount(np.searchsorted(np.sort(idx), f), minlength=len(idx)) if len(f) else np.zeros(len(idx))
    rank = {int(i): int(per_fn[k]) for k, i in enumerate(np.sort(idx))}
    heavy = int(min(idx, key=lambda i: (rank[int(i)], -table.memory_mb[i]))) if include_heavy else None
    deployments: list[Deployment] = []
    local = {}
    for i in idx:
        mine = d[f == i]
        median = _median_ms(workload, int(i), mine)
        sample = "heavy" if i == heavy else sample_for_duration(median)
        local[int(i)] = len(deployments)
        deployments.append(Deployment(name=deployed_name(table.names[i]), sample=sample,
                                      memory_mb=float(table.memory_mb[i]), source=table.names[i],
                                      median_ms=None if math.isnan(median) else round(median, 3),
                                      rate_rps=len(mine) / horizon if horizon > 0 else 0.0))
    if len({dep.name for dep in deployments}) != len(deployments):
        raise ValueError("two chosen functions hash to the same gateway name")
    local_f = np.array([local[int(i)] for i in f], np.int32)
    work_ms = d * 1000.0 / (compress if compress_durations else 1.0)
    kinds_per_request = [work_kind(deployments[j].sample, w) for j, w in zip(local_f, work_ms, strict=True)]
    kinds = sorted(set(kinds_per_request))
    kind_idx = {k: i for i, k in enumerate(kinds)}
    kind = np.array([kind_idx[k] for k in kinds_per_request], np.int32)
    desc = workload.describe()
    info = {"source": desc.get("format", desc.get("model", "workload")), "path": desc.get("path"),
            "start_minute": desc.get("start_minute"), "trace_minutes": desc.get("minutes"),
            "compress": compress, "seed": seed, "compress_durations": compress_durations,
            "include_heavy": include_heavy, **(meta or {})}
    return Schedule(t, local_f, kind, deployments, kinds or ["echo"], horizon, info)


def from_trace(path: str | Path, functions: slice | Sequence[str] | int | None = 4,
               minutes: tuple[int, int] = (0, 30), compress: float = 30.0, seed: int = 0,
               duration_s: float | None = None, include_heavy: bool = False,
               max_total_rps: float = DEFAULT_MAX_TOTAL_RPS,
               max_function_rps: float = DEFAULT_MAX_FUNCTION_RPS) -> Schedule:
    """A schedule from an Azure 2019 directory / day file or an Azure 2021 CSV (format detected).

    functions: an int N (or None: 4) selects N functions automatically (`select_functions`: a periodic
    one, then by volume, within the rate bounds); a slice (rows of the trace) or a list of trace
    function names takes exactly those. Raises TraceError for trace problems, ValueError for
    impossible selections.
    """
    from prewarmer.workloads.detect import open_trace

    auto = isinstance(functions, int) or functions is None
    workload = open_trace(path, functions=None if auto else functions, minutes=minutes)
    return choose_and_build(workload, (functions or 4) if auto else None, compress=compress, seed=seed,
                            duration_s=duration_s, include_heavy=include_heavy, max_total_rps=max_total_rps,
                            max_function_rps=max_function_rps, meta={"minutes": list(minutes)})


def choose_and_build(workload: Workload, auto_n: int | None, compress: float = 30.0, seed: int = 0,
                     duration_s: float | None = None, include_heavy: bool = False,
                     max_total_rps: float = DEFAULT_MAX_TOTAL_RPS,
                     max_function_rps: float = DEFAULT_MAX_FUNCTION_RPS, meta: dict | None = None) -> Schedule:
    """`auto_n` functions chosen by `select_functions` (None: every function of the workload), then
    `from_workload`; the total rate is checked against `max_total_rps` either way."""
    names = workload.functions.names
    if auto_n is not None:
        counts = minute_counts(workload, seed)
        if duration_s is not None:
            # Rates are judged on the part that will be replayed.
            counts = counts[:, : max(1, math.ceil(duration_s * compress / 60.0))]
        sel = select_functions(counts, compress=compress, n=auto_n, max_total_rps=max_total_rps,
                               max_function_rps=max_function_rps, rare=include_heavy)
        indices, info = sel.indices, {"selection": sel.describe(names)}
    else:
        indices, info = list(range(len(names))), {"selection": {"selected": list(names), "periodic": None}}
    sched = from_workload(workload, indices, compress=compress, seed=seed, duration_s=duration_s,
                          include_heavy=include_heavy, meta={**info, **(meta or {})})
    rate = len(sched) / sched.duration_s if sched.duration_s > 0 else 0.0
    # Auto selection bounds the trace's counts; the arrivals drawn from them may run a little higher.
    if rate > max_total_rps * (1.5 if auto_n is not None else 1.0):
        raise ValueError(f"the chosen functions make {rate:.1f} req/s after compression {compress:g}x, above "
                         f"{max_total_rps:g}: lower the compression, choose fewer functions, or raise the bound")
    return sched


def synthetic(duration_s: float = 60.0, seed: int = 0, period_s: float = 5.0, cpu_rps: float = 0.5,
              burst_every_s: float = 20.0, burst_size: int = 6, burst_spread_s: float = 0.5,
              heavy_every_s: float | None = None) -> Schedule:
    """The built-in pattern on the sample functions: `echo` every `period_s` (a timer), Poisson `cpu`
    (20 ms of work each), bursts of `burst_size` `io` requests (200 ms each) every `burst_every_s`,
    and with `heavy_every_s` a `heavy` request that often."""
    if not duration_s > 0:
        raise ValueError("duration must be > 0")
    rng = np.random.default_rng(seed)
    echo_t = np.arange(0.5, duration_s, period_s)
    cpu_t = np.cumsum(rng.exponential(1.0 / cpu_rps, size=int(duration_s * cpu_rps * 3) + 10))
    cpu_t = cpu_t[cpu_t < duration_s]
    starts = np.arange(burst_every_s / 2, duration_s, burst_every_s)
    io_t = (starts[:, None] + np.sort(rng.uniform(0, burst_spread_s, (len(starts), burst_size)), axis=1)).ravel()
    io_t = io_t[io_t < duration_s]
    parts = [echo_t, cpu_t, io_t]
    deployments = [Deployment("echo", "echo", 128.0), Deployment("cpu", "cpu", 128.0), Deployment("io", "io", 128.0)]
    kinds = ["echo", "cpu:20", "io:200"]
    if heavy_every_s:
        parts.append(np.arange(1.0, duration_s, heavy_every_s))
        deployments.append(Deployment("heavy", "heavy", 1024.0))
        kinds.append("heavy")
    for dep, p in zip(deployments, parts, strict=True):
        dep.rate_rps = len(p) / duration_s
    t = np.concatenate(parts)
    func = np.concatenate([np.full(len(p), j) for j, p in enumerate(parts)]).astype(np.int32)
    order = np.argsort(t, kind="stable")
    return Schedule(t[order], func[order], func[order].copy(), deployments, kinds, float(duration_s),
                    {"source": "synthetic", "seed": seed, "compress": 1.0, "period_s": period_s, "cpu_rps": cpu_rps,
                     "burst_every_s": burst_every_s, "burst_size": burst_size,
                     "heavy_every_s": heavy_every_s})


# ---------------------------------------------------------------------------------------------------
# Deployment


def _sample_specs(samples_dir: Path) -> dict[str, dict]:
    stack = samples_dir / "stack.yml"
    if not stack.is_file():
        return {}
    import yaml

    doc = yaml.safe_load(stack.read_text(encoding="utf-8")) or {}
    return {str(k): dict(v or {}) for k, v in (doc.get("functions") or {}).items()}


def write_functions_dir(schedule: Schedule, out_dir: str | Path, samples_dir: str | Path | None = None) -> Path:
    """A functions directory for the gateway: `stack.yml` with one function per deployment, and one
    symlink per sample used pointing at the sample's directory. Returns the directory."""
    import yaml

    samples = Path(samples_dir) if samples_dir else default_samples_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = _sample_specs(samples)
    functions: dict[str, dict] = {}
    for dep in schedule.functions:
        src = samples / dep.sample
        if not (src / "handler.py").is_file():
            raise ValueError(f"sample function {dep.sample!r} not found: {src / 'handler.py'} does not exist")
        link = out / dep.sample
        if not link.exists():
            link.symlink_to(src.resolve(), target_is_directory=True)
        base = specs.get(dep.sample, {})
        fn = {k: v for k, v in base.items() if k not in ("handler", "limits")}
        fn.setdefault("lang", "python3-http")
        fn.setdefault("image", f"prewarmer/sample-{dep.sample}:latest")
        fn["handler"] = f"./{dep.sample}"
        limits = dict(base.get("limits") or {})
        if dep.source or "memory" not in limits:
            # A trace function holds its trace memory (what wasted GB-s are counted in).
            limits["memory"] = f"{max(1, round(dep.memory_mb))}Mi"
        fn["limits"] = limits
        if dep.source:
            fn["annotations"] = {**(base.get("annotations") or {}), "prewarmer/trace-function": dep.source}
        functions[dep.name] = fn
    doc = {"version": 1.0, "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
           "functions": functions}
    (out / "stack.yml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out
