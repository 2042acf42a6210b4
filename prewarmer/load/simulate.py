"""`prewarmer loadtest --simulate`: what the simulator predicts for the exact schedule of a run, beside what
the gateway measured, per function.

The prediction replays, in policy time (real seconds x the schedule's compression, as the sidecar sees
them): every answered request at its intended send time, for its execution time as the gateway reported
it (`X-Duration-Seconds` less `X-Prewarmer-Wait-Ms`: the start-up or the queue at the worker bound), the
workers' start-ups as the gateway logged them (`event=worker_ready startup_ms=`, spawn to ready) fitted as each
function's own plus a share per other worker starting at the same time (the gateway spawns processes on a few
cores: a burst of starts slows each of them), and the gateway's worker bound (`max_instances`). A run without
the gateway's log falls back to each function's median wait for a new worker (`X-Prewarmer-Startup-Ms`). The
gateway alone is replayed as fixed keep-alive for the gateway's own keep-alive; a run with the sidecar as
its policy. Replay and live must agree (DEVELOPERS: a difference is a bug in one of them);
`agree` is the check the CI test holds them to.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np

from prewarmer.load.schedule import Schedule
from prewarmer.workloads.base import FunctionTable

#: Agreement: |predicted - measured| cold starts per run at most this many plus this share of the measured.
TOLERANCE_ABS = 2
TOLERANCE_REL = 0.25
FALLBACK_STARTUP_S = 0.3


def _seconds(req: dict, column: str) -> np.ndarray:
    """A per-request timing the gateway reported, in ms (None where it did not), as seconds (NaN)."""
    values = req.get(column) or [None] * len(req["status"])
    return np.array([math.nan if x is None else x for x in values], np.float64) / 1000.0


def _startup_s(func: np.ndarray, cold: np.ndarray, startup: np.ndarray, n: int,
               assumed: float = FALLBACK_STARTUP_S) -> np.ndarray:
    """Each function's median start-up over its measured cold starts; the median of all for one without (`assumed`
    when nothing was measured)."""
    measured = (cold == 1) & ~np.isnan(startup)
    fallback = float(np.median(startup[measured])) if measured.any() else assumed
    return np.array([float(np.median(startup[measured & (func == i)])) if (measured & (func == i)).any()
                     else fallback for i in range(n)])


def worker_startups(log_path: Path) -> dict:
    """Every worker start-up the gateway logged (`event=worker_ready`): its function, when it was spawned
    (seconds on the log's clock), how long it took (ms) and whether the platform's scale-up started it
    (`event=worker_start reason=prewarm`) rather than a request. Empty lists when there is no log."""
    from prewarmer.gateway import parse_logfmt

    doc: dict = {"function": [], "spawn_s": [], "startup_ms": [], "by_policy": []}
    if not log_path.is_file():
        return doc
    reason: dict[str, str] = {}
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            if "event=worker_start " not in line and "event=worker_ready " not in line:
                continue
            fields = parse_logfmt(line)
            if fields.get("event") == "worker_start":
                reason[fields.get("worker", "")] = fields.get("reason", "")
                continue
            try:
                ready = datetime.fromisoformat(fields["ts"]).timestamp()
                startup_ms = float(fields["startup_ms"])
                name = fields["function"]
            except (KeyError, ValueError):
                continue  # a line cut short or of another format: not a start-up to learn from
            doc["function"].append(name)
            doc["spawn_s"].append(ready - startup_ms / 1000.0)
            doc["startup_ms"].append(startup_ms)
            doc["by_policy"].append(reason.get(fields.get("worker", ""), "") == "prewarm")
    return doc


def others_starting(spawn_s: np.ndarray, startup_s: np.ndarray) -> np.ndarray:
    """For each start-up, how many others were starting when it began: spawned before it (in spawn order) and not
    yet ready. The engine's count at an instance's start (`engine.G_NSTARTING`)."""
    order = np.argsort(spawn_s, kind="stable")
    s = spawn_s[order]
    ready = np.sort((spawn_s + startup_s)[order])
    # Of the j spawned before the j-th, those ready by its spawn are done (one ready by then was spawned before it).
    out = np.arange(len(s)) - np.searchsorted(ready, s, side="right")
    result = np.empty(len(s), np.int64)
    result[order] = out
    return result


def fit_startups(workers: dict, names: list[str]) -> tuple[np.ndarray, float, float] | None:
    """Each function's own start-up (s), the seconds every other worker starting at once adds, and the seconds a
    start the policy made (a scale-up) takes beyond one a request made, fitted to the gateway's worker start-ups:
    least squares on the count of others starting and the policy flag with an intercept per function, then each
    function's median of what those do not explain. The policy term is fitted only where both kinds of start
    were seen. NaN for a function with no start-up; None when nothing was logged."""
    if not workers.get("startup_ms"):
        return None
    index = {n: i for i, n in enumerate(names)}
    func = np.array([index.get(f, -1) for f in workers["function"]], np.int64)
    spawn = np.asarray(workers["spawn_s"], np.float64)
    startup = np.asarray(workers["startup_ms"], np.float64) / 1000.0
    by_policy = np.asarray(workers.get("by_policy") or np.zeros(len(startup)), np.float64)
    others = others_starting(spawn, startup).astype(np.float64)
    known = func >= 0
    y, f = startup[known], func[known]
    x = np.column_stack([others[known], by_policy[known]])
    if not (0 < by_policy[known].sum() < known.sum()):
        x = x[:, :1]  # one kind of start only: nothing to tell the policy's from
    xc, yc = x.copy(), y.copy()
    for i in np.unique(f):  # within each function: the intercepts drop out
        m = f == i
        xc[m] -= x[m].mean(axis=0)
        yc[m] -= y[m].mean()
    coef = np.maximum(np.linalg.lstsq(xc, yc, rcond=None)[0], 0.0) if len(y) > 1 else np.zeros(x.shape[1])
    per, policy = float(coef[0]), float(coef[1]) if len(coef) > 1 else 0.0
    base = np.full(len(names), np.nan)
    rest = y - x @ coef
    by_request = by_policy[known] == 0
    for i in np.unique(f):
        # A function's own start-up from the starts its requests made where there are any: those the policy made
        # all fall at its ticks, where the fit's two terms share what they explain.
        m = f == i
        if (m & by_request).any():
            m &= by_request
        base[i] = max(float(np.median(rest[m])), 0.0)
    return base, per, policy


def startups_of_run(schedule: Schedule, results: dict) -> tuple[np.ndarray, float, float]:
    """Each function's start-up (real seconds), the seconds added per other worker starting at once, and those
    added to a start the policy made, for replaying a run: fitted from the gateway's worker start-ups when the
    run has them, else each function's median wait for a new worker with nothing added (the median of all for a
    function without either)."""
    req = results["requests"]
    n = len(schedule.functions)
    fitted = fit_startups(results.get("workers") or {}, list(schedule.names))
    if fitted is not None:
        base, per, policy = fitted
        known = ~np.isnan(base)
        fill = float(np.median(base[known])) if known.any() else FALLBACK_STARTUP_S
        return np.where(known, base, fill), per, policy
    return _startup_s(np.asarray(req["function"]), np.asarray(req["cold"]), _seconds(req, "startup_ms"), n,
                      results.get("assumed_startup_s", FALLBACK_STARTUP_S)), 0.0, 0.0


def workload_of_run(schedule: Schedule, results: dict, compress: float, offset_s: float = 0.0,
                    own_startup_s: np.ndarray | None = None):
    """The run's answered requests as a recorded workload, in policy time (the schedule starting `offset_s`
    after policy time 0); `own_startup_s`: each function's start-up, real seconds (default: `startups_of_run`'s)."""
    from prewarmer.workloads.azure2021 import Trace2021Workload

    req = results["requests"]
    status = np.asarray(req["status"])
    answered = (status > 0) & (status < 400)
    gateway_s, startup_s, wait_s = _seconds(req, "gateway_ms"), _seconds(req, "startup_ms"), _seconds(req, "wait_ms")
    # The instance was busy from the start of execution: less the wait, start-up or queue at the gateway's worker
    # bound (replay queues the request itself); results without the wait: less the start-up.
    execution = np.maximum(gateway_s - np.where(np.isnan(wait_s), np.nan_to_num(startup_s), wait_s), 0.0)
    keep = answered & ~np.isnan(execution)
    n = len(schedule.functions)
    functions = FunctionTable(names=schedule.names, apps=np.arange(n, dtype=np.int32), app_names=schedule.names,
                              memory_mb=np.array([f.memory_mb for f in schedule.functions], np.float64),
                              cold_start_s=(startups_of_run(schedule, results)[0] if own_startup_s is None
                                            else np.asarray(own_startup_s, np.float64)) * compress)
    t = offset_s + np.asarray(schedule.t)[keep] * compress
    horizon = offset_s + (float(schedule.duration_s) + float(np.nanmax(gateway_s, initial=0.0))) * compress + 1.0
    return Trace2021Workload(functions, t, np.asarray(schedule.func)[keep], execution[keep] * compress, horizon,
                             start_minute=int(schedule.meta.get("start_minute") or 0),
                             description={"source": "load-test run"})


def replay_of_run(schedule: Schedule, results: dict, compress: float, offset_s: float = 0.0,
                  max_workers: int | None = None):
    """What replay takes of a run: its workload (`workload_of_run`), the replay configuration (the start-ups fitted
    to the gateway's log, `startups_of_run`, and the gateway's worker bound), and the two fitted start-up terms
    (seconds per other worker starting, seconds for a start the policy made; real time)."""
    from prewarmer.sim.replay import ReplayConfig
    from prewarmer.sim.startup import StartupModel

    own, per_starting_s, by_policy_s = startups_of_run(schedule, results)
    workload = workload_of_run(schedule, results, compress, offset_s, own)
    cfg = ReplayConfig(startup=StartupModel(kind="per-function", per_starting_s=per_starting_s * compress,
                                            by_policy_s=by_policy_s * compress), max_instances=max_workers)
    return workload, cfg, (per_starting_s, by_policy_s)


def shard_groups(names: list[str], shards: int | None) -> list[np.ndarray]:
    """The functions each of the sidecar's `shards` shards holds (indices into `names`), as the sidecar splits
    them (`prewarmer.stream.keys.shard_of`); None: one group of all."""
    if not shards:
        return [np.arange(len(names))]
    from prewarmer.stream.keys import shard_of

    of = np.array([shard_of(n, shards) for n in names], np.int64)
    return [np.flatnonzero(of == s) for s in np.unique(of)]


def _replay(workload, spec: str, cfg, groups: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Cold starts per function and idle GB-s of a replay under `spec`, one policy per group of functions."""
    from prewarmer.registry import policy_factory
    from prewarmer.sim import engine as E
    from prewarmer.sim.replay import run_shard

    cold = np.zeros(len(workload.functions), np.int64)
    idle = 0.0
    for idx in groups:
        res = run_shard(workload, policy_factory(spec)(), cfg, idx=idx if len(groups) > 1 else None)
        cold[idx] = res.fi[:, E.F_COLD]
        idle += float(res.fs[:, E.S_WASTE].sum())
    return cold, idle


