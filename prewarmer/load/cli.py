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
import base64
import collections
import contextlib
import io
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prewarmer.load import schedule as sched_mod
from prewarmer.units import parse_duration
from prewarmer.workloads.base import TraceError

MARKER_ENV = "PREWARMER_LOADTEST_RUN"
LAG_WARNING_MS = 100.0
USER = "admin"
REPORT_METRICS = ("invocations", "cold_starts", "cold_start_rate", "throughput_rps", "p50_latency_ms",
                  "p99_latency_ms", "errors", "wasted_gb_s", "busy_gb_s", "send_lag_p50_ms", "send_lag_p99_ms",
                  "send_lag_max_ms")
LISTEN_RE = re.compile(r"event=gateway_listening address=(\S+)")
SIDECAR_PORT_RE = re.compile(r'"event": "metrics listening".*"port": (\d+)')
REDIS_READY_RE = re.compile(r"Ready to accept connections")
LOCUSTFILE = '"""Written by prewarmer loadtest."""\n\nfrom prewarmer.load.openloop import OpenLoopUser  # noqa: F401\n'


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


class LoadTestError(Exception):
    """A process of the run failed; the message is one line naming it and its last log line."""


# ---------------------------------------------------------------------------------------------------
# Command line


def add_loadtest_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "loadtest", help="open-loop load test of the local gateway, with and without the prewarmer",
        description="Replay a trace slice (or the built-in pattern) open-loop with Locust against a local gateway "
                    "started for the run; --compare POLICY runs it twice (gateway alone, then with the sidecar) "
                    "and reports cold_start_rate, throughput_rps, p50/p99 latency, errors, wasted_gb_s and ratios.")
    g = p.add_argument_group("schedule (default: --workload synthetic)")
    g.add_argument("--trace", metavar="PATH", help="Azure 2019 directory (or day file) or Azure 2021 CSV")
    g.add_argument("--workload", metavar="NAME", choices=["synthetic", "azure-like"],
                   help="synthetic: periodic echo, Poisson cpu, bursts of io (60 s); azure-like: generated trace")
    g.add_argument("--schedule", metavar="FILE", help="a saved schedule (JSON / .npz) instead of building one")
    g.add_argument("--functions", metavar="SPEC", default=None,
                   help="auto[:N] (default auto:4: a periodic function, then the busiest that fit the rate bounds), "
                        "START:STOP or N (trace rows), or NAME,NAME,... (trace function names)")
    g.add_argument("--minutes", metavar="A:B", help="trace minutes [A, B) (default 0:30)")
    g.add_argument("--compress", metavar="FACTOR", type=float, default=None,
                   help="time compression: t_real = t_trace / FACTOR (default 30 for traces, 1 for synthetic)")
    g.add_argument("--duration", metavar="S", help="replay at most this long, real time (synthetic: its length, 60s)")
    g.add_argument("--heavy", action="store_true", help="include the heavy (PyTorch) function: seconds of cold start")
    g.add_argument("--max-rps", type=float, default=sched_mod.DEFAULT_MAX_TOTAL_RPS,
                   help=f"bound on the total request rate (default {sched_mod.DEFAULT_MAX_TOTAL_RPS:g})")
    g.add_argument("--max-function-rps", type=float, default=sched_mod.DEFAULT_MAX_FUNCTION_RPS,
                   help=f"auto selection skips functions above this rate "
                        f"(default {sched_mod.DEFAULT_MAX_FUNCTION_RPS:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of the arrivals (0)")
    g.add_argument("--save-schedule", metavar="FILE", help="also write the schedule here (for plain locust runs)")
    r = p.add_argument_group("runs")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--compare", metavar="POLICY", help="baseline run, then a run with the sidecar using POLICY")
    mode.add_argument("--policy", metavar="POLICY", help="one run with the sidecar using POLICY (no baseline)")
    r.add_argument("--gateway-keep-alive", metavar="S",
                   help="the gateway's idle keep-alive (default: 10 minutes of trace time, 600s / FACTOR, the "
                        "BENCHMARKS.md baseline)")
    r.add_argument("--redis", metavar="URL", help="use this Redis instead of starting redis-server per run")
    r.add_argument("--samples", metavar="DIR", help="sample functions directory (default: the repository's functions/)")
    r.add_argument("--workdir", metavar="DIR", help="keep logs, schedule and results here (default: a temp dir, "
                                                    "removed at the end)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="OUT", help="write the report (BENCHMARKS.md metric names) here")
    o.add_argument("--plot", metavar="OUT.png|OUT.html", help="time series per run: requests/s, cold starts, "
                                                              "warm instances")
    o.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_loadtest)
    return p


