"""`prewarmer loadtest`: replay a schedule open-loop against a live local gateway, with and without the
prewarmer, and report BENCHMARKS.md metrics measured on real processes.

For each run it starts what is missing: Redis (a fresh `redis-server` on a free port unless `--redis`),
the local gateway (`python -m prewarmer.gateway`, basic auth, a per-run functions directory mapping
trace functions onto the sample functions), optionally the sidecar (`python -m prewarmer run`), then
Locust headless as a subprocess running `prewarmer.load.openloop`. It samples the gateway's
`/metrics` every second meanwhile (warm instances, cold starts, idle GB-s) and stops everything it
started at the end, on failure and on Ctrl-C / SIGTERM: process groups, then a sweep for any process
carrying the run's marker environment variable, so nothing outlives the command.

`--compare POLICY` runs the same schedule twice on fresh processes: the gateway alone (its own fixed
keep-alive) versus the gateway plus the sidecar with POLICY, and prints prewarmer/baseline ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

from prewarmer.load import schedule as sched_mod
from prewarmer.load.errors import LoadTestError, UsageError
from prewarmer.load.report import print_simulated, print_table, ratios, series, write_plot
from prewarmer.load.run import RunSetup, run_once
from prewarmer.load.schedule_options import build_schedule
from prewarmer.load.services import DEFAULT_MAX_WORKERS, SIDECAR_SHARDS
from prewarmer.units import parse_duration

LAG_WARNING_MS = 100.0


def _check_policy(spec: str) -> None:
    from prewarmer.registry import policy_factory

    try:
        policy_factory(spec)
    except ValueError as e:
        raise UsageError(f"policy {spec!r}: {e}") from None


def _check_tools() -> None:
    import importlib.util

    if importlib.util.find_spec("locust") is None:
        raise LoadTestError(f"locust is not installed for {sys.executable} (pip install locust)")


def loadtest(args: argparse.Namespace) -> dict:
    """Build the schedule, run it (once or twice), write the outputs; returns the report document."""
    policy = args.compare or args.policy
    if policy:
        _check_policy(policy)
    if getattr(args, "startup", None) is not None and not getattr(args, "simulate_only", False):
        raise UsageError("--startup is for --simulate-only: a live run measures each function's start-up")
    schedule = build_schedule(args)
    if len(schedule) == 0:
        raise UsageError("the schedule is empty: widen --minutes / --duration or choose other functions")
    compress = float(schedule.meta.get("compress") or 1.0)
    keep_alive = parse_duration(args.gateway_keep_alive) if args.gateway_keep_alive else 600.0 / compress
    max_workers = args.gateway_max_workers
    if max_workers < 1:
        raise UsageError(f"--gateway-max-workers must be >= 1, got {max_workers}")
    if args.save_schedule:
        schedule.save(args.save_schedule)
    if getattr(args, "simulate_only", False):
        return _simulate_only(args, schedule, policy, keep_alive, compress, max_workers)
    _check_tools()
    run_id = f"{os.getpid()}-{secrets.token_hex(4)}"
    owned_tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        owned_tmp = tempfile.TemporaryDirectory(prefix="prewarmer-loadtest-")
        workdir = Path(owned_tmp.name)
    try:
        functions_dir = sched_mod.write_functions_dir(schedule, workdir / "functions", args.samples)
        password_file = workdir / "basic-auth-password"
        password_file.write_text(secrets.token_urlsafe(18), encoding="utf-8")
        password_file.chmod(0o600)
        schedule_path = schedule.save(workdir / "schedule.json")
        setup = RunSetup(run_id, workdir, functions_dir, password_file, schedule, schedule_path, keep_alive,
                         compress, args.redis, args.quiet, max_workers)
        if not args.quiet:
            d = schedule.describe()
            print(f"schedule: {d['requests']} requests over {d['duration_s']:.1f} s ({d['mean_rps']:.2f} req/s) to "
                  f"{len(schedule.functions)} functions: "
                  + ", ".join(f"{f.name}={f.sample}" for f in schedule.functions), file=sys.stderr, flush=True)
        plan = [("baseline", None), ("prewarmer", args.compare)] if args.compare else (
            [("prewarmer", args.policy)] if args.policy else [("baseline", None)])
        runs = [run_once(setup, label, pol) for label, pol in plan]
    finally:
        if owned_tmp is not None:
            owned_tmp.cleanup()
    doc: dict = {"schedule": schedule.describe(),
                 "config": {"run_id": run_id, "keep_alive_s": keep_alive, "compress": compress, "policy": policy,
                            "max_workers": max_workers,
                            "redis": "external" if args.redis else "per run", "seed": args.seed,
                            "warmup_s": float(schedule.meta.get("warmup_s") or 0.0),
                            "latency": "from the intended send time (open loop)",
                            "throughput_rps": "requests answered without error per real second of the run",
                            "wasted_gb_s": "gateway idle GB-s (ready, not executing) during the run"}}
    for r in runs:
        doc[r.label] = r.metrics
    ratio = ratios(doc["baseline"], doc["prewarmer"]) if len(runs) == 2 else None
    doc["ratios"] = ratio or {}
    doc["per_function"] = {r.label: {name: {**f, **{f"gateway_{k}": v for k, v in r.per_function_gateway.get(
        name, {}).items()}} for name, f in r.results.get("per_function", {}).items()} for r in runs}
    doc["series"] = {r.label: series(r, schedule.duration_s) for r in runs}
    if args.simulate:
        from prewarmer.load.simulate import predict

        doc["simulated"] = {r.label: predict(schedule, r.results, r.policy, keep_alive, compress,
                                             r.policy_clock_start_unix, max_workers, SIDECAR_SHARDS) for r in runs}
    if not args.quiet:
        print_table(runs, ratio)
        if "simulated" in doc:
            print_simulated(doc["simulated"])
        for r in runs:
            lag = r.metrics.get("send_lag_p99_ms")
            if lag is not None and lag > LAG_WARNING_MS:
                print(f"warning: [{r.label}] the load generator sent late (send lag p99 {lag:.0f} ms): the machine "
                      "is overloaded; latencies still count from the intended times", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    if args.plot:
        write_plot(Path(args.plot), runs, schedule.duration_s, doc)
    return doc


def _startup(args: argparse.Namespace) -> float:
    """`--startup` in seconds (the default of `results_as_planned` without it)."""
    from prewarmer.load.simulate import FALLBACK_STARTUP_S
    from prewarmer.units import parse_duration

    if getattr(args, "startup", None) is None:
        return FALLBACK_STARTUP_S
    try:
        value = parse_duration(args.startup)
    except ValueError:
        raise UsageError(f"--startup: expected a duration such as 0.3s or 2s, got {args.startup!r}") from None
    if not value > 0:
        raise UsageError(f"--startup must be positive, got {args.startup!r}")
    return value


def _simulate_only(args: argparse.Namespace, schedule: sched_mod.Schedule, policy: str | None, keep_alive: float,
                   compress: float, max_workers: int = DEFAULT_MAX_WORKERS) -> dict:
    """`--simulate-only`: the predictions for the schedule as planned, the gateway alone and the policy; no run."""
    from prewarmer.load.simulate import predict, results_as_planned

    planned = results_as_planned(schedule, startup_s=_startup(args))
    doc: dict = {"schedule": schedule.describe(),
                 "config": {"keep_alive_s": keep_alive, "compress": compress, "policy": policy,
                            "warmup_s": float(schedule.meta.get("warmup_s") or 0.0), "simulate_only": True,
                            "startup_s": planned["assumed_startup_s"]},
                 "simulated": {label: predict(schedule, planned, pol, keep_alive, compress, max_workers=max_workers,
                                              shards=SIDECAR_SHARDS)
                               for label, pol in [("baseline", None)] + ([("prewarmer", policy)] if policy else [])}}
    if not args.quiet:
        print_simulated(doc["simulated"], measured=False)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    return doc