def predict(schedule: Schedule, results: dict, policy: str | None, keep_alive_s: float, compress: float,
            clock_start_unix: float | None = None, max_workers: int | None = None,
            shards: int | None = None) -> dict:
    """Predicted and measured cold starts per function for one run (`policy` None: the gateway alone).

    `clock_start_unix` is when the sidecar's policy clock started: the schedule began that much later in
    policy time, so replay's ticks fall where the sidecar's did. `max_workers`: the gateway's most workers per
    function (replay's `max_instances`; None: no bound). `shards`: the sidecar's shards; each runs a policy of
    its own over its functions (its features and prices see only them), and replay does the same (None: one
    policy for all)."""
    started = results.get("started_unix")
    offset = (started - clock_start_unix) * compress if started and clock_start_unix else 0.0
    # A schedule that began before the sidecar's clock met a platform with no prewarmer for that long: replay (the
    # policy acting from the first request) cannot model that run, so it is not held to agree with it.
    late_s = max(-offset, 0.0) / compress
    workload, cfg, (per_starting_s, by_policy_s) = replay_of_run(schedule, results, compress, max(offset, 0.0),
                                                                 max_workers)
    spec = policy or f"fixed:{keep_alive_s * compress:g}s"
    groups = shard_groups(list(schedule.names), shards if policy else None)
    predicted, idle_gb_s = _replay(workload, spec, cfg, groups)
    warmup = float(schedule.meta.get("warmup_s") or 0.0)
    if warmup > 0:
        # Cold starts of the metered window: all of them less those of the warm-up alone (replay is causal: the
        # same requests up to the end of the warm-up give the same cold starts there); idle GB-s likewise.
        lead_cold, lead_idle = _replay(_before(workload, max(offset, 0.0) + warmup * compress), spec, cfg, groups)
        predicted = predicted - lead_cold
        idle_gb_s -= lead_idle
    measured = results["per_function"]
    per_function = {name: {"predicted": int(predicted[i]),
                           "measured": int(measured.get(name, {}).get("cold_starts", 0)),
                           "startup_s": round(float(workload.functions.cold_start_s[i]) / compress, 4)}
                    for i, name in enumerate(schedule.names)}
    total_p = sum(f["predicted"] for f in per_function.values())
    total_m = sum(f["measured"] for f in per_function.values())
    doc = {"policy": spec, "offset_s": round(max(offset, 0.0), 3), "warmup_s": warmup,
           "startup_per_starting_s": round(per_starting_s, 5), "startup_by_policy_s": round(by_policy_s, 5),
           "predicted_cold_starts": total_p,
           # idle GB-s per real second, as the gateway's wasted_gb_s (replay's are in policy seconds)
           "predicted_wasted_gb_s": round(idle_gb_s / compress, 3),
           "measured_cold_starts": total_m, "agree": agree(total_p, total_m) and not late_s > 0,
           "per_function": per_function}
    if late_s > 0:
        doc["sidecar_late_s"] = round(late_s, 3)
    return doc