def parse_functions(text: str | None) -> int | slice | list[str]:
    """auto[:N] -> N; START:STOP / N -> a slice of trace rows; anything else -> function names."""
    from prewarmer.workloads.detect import parse_slice

    spec = (text or "auto").strip()
    if spec == "auto" or spec.startswith("auto:"):
        n_text = spec.partition(":")[2] or "4"
        if not n_text.isdigit() or int(n_text) < 1:
            raise UsageError(f"--functions {text!r}: auto:N needs a positive N")
        return int(n_text)
    if re.fullmatch(r"\s*\d*\s*:\s*\d*\s*|\s*\d+\s*", spec):
        return parse_slice(spec)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--functions {text!r}: no function name")
    return names


def build_schedule(args: argparse.Namespace) -> sched_mod.Schedule:
    from prewarmer.workloads.detect import parse_minutes

    chosen = [n for n in ("trace", "workload", "schedule") if getattr(args, n)]
    if len(chosen) > 1:
        raise UsageError("give one of --trace, --workload, --schedule")
    duration = parse_duration(args.duration) if args.duration else None
    if duration is not None and not duration > 0:
        raise UsageError("--duration must be > 0")
    if args.compress is not None and not args.compress > 0:
        raise UsageError("--compress must be > 0")
    if args.schedule:
        if args.functions or args.minutes or args.compress or args.heavy:
            raise UsageError("--schedule is already built: --functions/--minutes/--compress/--heavy do not apply")
        s = sched_mod.Schedule.load(args.schedule)
        return s.truncated(duration) if duration else s
    if args.trace or args.workload == "azure-like":
        minutes = parse_minutes(args.minutes or "0:30")
        compress = args.compress or 30.0
        functions = parse_functions(args.functions)
        common = dict(compress=compress, seed=args.seed, duration_s=duration, include_heavy=args.heavy,
                      max_total_rps=args.max_rps, max_function_rps=args.max_function_rps)
        if args.trace:
            return sched_mod.from_trace(args.trace, functions=functions, minutes=minutes, **common)
        from prewarmer.workloads.base import MinuteCountWorkload
        from prewarmer.workloads.synthetic import azure_like

        w = azure_like(n_functions=200, duration_s=minutes[1] * 60.0, seed=args.seed)
        window = MinuteCountWorkload(w.functions, w.counts[:, minutes[0]:minutes[1]], w.duration_pct_ms,
                                     start_minute=minutes[0], description=w.describe())
        if isinstance(functions, list):
            missing = sorted(set(functions) - set(w.functions.names))
            if missing:
                raise UsageError(f"--functions: not in the azure-like workload: {', '.join(missing[:3])}")
            idx = [w.functions.names.index(n) for n in functions]
        elif isinstance(functions, slice):
            idx = list(range(len(w.functions)))[functions]
        else:
            return sched_mod.choose_and_build(window, functions, meta={"minutes": list(minutes)}, **common)
        sub = MinuteCountWorkload(w.functions.subset(idx), window.counts[idx], window.duration_pct_ms[idx],
                                  start_minute=minutes[0], description=w.describe())
        return sched_mod.choose_and_build(sub, None, meta={"minutes": list(minutes)}, **common)
    if args.functions or args.minutes:
        raise UsageError("--functions and --minutes select from a --trace (or --workload azure-like)")
    if args.compress not in (None, 1.0):
        raise UsageError("--compress applies to traces; the synthetic pattern is already in real time")
    return sched_mod.synthetic(duration_s=duration or 60.0, seed=args.seed, heavy_every_s=20.0 if args.heavy else None)


