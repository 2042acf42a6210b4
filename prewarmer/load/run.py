"""One run of a load test (`run_once`): on fresh processes, start Redis (unless given), the gateway and
optionally the sidecar, replay the schedule with headless Locust running `prewarmer.load.openloop`,
sample the gateway's metrics meanwhile, show progress, and stop everything it started, whatever happens.
The outcome holds Locust's results, the gateway's GB-s and cold-start deltas and the instance samples.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prewarmer.load import schedule as sched_mod
from prewarmer.load.errors import LoadTestError
from prewarmer.load.gateway_metrics import Sampler, scrape
from prewarmer.load.processes import Processes
from prewarmer.load.services import (
    DEFAULT_MAX_WORKERS,
    check_redis,
    forget_streams,
    format_duration,
    sidecar_clock_start,
    start_gateway,
    start_redis,
    start_sidecar,
)
from prewarmer.load.simulate import worker_startups

LOCUSTFILE = '"""Written by prewarmer loadtest."""\n\nfrom prewarmer.load.openloop import OpenLoopUser  # noqa: F401\n'


@dataclass
class RunSetup:
    """What every run of one command shares: the run id, its files, the schedule and the gateway's keep-alive."""

    run_id: str
    workdir: Path
    functions_dir: Path
    password_file: Path
    schedule: sched_mod.Schedule
    schedule_path: Path
    keep_alive_s: float
    compress: float
    redis_url: str | None
    quiet: bool
    max_workers: int = DEFAULT_MAX_WORKERS


@dataclass
class RunOutcome:
    """One run: its metrics (BENCHMARKS.md names), Locust's results, the instance samples, the gateway's
    per-function deltas."""

    label: str
    policy: str | None
    metrics: dict
    results: dict
    samples: list[dict] = field(default_factory=list)
    per_function_gateway: dict = field(default_factory=dict)
    swept: list[int] = field(default_factory=list)
    policy_clock_start_unix: float | None = None  # the sidecar's policy time 0, for `--simulate`