def agree(predicted: int, measured: int) -> bool:
    """Whether replay and the live run agree on a run's cold starts (within TOLERANCE_ABS + TOLERANCE_REL)."""
    return abs(predicted - measured) <= TOLERANCE_ABS + TOLERANCE_REL * measured


def results_as_planned(schedule: Schedule, startup_s: float = FALLBACK_STARTUP_S) -> dict:
    """The results a run of `schedule` would give if every request were answered at its intended time after its
    planned work (`--simulate-only`): no live run, so no measured cold start and no measured start-up (each
    function's is `startup_s`, real seconds)."""
    n = len(schedule)
    planned = np.array([_planned_ms(k) for k in schedule.kinds])
    work_ms = planned[np.asarray(schedule.kind, np.int64)] if n else np.zeros(0)
    return {"started_unix": None, "per_function": {}, "assumed_startup_s": float(startup_s),
            "requests": {"status": [200] * n, "gateway_ms": work_ms.tolist(), "startup_ms": [None] * n,
                         "function": np.asarray(schedule.func).tolist(), "cold": [0] * n}}


def _before(workload, cut_s: float):
    """The requests of a recorded workload that arrive before `cut_s`."""
    from prewarmer.workloads.azure2021 import Trace2021Workload

    keep = workload.t < cut_s
    return Trace2021Workload(workload.functions, workload.t[keep], workload.func[keep], workload.duration[keep],
                             cut_s, start_minute=workload.start_minute, description={"source": "load-test warm-up"})


def _planned_ms(kind: str) -> float:
    """The work of a payload kind (`prewarmer.load.schedule.work_kind`): cpu / io milliseconds, echo and heavy ~1 ms."""
    sample, _, ms = kind.partition(":")
    return float(ms) if ms and sample in ("cpu", "io") else 1.0