# ---------------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A child process in its own session, output (stdout + stderr) copied to a log file by a thread."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str], cwd: str | None = None,
                 patterns: tuple[re.Pattern[str], ...] = ()) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.matches: dict[re.Pattern[str], re.Match[str]] = {}
        self._patterns = patterns
        self._cond = threading.Condition()
        try:
            # A session of its own: Ctrl-C in the terminal reaches us only, and we stop children in order.
            self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        except FileNotFoundError:
            raise LoadTestError(f"{name}: {argv[0]} not found") from None
        self._thread = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self.log_path, "ab") as log:
            for raw in iter(self.popen.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                with self._cond:
                    self.tail.append(line)
                    for pat in self._patterns:
                        if pat not in self.matches and (m := pat.search(line)):
                            self.matches[pat] = m
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def last_line(self) -> str:
        lines = [ln for ln in self.tail if ln.strip()]
        return lines[-1][-300:] if lines else "(no output)"

    def failure(self, what: str) -> LoadTestError:
        rc = self.popen.poll()
        status = f"exited with code {rc}" if rc is not None else "still running"
        return LoadTestError(f"{self.name} {what} ({status}): {self.last_line()} [log: {self.log_path}]")

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        """The first output line matching `pattern`; LoadTestError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while pattern not in self.matches:
                left = deadline - time.monotonic()
                if left <= 0 or (not self.running() and not self._thread.is_alive()):
                    raise self.failure(what)
                self._cond.wait(min(left, 0.2))
            return self.matches[pattern]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout`."""
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # The group may still hold something a child forked; it has no business outliving the run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._thread.join(timeout=5)


def marked_pids(run_id: str) -> list[int]:
    """Processes (other than this one) whose environment carries a marker starting with `run_id`
    (markers are `<pid>-<random>-<label>`, so a prefix finds every run of one command)."""
    needle = f"{MARKER_ENV}={run_id}".encode()
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(needle) for var in env.split(b"\0")):
            out.append(int(entry.name))
    return out


