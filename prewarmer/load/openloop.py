"""Locust side of the load test: replay a request schedule open-loop against a gateway.

`load/locustfile.py` imports this module, so `locust -f load/locustfile.py --host http://127.0.0.1:8080`
runs it, headless or with the web UI. Locust users are closed-loop (the next task waits for the last
reply), so one `OpenLoopUser` instead walks the schedule in its task and spawns one greenlet per
request at the request's intended time; requests use the User's HTTP client, so Locust's statistics and
UI show them, but each is reported with its response time counted from the intended send time. Every
latency, the send lag, the `X-Cold-Start` header and per-function figures go to a results JSON at the
end of the test (`--results PATH` or PREWARMER_RESULTS).

Custom arguments: `--schedule PATH` (a JSON/.npz file from `prewarmer.load.schedule`; default: the
built-in synthetic pattern, `--synthetic-duration` seconds) and `--results PATH`. When the schedule is
done and every reply is in, the test stops (and a headless Locust exits).

Importing this module imports Locust, which monkey-patches the standard library for gevent: only
Locust processes should import it.
"""

from __future__ import annotations

import logging
import math
import time

import gevent
from gevent.pool import Group
from locust import FastHttpUser, events, task
from locust.exception import StopUser

from prewarmer.load import schedule as sched_mod
from prewarmer.load.results import Recorder, parse_cold, parse_ms, write_json
from prewarmer.load.timing import run_schedule

log = logging.getLogger("prewarmer.load")


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--schedule", default="", env_var="PREWARMER_SCHEDULE",
                        help="request schedule (JSON or .npz from prewarmer.load.schedule); "
                             "default: the built-in synthetic pattern")
    parser.add_argument("--results", default="", env_var="PREWARMER_RESULTS",
                        help="write every latency and per-function statistics here (JSON) when the test stops")
    parser.add_argument("--synthetic-duration", type=float, default=60.0, env_var="PREWARMER_SYNTHETIC_DURATION",
                        help="length in seconds of the built-in pattern, used without --schedule (60)")


class OpenLoopRun:
    """One test run (the web UI may start several): the schedule, its prepared requests, the records."""

    def __init__(self, schedule: sched_mod.Schedule, results_path: str) -> None:
        self.schedule = schedule
        self.results_path = results_path
        names = schedule.names
        # Paths and bodies prepared once per kind: nothing but the send happens at send time.
        prepared = {k: sched_mod.request_for_kind(kind) for k, kind in enumerate(schedule.kinds)}
        self.requests = []
        for f, k in zip(schedule.func.tolist(), schedule.kind.tolist(), strict=True):
            query, body = prepared[k]
            path = f"/function/{names[f]}" + (f"?{query}" if query else "")
            self.requests.append((path, f"/function/{names[f]}", body))
        self.recorder = Recorder(schedule.t, schedule.func, names, schedule.duration_s,
                                 meta={"schedule": {k: v for k, v in schedule.meta.items() if k != "selection"}},
                                 metered_from_s=float(schedule.meta.get("warmup_s") or 0.0))
        self.start_perf = 0.0
        self.start_unix = 0.0
        self.stopping = False
        self.written = False

    def write(self) -> None:
        if self.written:
            return
        self.written = True
        doc = self.recorder.summary()
        log.info("open loop: %d/%d answered, %d cold, %d errors, p50 %s ms, p99 %s ms, send lag p99 %s ms",
                 doc["invocations"], doc["scheduled"], doc["cold_starts"], doc["errors"], doc["p50_latency_ms"],
                 doc["p99_latency_ms"], doc["send_lag_p99_ms"])
        if self.results_path:
            write_json(self.results_path, doc)


_run: OpenLoopRun | None = None


def _load_schedule(options) -> sched_mod.Schedule:
    path = getattr(options, "schedule", "") if options is not None else ""
    if path:
        return sched_mod.Schedule.load(path)
    return sched_mod.synthetic(duration_s=float(getattr(options, "synthetic_duration", 60.0) or 60.0))


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    global _run
    from locust.runners import MasterRunner

    if isinstance(environment.runner, MasterRunner):
        return  # workers run the user and write the results
    options = environment.parsed_options
    _run = OpenLoopRun(_load_schedule(options), getattr(options, "results", "") if options else "")
    s = _run.schedule
    log.info("open loop: %d requests over %.1f s to %d functions", len(s), s.duration_s, len(s.functions))


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    if _run is not None:
        _run.stopping = True
        _run.write()


class OpenLoopUser(FastHttpUser):
    """Walks the schedule once; one instance whatever the user count asked for (`fixed_count`)."""

    fixed_count = 1
    # One pooled connection per request in flight: a burst must not queue behind the pool.
    concurrency = 1000
    connection_timeout = 30.0
    network_timeout = 600.0  # cold starts of big functions take seconds; the gateway times out first
    default_headers = {"Content-Type": "application/octet-stream"}

    def wait_time(self) -> float:
        return 0.0

    def on_start(self) -> None:
        self._group = Group()

    def on_stop(self) -> None:
        self._group.kill(block=False)

    @task
    def replay(self) -> None:
        run = _run
        if run is None:  # test_start did not run (e.g. a distributed master): nothing to replay here
            raise StopUser()
        run.start_unix = time.time()
        run.start_perf = time.perf_counter()
        run.recorder.started_unix = run.start_unix
        run_schedule(run.schedule.t, run.start_perf, time.perf_counter, gevent.sleep,
                     lambda i, due: self._group.spawn(self._send, run, i, due), stopped=lambda: run.stopping)
        self._group.join()
        run.recorder.finished = not run.stopping
        run.write()
        runner = self.environment.runner
        if runner is not None and not run.stopping:
            headless = bool(getattr(self.environment.parsed_options, "headless", False))
            # From another greenlet: stopping the runner kills this user's greenlet.
            gevent.spawn(runner.quit if headless else runner.stop)
        raise StopUser()

    def _send(self, run: OpenLoopRun, i: int, due: float) -> None:
        path, name, body = run.requests[i]
        run.recorder.sent(i, due, time.perf_counter())
        status, cold, error = 0, -1, None
        gateway_ms = startup_ms = wait_ms = math.nan
        try:
            with self.client.request("POST", path, name=name, data=body, catch_response=True) as resp:
                done = time.perf_counter()
                status = int(resp.status_code or 0)
                cold = parse_cold(resp.headers.get("X-Cold-Start") if resp.headers else None)
                gateway_ms = parse_ms(resp.headers.get("X-Duration-Seconds") if resp.headers else None, 1000.0)
                startup_ms = parse_ms(resp.headers.get("X-Prewarmer-Startup-Ms") if resp.headers else None)
                wait_ms = parse_ms(resp.headers.get("X-Prewarmer-Wait-Ms") if resp.headers else None)
                if status == 0 or status >= 400:
                    error = f"HTTP {status}" if status else str(resp.request_meta.get("exception") or "no response")
                # Locust measured from the actual send; charge the time from the intended one instead.
                resp.request_meta["response_time"] = (done - due) * 1000.0
                resp.request_meta["start_time"] = run.start_unix + (due - run.start_perf)
                resp.request_meta["context"] = {**(resp.request_meta.get("context") or {}), "cold": cold}
        except Exception as e:  # noqa: BLE001 - one failed request must not end the replay
            done = time.perf_counter()
            error = f"{type(e).__name__}: {e}"
        run.recorder.done(i, due, done, status, cold, error, gateway_ms, startup_ms, wait_ms)