class Progress:
    """A rich progress bar on a terminal, a line every 10 s otherwise, nothing with --quiet."""

    def __init__(self, label: str, total_s: float, quiet: bool) -> None:
        self.label, self.total_s, self.quiet = label, total_s, quiet
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._last_line = -math.inf

    def __enter__(self) -> Progress:
        if not self.quiet and self.tty:
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[info]}"), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total_s, info="")
        return self

    def update(self, elapsed: float, info: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=min(elapsed, self.total_s), info=info)
        elif elapsed - self._last_line >= 10.0:
            self._last_line = elapsed
            print(f"[{self.label}] {min(elapsed, self.total_s):.0f}/{self.total_s:.0f} s  {info}", file=sys.stderr,
                  flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def trace_epoch_s(schedule: sched_mod.Schedule) -> float:
    """The trace time the schedule starts at (seconds), so that the agents' time-of-day features read trace
    time live as they do in replay."""
    return 60.0 * float(schedule.meta.get("start_minute") or 0)


def run_once(setup: RunSetup, label: str, policy: str | None) -> RunOutcome:
    """One replay of the schedule on fresh processes; everything started is stopped before returning."""
    logdir = setup.workdir / label
    logdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(f"{setup.run_id}-{label}", logdir)
    sampler: Sampler | None = None
    clock_start: float | None = None
    run_keys = f"loadtest:{setup.run_id}:{label}:"
    prefix = f"{run_keys}events"  # fresh streams and sidecar state for every run
    say = (lambda msg: None) if setup.quiet else (lambda msg: print(f"[{label}] {msg}", file=sys.stderr, flush=True))
    try:
        if setup.redis_url:
            check_redis(setup.redis_url)
        redis_url = setup.redis_url or start_redis(procs, logdir)
        gateway = start_gateway(procs, redis_url, prefix, functions_dir=setup.functions_dir,
                                keep_alive_s=setup.keep_alive_s, password_file=setup.password_file,
                                max_workers=setup.max_workers)
        say(f"gateway {gateway} (keep-alive {format_duration(setup.keep_alive_s)}), redis {redis_url}")
        if policy:
            start_sidecar(procs, gateway, redis_url, prefix, policy, time_scale=setup.compress,
                          password_file=setup.password_file, replica_id=f"loadtest-{setup.run_id}",
                          record=logdir / "decisions.jsonl", clock_epoch_s=trace_epoch_s(setup.schedule),
                          max_replicas=setup.max_workers)
            clock_start = sidecar_clock_start(redis_url, prefix)
            if clock_start is None:  # ready means started: its policy clock is in Redis
                raise LoadTestError("the sidecar said it was ready before its policy clock was set")
            say(f"sidecar ready: policy {policy}, time scale {setup.compress:g}")
        before = scrape(gateway)
        if before is None:
            raise LoadTestError(f"gateway {gateway}/metrics is not readable")
        sampler = Sampler(gateway)
        sampler.start()

        lf_dir = logdir / "locust"
        lf_dir.mkdir(exist_ok=True)
        (lf_dir / "locustfile.py").write_text(LOCUSTFILE, encoding="utf-8")
        results_path = logdir / "results.json"
        dur = setup.schedule.duration_s
        # A safety net only: the user ends the test itself once every reply is in.
        run_time = math.ceil(dur + 120)
        locust = procs.start("locust", [sys.executable, "-m", "locust", "-f", str(lf_dir / "locustfile.py"),
                                        "--headless", "-u", "1", "-r", "1", "-t", f"{run_time}s", "--host", gateway,
                                        "--schedule", str(setup.schedule_path), "--results", str(results_path),
                                        "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"],
                             cwd=str(lf_dir))
        t0 = time.monotonic()
        with Progress(label, dur, setup.quiet) as progress:
            while locust.running():
                elapsed = time.monotonic() - t0
                if elapsed > run_time + 60:
                    raise locust.failure("did not finish in time")
                for p in procs.procs:
                    if p is not locust and not p.running():
                        raise p.failure("died during the run")
                s = sampler.latest()
                sent = int(setup.schedule.t.searchsorted(min(elapsed, dur)))
                info = f"{sent} requests" + (f", warm {s['warm']}, cold starts {s['cold_starts']:.0f}" if s else "")
                progress.update(elapsed, info)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    locust.popen.wait(0.5)
        after = scrape(gateway)
        sampler.stop()
        if not results_path.is_file():
            raise locust.failure("wrote no results")
        results = json.loads(results_path.read_text(encoding="utf-8"))
        # The workers' own start-ups (spawn to ready), for replaying the run (`prewarmer.load.simulate`).
        results["workers"] = worker_startups(logdir / "gateway.log")
        if after is None:
            raise LoadTestError(f"gateway {gateway}/metrics is not readable after the run")
        warmup = float(setup.schedule.meta.get("warmup_s") or 0.0)
        if warmup > 0:
            # The gateway's figures count from the end of the warm-up (the sample taken next after it).
            boundary = sampler.at(float(results.get("started_unix") or 0.0) + warmup)
            if boundary is None:
                raise LoadTestError("no sample of the gateway's metrics after the warm-up")
            before = boundary
        metrics = {k: results.get(k) for k in ("invocations", "cold_starts", "cold_start_rate", "throughput_rps",
                                               "p50_latency_ms", "p99_latency_ms", "errors", "send_lag_p50_ms",
                                               "send_lag_p99_ms", "send_lag_max_ms", "scheduled")}
        metrics["wasted_gb_s"] = round(after["idle_gb_s"] - before["idle_gb_s"], 6)
        metrics["busy_gb_s"] = round(after["busy_gb_s"] - before["busy_gb_s"], 6)
        metrics["gateway_cold_starts"] = int(round(after["cold_starts"] - before["cold_starts"]))
        per_fn = {name: {k: round(v - before["functions"].get(name, {}).get(k, 0.0), 6)
                         for k, v in f.items() if k in ("idle_gb_s", "busy_gb_s", "cold_starts")}
                  for name, f in after["functions"].items()}
        return RunOutcome(label, policy, metrics, results, list(sampler.samples), per_fn,
                          policy_clock_start_unix=clock_start if policy else None)
    finally:
        try:
            if sampler is not None:
                sampler.stop()
        finally:
            swept = procs.stop_all()
            if swept:
                print(f"[{label}] swept {len(swept)} leftover process(es): {swept}", file=sys.stderr)
            if setup.redis_url:
                forget_streams(setup.redis_url, run_keys)