class Processes:
    """Everything one run started; `stop_all` stops them in reverse order and sweeps stragglers."""

    def __init__(self, run_id: str, logdir: Path) -> None:
        self.run_id, self.logdir = run_id, logdir
        self.env = {**os.environ, MARKER_ENV: run_id, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parents[2])
        # Children import this very package, installed or not.
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], patterns: tuple[re.Pattern[str], ...] = (),
              cwd: str | None = None) -> Proc:
        proc = Proc(name, argv, self.logdir / f"{name}.log", self.env, cwd=cwd, patterns=patterns)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        """Returns the pids that had to be swept up after the orderly stop (normally none)."""
        with _signals_deferred():
            return self._stop_all()

    def _stop_all(self) -> list[int]:
        for proc in reversed(self.procs):
            proc.stop()
        leftover = marked_pids(self.run_id)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while marked_pids(self.run_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        return leftover


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """A second Ctrl-C must not cut the clean-up short: signals wait until it is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    got: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _f: got.append(signum)) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        if got:
            raise KeyboardInterrupt(signal.Signals(got[0]).name)


def check_redis(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping()
    except (redis.RedisError, ValueError) as e:
        raise LoadTestError(f"cannot reach Redis at {url}: {e}") from None


def forget_streams(url: str, prefix: str) -> None:
    """Delete a run's keys (event streams, sidecar state) from a Redis that outlives the run."""
    import redis

    with contextlib.suppress(redis.RedisError, ValueError):
        r = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, auth: tuple[str, str] | None = None, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def poll_until(check: Callable[[], bool], timeout: float, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not proc.running():
            raise proc.failure(what)
        if time.monotonic() > deadline:
            raise proc.failure(what)
        time.sleep(0.1)


def start_redis(procs: Processes, logdir: Path) -> str:
    if shutil.which("redis-server") is None:
        raise LoadTestError("redis-server not found on PATH: install Redis or pass --redis URL")
    for attempt in range(3):
        port = free_port()
        rdir = logdir / "redis"
        rdir.mkdir(exist_ok=True)
        proc = procs.start(f"redis-{attempt}" if attempt else "redis",
                           ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(rdir), "--protected-mode", "no"],
                           patterns=(REDIS_READY_RE,))
        try:
            proc.wait_for(REDIS_READY_RE, 20, "did not start")
            return f"redis://127.0.0.1:{port}/0"
        except LoadTestError:
            if any("Address already in use" in ln for ln in proc.tail):
                continue  # another process took the port between our probe and the bind: pick another
            raise
    raise LoadTestError(f"redis-server: port {port} taken, three times in a row")


# ---------------------------------------------------------------------------------------------------
# Gateway metrics


def parse_gateway_metrics(text: str) -> dict:
    """Totals and per-function figures of the gateway's Prometheus text (function_name is name.namespace)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"idle_gb_s": 0.0, "busy_gb_s": 0.0, "cold_starts": 0.0, "workers": {"starting": 0, "idle": 0, "busy": 0},
           "functions": {}}
    wanted = {"prewarmer_gateway_idle_gb_seconds_total": "idle_gb_s",
              "prewarmer_gateway_busy_gb_seconds_total": "busy_gb_s",
              "prewarmer_gateway_cold_starts_total": "cold_starts"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            fn = s.labels.get("function_name", "").rsplit(".", 1)[0]
            per = out["functions"].setdefault(fn, {"idle_gb_s": 0.0, "busy_gb_s": 0.0, "cold_starts": 0.0,
                                                   "warm": 0, "starting": 0}) if fn else None
            if s.name in wanted:
                out[wanted[s.name]] += s.value
                if per is not None:
                    per[wanted[s.name]] += s.value
            elif s.name == "prewarmer_gateway_workers":
                state = s.labels.get("state", "")
                if state in out["workers"]:
                    out["workers"][state] += int(s.value)
                if per is not None:
                    per["warm" if state in ("idle", "busy") else "starting"] += int(s.value)
    out["functions"] = {k: v for k, v in out["functions"].items() if k}
    return out


def scrape(gateway: str) -> dict | None:
    status, body = http_get(f"{gateway}/metrics", timeout=5)
    if status != 200:
        return None
    try:
        return parse_gateway_metrics(body.decode())
    except ValueError:
        return None


class Sampler(threading.Thread):
    """Samples the gateway's /metrics every `interval` seconds: warm/starting instances, cold starts, GB-s."""

    def __init__(self, gateway: str, interval: float = 1.0) -> None:
        super().__init__(name="metrics-sampler", daemon=True)
        self.gateway, self.interval = gateway, interval
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            m = scrape(self.gateway)
            if m is not None:
                w = m["workers"]
                self.samples.append({"t": round(time.monotonic() - self.t0, 3), "unix": time.time(),
                                     "warm": w["idle"] + w["busy"], "busy": w["busy"], "starting": w["starting"],
                                     "cold_starts": m["cold_starts"],
                                     "idle_gb_s": m["idle_gb_s"], "busy_gb_s": m["busy_gb_s"]})
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)

    def latest(self) -> dict | None:
        return self.samples[-1] if self.samples else None


# ---------------------------------------------------------------------------------------------------
# One run


@dataclass
class RunSetup:
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


@dataclass
class RunOutcome:
    label: str
    policy: str | None
    metrics: dict
    results: dict
    samples: list[dict] = field(default_factory=list)
    per_function_gateway: dict = field(default_factory=dict)
    swept: list[int] = field(default_factory=list)


def _fmt_duration(s: float) -> str:
    return "inf" if math.isinf(s) else f"{s:g}s"


def start_gateway(procs: Processes, setup: RunSetup, redis_url: str, prefix: str) -> str:
    proc = procs.start("gateway", [sys.executable, "-m", "prewarmer.gateway", "--host", "127.0.0.1", "--port", "0",
                                   "--redis", redis_url, "--functions", str(setup.functions_dir),
                                   "--keep-alive", _fmt_duration(setup.keep_alive_s),
                                   "--basic-auth-user", USER, "--basic-auth-password-file", str(setup.password_file),
                                   "--stream-prefix", prefix], patterns=(LISTEN_RE,))
    address = proc.wait_for(LISTEN_RE, 60, "did not start listening").group(1)
    url = f"http://{address}"
    poll_until(lambda: http_get(f"{url}/healthz")[0] == 200, 30, proc, "never answered /healthz with 200")
    return url


def start_sidecar(procs: Processes, setup: RunSetup, gateway: str, redis_url: str, prefix: str, policy: str) -> None:
    proc = procs.start("sidecar", [sys.executable, "-m", "prewarmer", "run", "--gateway", gateway, "--kind", "openfaas",
                                   "--redis", redis_url, "--policy", policy, "--time-scale", f"{setup.compress:g}",
                                   "--interval", "0.25s", "--metrics-host", "127.0.0.1", "--metrics-port", "0",
                                   "--basic-auth-user", USER, "--basic-auth-password-file", str(setup.password_file),
                                   "--checkpoint-interval", "2s", "--prefix", prefix,
                                   "--replica-id", f"loadtest-{setup.run_id}"], patterns=(SIDECAR_PORT_RE,))
    port = proc.wait_for(SIDECAR_PORT_RE, 90, "did not start its metrics server").group(1)
    poll_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, proc, "never became ready")


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


def run_once(setup: RunSetup, label: str, policy: str | None) -> RunOutcome:
    """One replay of the schedule on fresh processes; everything started is stopped before returning."""
    logdir = setup.workdir / label
    logdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(f"{setup.run_id}-{label}", logdir)
    sampler: Sampler | None = None
    run_keys = f"loadtest:{setup.run_id}:{label}:"
    prefix = f"{run_keys}events"  # fresh streams and sidecar state for every run
    say = (lambda msg: None) if setup.quiet else (lambda msg: print(f"[{label}] {msg}", file=sys.stderr, flush=True))
    try:
        if setup.redis_url:
            check_redis(setup.redis_url)
        redis_url = setup.redis_url or start_redis(procs, logdir)
        gateway = start_gateway(procs, setup, redis_url, prefix)
        say(f"gateway {gateway} (keep-alive {_fmt_duration(setup.keep_alive_s)}), redis {redis_url}")
        if policy:
            start_sidecar(procs, setup, gateway, redis_url, prefix, policy)
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
        if after is None:
            raise LoadTestError(f"gateway {gateway}/metrics is not readable after the run")
        metrics = {k: results.get(k) for k in ("invocations", "cold_starts", "cold_start_rate", "throughput_rps",
                                               "p50_latency_ms", "p99_latency_ms", "errors", "send_lag_p50_ms",
                                               "send_lag_p99_ms", "send_lag_max_ms", "scheduled")}
        metrics["wasted_gb_s"] = round(after["idle_gb_s"] - before["idle_gb_s"], 6)
        metrics["busy_gb_s"] = round(after["busy_gb_s"] - before["busy_gb_s"], 6)
        metrics["gateway_cold_starts"] = int(round(after["cold_starts"] - before["cold_starts"]))
        per_fn = {name: {k: round(v - before["functions"].get(name, {}).get(k, 0.0), 6)
                         for k, v in f.items() if k in ("idle_gb_s", "busy_gb_s", "cold_starts")}
                  for name, f in after["functions"].items()}
        return RunOutcome(label, policy, metrics, results, list(sampler.samples), per_fn)
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


# ---------------------------------------------------------------------------------------------------
# Report


def ratios(base: dict, pre: dict) -> dict:
    out = {}
    for k in REPORT_METRICS:
        b, p = base.get(k), pre.get(k)
        out[k] = round(p / b, 4) if isinstance(b, int | float) and isinstance(p, int | float) and b else None
    return out


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def print_table(runs: list[RunOutcome], ratio: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("metric")
    for r in runs:
        table.add_column(f"{r.label}" + (f" ({r.policy})" if r.policy else ""), justify="right")
    if ratio is not None:
        table.add_column("ratio", justify="right")
    for k in REPORT_METRICS:
        row = [k] + [_fmt(r.metrics.get(k)) for r in runs]
        if ratio is not None:
            row.append(_fmt(ratio.get(k)))
        table.add_row(*row)
    console = Console(soft_wrap=False, width=max(100, shutil.get_terminal_size((100, 24)).columns))
    console.print("[bold]load test[/]: open loop, latency from the intended send time")
    console.print(table)


def series(run: RunOutcome, duration_s: float) -> dict:
    from prewarmer.load.results import per_second

    s = per_second(run.results, duration_s=max(duration_s, run.results.get("span_s") or 0.0))
    # Instances were sampled on the wall clock; put them on the schedule's time axis.
    t0 = run.results.get("started_unix") or (run.samples[0]["unix"] if run.samples else 0.0)
    s["instances"] = {"t": [round(x["unix"] - t0, 3) for x in run.samples], "warm": [x["warm"] for x in run.samples],
                      "starting": [x["starting"] for x in run.samples]}
    return s


def write_plot(path: Path, runs: list[RunOutcome], duration_s: float, table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for k, r in enumerate(runs):
        s = series(r, duration_s)
        name, color = r.label + (f" ({r.policy})" if r.policy else ""), f"C{k}"
        # One more edge so that the last second is drawn as wide as the others.
        t = s["t"] + [len(s["t"])]
        if k == 0:  # every run replays the same schedule: draw what was sent once
            axes[0].step(t, s["requests"] + s["requests"][-1:], where="post", color="0.6", label="scheduled")
        axes[0].step(t, s["completed"] + s["completed"][-1:], where="post", color=color, alpha=0.8,
                     label=f"{name} completed")
        axes[1].step(t, s["cold_starts"] + s["cold_starts"][-1:], where="post", color=color, label=name)
        axes[2].plot(s["instances"]["t"], s["instances"]["warm"], color=color, label=f"{name} warm")
        axes[2].plot(s["instances"]["t"], s["instances"]["starting"], color=color, linestyle=":",
                     label=f"{name} starting")
    axes[0].set_ylabel("requests / s")
    axes[1].set_ylabel("cold starts / s")
    axes[2].set_ylabel("instances")
    axes[2].set_xlabel("seconds since the start of the run")
    for ax in axes:
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    if path.suffix.lower() in (".html", ".htm"):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        img = base64.b64encode(buf.getvalue()).decode()
        head = "".join(f"<th>{r.label}{f' ({r.policy})' if r.policy else ''}</th>" for r in runs)
        has_ratio = bool(table.get("ratios"))
        rows = "".join(
            f"<tr><td>{k}</td>" + "".join(f"<td>{_fmt(r.metrics.get(k))}</td>" for r in runs)
            + (f"<td>{_fmt(table['ratios'].get(k))}</td>" if has_ratio else "") + "</tr>"
            for k in REPORT_METRICS)
        html = ("<!doctype html><meta charset='utf-8'><title>prewarmer load test</title>"
                "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}"
                "td:first-child{text-align:left}</style><h1>prewarmer load test</h1>"
                f"<table><tr><th>metric</th>{head}{'<th>ratio</th>' if has_ratio else ''}</tr>{rows}</table>"
                f"<img alt='time series' src='data:image/png;base64,{img}'>"
                f"<pre>{json.dumps(table.get('schedule', {}), indent=1, default=str)[:20000]}</pre>")
        path.write_text(html, encoding="utf-8")
    else:
        fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Entry point


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP unwind like Ctrl-C, so that the finally blocks stop every process."""
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _check_policy(spec: str) -> None:
    from prewarmer.policies import policy_factory

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
    _check_tools()
    policy = args.compare or args.policy
    if policy:
        _check_policy(policy)
    schedule = build_schedule(args)
    if len(schedule) == 0:
        raise UsageError("the schedule is empty: widen --minutes / --duration or choose other functions")
    compress = float(schedule.meta.get("compress") or 1.0)
    keep_alive = parse_duration(args.gateway_keep_alive) if args.gateway_keep_alive else 600.0 / compress
    if args.save_schedule:
        schedule.save(args.save_schedule)
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
                         compress, args.redis, args.quiet)
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
                            "redis": "external" if args.redis else "per run", "seed": args.seed,
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
    if not args.quiet:
        print_table(runs, ratio)
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


def cmd_loadtest(args: argparse.Namespace) -> int:
    try:
        with _terminate_as_interrupt():
            loadtest(args)
    except (UsageError, TraceError, ValueError) as e:
        print(f"prewarmer loadtest: error: {e}", file=sys.stderr)
        return 2
    except LoadTestError as e:
        hint = "" if args.workdir else " (--workdir DIR keeps the logs)"
        print(f"prewarmer loadtest: error: {e}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"prewarmer loadtest: interrupted{f' ({e})' if str(e) else ''}; every process stopped",
              file=sys.stderr)
        return 130
    return 0
