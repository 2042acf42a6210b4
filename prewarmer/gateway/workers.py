"""The worker pool: real worker processes per function, request dispatch, and the scaling rules.

A worker is one OS process (`worker_main`) serving one request at a time. States:
`starting` (process launched, handler importing) -> `idle` (ready) <-> `busy` -> stopped.
The cold start of a worker ends when it reports ready; its `startup_ms` is spawn -> ready.

Dispatch (`WorkerPool.invoke`):
- A request takes an idle worker if there is one and nobody is queued before it, the most recently
  used first (its caches are the warmest, and the least recently used ones age out). Warm.
- Otherwise it waits, and claims a worker: a starting worker nobody has claimed yet (e.g. one being
  prewarmed), or else a new worker started for it, as long as the function has fewer than
  `max_workers` workers. A request waits for the worker it claimed (one new worker per waiting
  request, no stealing), so it is cold: `X-Cold-Start: 1`, and `startup_ms` is how long it waited.
- At `max_workers`, requests queue FIFO and take the first worker that becomes free.
- Cold means "waited for the start-up of the worker it claimed" (BENCHMARKS.md: an invocation that
  waited for an instance to start), as in the simulator: a request queued at `max_workers` and
  served by a worker another request freed waited for capacity, not for a start-up, and is warm (its
  wait is in its latency), even when that worker became ready after it arrived.

Scaling: each function has a replica target, None until `/system/scale-function` sets one.
- `scale(name, replicas)` sets the target, starts workers until the function has `replicas` workers
  (all states count; at most `max_workers`), and releases the workers above the target: idle ones
  at once (least recently used first), then starting ones nobody claimed. Busy workers are never
  interrupted. Workers started this way are prewarmed: a request that later finds one ready is warm;
  a request that arrives while one is still starting (and no worker is idle) waits for it and is cold.
- Between scale calls the target is a floor, as Knative's min-scale: workers started for a burst
  above it idle out after the gateway's own keep-alive, as on a platform without a prewarmer, and
  the target's workers are never released by a timer. So a prewarmer only ever adds warm workers
  between its calls, and `replicas=0` releases the idle workers now and leaves the function to the
  default behaviour.
- With no target (a platform without a prewarmer), an idle worker is released after `keep_alive_s`
  of idleness (`--keep-alive`, default 60 s), like a fixed keep-alive platform. Once set, a target
  stays until the next scale call (OpenFaaS has no way to unset one).
- A worker that crashes is removed (a request it was serving gets 502) and is not replaced until a
  request or a scale call needs one; a worker that fails to start fails the request that claimed it
  with 502.

Accounting: time spent ready-and-idle and busy, times the memory limit, is added to the GB-s
counters at every state change and at every scrape (`account`), so the figures are exact.

Time: every worker time (arrival, ready, last use, GB-s, the end of a keep-alive) comes from the pool's
`clock` (`time.monotonic` by default). The keep-alive timers run on the event loop, but a worker idles
out only once the pool's clock has passed its keep-alive; `expire_idle` applies them at once, so a test
with a clock of its own can move it and see the worker go at exactly that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import prewarmer
from prewarmer.gateway import log_event
from prewarmer.gateway.config import FunctionSpec
from prewarmer.gateway.metrics import GatewayMetrics
from prewarmer.gateway.worker_main import HEADER, ProtocolError, decode_header, encode_frame

# Package root, so that workers import this very `prewarmer` even when it is not installed.
_PACKAGE_ROOT = str(Path(prewarmer.__file__).resolve().parent.parent)
_STDERR_TAIL = 20


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPED = "stopped"


@dataclass
class Invocation:
    """The outcome of one request, for the HTTP response, the metrics and the event."""

    function: str
    status: int
    body: bytes
    headers: dict[str, str]
    cold: bool
    startup_ms: float  # time waited for a new worker (0 when warm)
    duration_ms: float  # execution time inside the worker
    worker: str = ""
    error: str | None = None
    wait_ms: float = 0.0  # arrival to the start of execution: the start-up waited for, or the queue at max_workers
    # Start of execution to the reply, on the pool's clock: how long the worker was held for the request (the handler's
    # `duration_ms` plus the exchange with the worker, which on a loaded machine is not small); None if not run.
    held_ms: float | None = None


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class _Waiter:
    arrival: float
    future: asyncio.Future
    claimed: Worker | None = None
    started_for: bool = False  # handed the worker it claimed as that worker became ready: it waited for a start-up


@dataclass(eq=False)
class Worker:
    """One worker process of one function."""

    id: str
    spec: FunctionSpec
    state: State = State.STARTING
    state_since: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float = math.inf
    last_used: float = 0.0
    idle_until: float = math.inf  # on the pool's clock: when the keep-alive releases it (with a timer armed)
    startup_ms: float = 0.0
    pid: int | None = None
    proc: asyncio.subprocess.Process | None = None
    claimed_by: _Waiter | None = None
    keepalive: asyncio.TimerHandle | None = None
    served: int = 0
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=_STDERR_TAIL))

    async def spawn(self) -> None:
        env = {**os.environ, **self.spec.environment, "PREWARMER_WORKER_ID": self.id, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        # A session of its own: a Ctrl-C in the gateway's terminal goes to the gateway only, which then
        # stops its workers in order (and the process group lets it kill anything a handler forked).
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prewarmer.gateway.worker_main", "--handler", str(self.spec.handler_dir),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(self.spec.handler_dir), env=env, start_new_session=True)
        self.pid = self.proc.pid

    async def read_frame(self) -> tuple[dict, bytes]:
        assert self.proc is not None and self.proc.stdout is not None
        meta_len, body_len = decode_header(await self.proc.stdout.readexactly(HEADER.size))
        data = await self.proc.stdout.readexactly(meta_len + body_len)
        return json.loads(data[:meta_len]), data[meta_len:]

    async def call(self, meta: dict, body: bytes) -> tuple[dict, bytes]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(encode_frame(meta, body))
        await self.proc.stdin.drain()
        return await self.read_frame()

    async def pump_stderr(self) -> None:
        """Log what the handler prints (its stdout goes to stderr), one line per log event."""
        assert self.proc is not None and self.proc.stderr is not None
        # Chunks, not readline(): a line longer than the stream's limit must not stop the draining,
        # or the worker would block on a full stderr pipe.
        pending = b""
        with contextlib.suppress(Exception):
            while chunk := await self.proc.stderr.read(1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                if len(pending) >= 1 << 16:
                    lines, pending = lines + [pending], b""
                for line in lines:
                    self._output(line)
        if pending:
            self._output(pending)

    def _output(self, line: bytes) -> None:
        text = line.decode(errors="replace").rstrip()
        self.stderr_tail.append(text)
        log_event("worker_output", function=self.spec.name, worker=self.id, line=text)

    async def terminate(self, graceful: bool, grace_s: float = 2.0) -> int | None:
        """End the process: EOF on stdin (a clean exit), then SIGTERM, then SIGKILL; always reaped."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            if graceful and proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), grace_s)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.returncode is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), grace_s)
        # Anything the handler started in the worker's process group goes too (the group id is the
        # worker's pid, which the kernel does not reuse while the group still exists).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        return proc.returncode


@dataclass(eq=False)
class _Function:
    spec: FunctionSpec
    label: str  # the metrics' function_name: name.namespace, as OpenFaaS labels it
    workers: dict[str, Worker] = field(default_factory=dict)  # live workers, oldest first
    queue: deque[_Waiter] = field(default_factory=deque)
    target: int | None = None
    seq: int = 0
    invocations: int = 0

    def count(self, state: State) -> int:
        return sum(1 for w in self.workers.values() if w.state is state)


class WorkerPool:
    """All workers of all functions of one gateway. Use from one event loop."""

    def __init__(self, functions: dict[str, FunctionSpec], *, namespace: str = "openfaas-fn", max_workers: int = 20,
                 keep_alive_s: float = 60.0, exec_timeout_s: float = 60.0, startup_timeout_s: float = 120.0,
                 metrics: GatewayMetrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.namespace = namespace
        self.clock = clock  # every worker time (arrival, ready, idle, GB-s, keep-alive) is read from it
        self.max_workers = max_workers
        self.keep_alive_s = keep_alive_s
        self.exec_timeout_s = exec_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.metrics = metrics or GatewayMetrics()
        self.functions = {name: _Function(spec, f"{name}.{namespace}") for name, spec in functions.items()}
        for f in self.functions.values():
            self.metrics.register_function(f.label)
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self.all_pids: deque[int] = deque(maxlen=10_000)  # the latest worker processes started, for leak checks
        self.workers_started = 0

    # ---- queries -------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.functions

    def status(self, name: str) -> dict:
        f = self.functions[name]
        return {"replicas": len(f.workers), "availableReplicas": f.count(State.IDLE) + f.count(State.BUSY),
                "starting": f.count(State.STARTING), "idle": f.count(State.IDLE), "busy": f.count(State.BUSY),
                "invocationCount": f.invocations, "target": f.target}

    def workers(self, name: str) -> list[Worker]:
        return list(self.functions[name].workers.values())

    # ---- invocation -----------------------------------------------------------------------------

    async def invoke(self, name: str, meta: dict, body: bytes) -> Invocation:
        """Run one request on a worker of `name` (KeyError if unknown). Worker failures become 5xx results."""
        f = self.functions[name]
        f.invocations += 1
        arrival = self.clock()
        if self._closing:
            return Invocation(name, 503, b"gateway is shutting down\n", {}, False, 0.0, 0.0,
                              error="gateway is shutting down")
        try:
            w, cold = await self._acquire(f, arrival)
        except _Failure as e:
            # A failed cold start still counts as cold: the caller waited for a start-up that failed.
            waited = (self.clock() - arrival) * 1000
            return Invocation(name, e.status, f"{e}\n".encode(), {}, e.status == 502, waited, 0.0, error=str(e))
        startup_ms = (w.ready_at - arrival) * 1000 if cold else 0.0
        wait_ms = (self.clock() - arrival) * 1000
        try:
            async with asyncio.timeout(self.exec_timeout_s):
                out, data = await w.call(meta, body)
        except TimeoutError:
            self._discard(f, w, "exec_timeout")
            msg = f"function {name} did not answer within {self.exec_timeout_s:g} s (worker {w.id} killed)"
            return Invocation(name, 504, f"{msg}\n".encode(), {}, cold, startup_ms, self.exec_timeout_s * 1000,
                              w.id, error=msg, wait_ms=wait_ms)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, OSError, ValueError) as e:
            self._discard(f, w, "crashed")
            tail = w.stderr_tail[-1] if w.stderr_tail else type(e).__name__
            msg = f"worker {w.id} of {name} died during the request: {tail}"
            return Invocation(name, 502, f"{msg}\n".encode(), {}, cold, startup_ms, 0.0, w.id, error=msg,
                              wait_ms=wait_ms)
        except asyncio.CancelledError:
            # The exchange was cut in the middle: the pipe's state is unknown, so the worker goes.
            self._discard(f, w, "request_cancelled")
            raise
        w.served += 1
        held_ms = (self.clock() - arrival) * 1000 - wait_ms
        self._release(f, w)
        return Invocation(name, int(out.get("status", 500)), data, dict(out.get("headers") or {}), cold, startup_ms,
                          float(out.get("duration_ms", 0.0)), w.id, error=out.get("error"), wait_ms=wait_ms,
                          held_ms=held_ms)

    async def _acquire(self, f: _Function, arrival: float) -> tuple[Worker, bool]:
        """A worker for a request that arrived at `arrival`, and whether the request waited for its start-up (cold)."""
        if not f.queue:
            w = self._take_idle(f)
            if w is not None:
                self._set_state(f, w, State.BUSY)
                return w, False
        waiter = _Waiter(arrival, asyncio.get_running_loop().create_future())
        f.queue.append(waiter)
        self._pump(f)
        try:
            w = await waiter.future
            return w, waiter.started_for and w.ready_at > arrival
        except asyncio.CancelledError:
            self._abandon(f, waiter)
            raise

    def _take_idle(self, f: _Function) -> Worker | None:
        idle = [w for w in f.workers.values() if w.state is State.IDLE]
        return max(idle, key=lambda w: w.last_used) if idle else None

    def _pump(self, f: _Function) -> None:
        """Give free workers to waiting requests in arrival order, and claim or start workers for the rest."""
        for waiter in list(f.queue):
            if waiter.future.done():
                f.queue.remove(waiter)
                continue
            if waiter.claimed is not None:
                continue
            w = self._take_idle(f)
            if w is not None:
                self._hand_over(f, waiter, w)
                continue
            s = next((w for w in f.workers.values() if w.state is State.STARTING and w.claimed_by is None), None)
            if s is None and len(f.workers) < self.max_workers and not self._closing:
                s = self._start_worker(f, reason="request")
            if s is None:
                break  # at max_workers: the rest stay queued for the first worker that frees up
            s.claimed_by, waiter.claimed = waiter, s

    def _hand_over(self, f: _Function, waiter: _Waiter, w: Worker) -> None:
        with contextlib.suppress(ValueError):
            f.queue.remove(waiter)
        w.claimed_by = None
        self._set_state(f, w, State.BUSY)
        waiter.future.set_result(w)

    def _abandon(self, f: _Function, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            f.queue.remove(waiter)
        if waiter.claimed is not None and waiter.claimed.claimed_by is waiter:
            waiter.claimed.claimed_by = None  # the starting worker serves whoever comes next
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._release(f, fut.result())  # handed over just as the request was cancelled

    def _release(self, f: _Function, w: Worker) -> None:
        if w.state is State.STOPPED:
            return
        w.last_used = self.clock()
        self._set_state(f, w, State.IDLE)
        self._reconcile(f)

    # ---- scaling --------------------------------------------------------------------------------

    def scale(self, name: str, replicas: int) -> int:
        """Set the replica target of `name`; returns the effective target (at most max_workers)."""
        f = self.functions[name]
        if replicas > self.max_workers:
            log_event("scale_clamped", function=name, requested=replicas, max_workers=self.max_workers)
        target = min(replicas, self.max_workers)
        previous, f.target = f.target, target
        started = 0
        while len(f.workers) < target and not self._closing:
            self._start_worker(f, reason="prewarm")
            started += 1
        before = len(f.workers)
        self._trim(f)
        self._reconcile(f)
        log_event("scale", function=name, replicas=target, previous=previous, started=started,
                  released=before - len(f.workers), workers=len(f.workers))
        return target

    def _trim(self, f: _Function) -> None:
        """A scale call: release the workers above the new target now (idle ones, least recently used
        first, then starting ones nobody claimed); busy ones are never interrupted."""
        excess = len(f.workers) - (f.target or 0)
        idle = sorted((w for w in f.workers.values() if w.state is State.IDLE), key=lambda w: w.last_used)
        spare = [w for w in f.workers.values() if w.state is State.STARTING and w.claimed_by is None]
        for w in (idle + spare[::-1])[:max(0, excess)]:
            self._stop(f, w, "above_target")

    def _reconcile(self, f: _Function) -> None:
        """Serve the queue from free workers, then apply the release rules to the workers left idle:
        the most recently used `target` idle workers are held, the others idle out after the keep-alive."""
        self._pump(f)
        held = f.target or 0
        idle = sorted((w for w in f.workers.values() if w.state is State.IDLE), key=lambda w: w.last_used,
                      reverse=True)
        busy = len(f.workers) - len(idle)
        loop = asyncio.get_running_loop()
        for k, w in enumerate(idle):
            if busy + k < held or not math.isfinite(self.keep_alive_s):
                if w.keepalive is not None:  # within the target: no timer releases it
                    w.keepalive.cancel()
                    w.keepalive = None
            elif w.keepalive is None:
                w.idle_until = self.clock() + self.keep_alive_s
                w.keepalive = loop.call_later(self.keep_alive_s, self._keepalive_expired, f, w)

    def _keepalive_expired(self, f: _Function, w: Worker) -> None:
        w.keepalive = None
        left = w.idle_until - self.clock()
        if left > 0 and w.state is State.IDLE:
            # The timer runs on the event loop's clock: the keep-alive ends on the pool's.
            w.keepalive = asyncio.get_running_loop().call_later(left, self._keepalive_expired, f, w)
            return
        if w.state is State.IDLE and len(f.workers) > (f.target or 0):
            self._stop(f, w, "keep_alive")

    def expire_idle(self) -> list[str]:
        """Run the keep-alive timers that are due on the pool's clock now, without waiting for the event
        loop to fire them (for a clock other than the loop's); returns the ids of the workers released."""
        released = []
        for f in self.functions.values():
            for w in list(f.workers.values()):
                if w.keepalive is not None and self.clock() >= w.idle_until:
                    w.keepalive.cancel()
                    self._keepalive_expired(f, w)
                    if w.state is State.STOPPED:
                        released.append(w.id)
        return released

    # ---- worker lifecycle -----------------------------------------------------------------------

    def _start_worker(self, f: _Function, reason: str) -> Worker:
        f.seq += 1
        self.workers_started += 1
        now = self.clock()
        w = Worker(id=f"{f.spec.name}-{f.seq}", spec=f.spec, state_since=now, started_at=now)
        f.workers[w.id] = w
        log_event("worker_start", function=f.spec.name, worker=w.id, reason=reason)
        self._spawn_task(self._lifecycle(f, w), name=f"worker-{w.id}")
        return w

    def _spawn_task(self, coro, name: str) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _lifecycle(self, f: _Function, w: Worker) -> None:
        """Start the process, wait for its ready frame, then watch it until it exits."""
        try:
            await w.spawn()
        except OSError as e:
            self._failed_start(f, w, f"cannot start worker {w.id}: {e}")
            return
        assert w.pid is not None
        self.all_pids.append(w.pid)
        stderr_task = self._spawn_task(w.pump_stderr(), name=f"stderr-{w.id}")
        try:
            if w.state is State.STOPPED:  # released (or the gateway closed) while the process was spawning
                await w.terminate(graceful=False)
                return
            try:
                async with asyncio.timeout(self.startup_timeout_s):
                    meta, _ = await w.read_frame()
            except TimeoutError:
                await self._fail_and_reap(f, w, f"worker {w.id} not ready after {self.startup_timeout_s:g} s")
                return
            except (asyncio.IncompleteReadError, ProtocolError, ValueError, OSError):
                await self._fail_and_reap(f, w, f"worker {w.id} exited before it was ready", stderr_task)
                return
            if not meta.get("ready"):
                fatal = str(meta.get("fatal", meta)).strip().splitlines()
                await self._fail_and_reap(f, w, f"worker {w.id} failed to import its handler: "
                                                f"{fatal[-1] if fatal else 'unknown error'}")
                return
            self._ready(f, w, meta)
            rc = await w.proc.wait()
            if w.state is not State.STOPPED:
                await asyncio.wait([stderr_task], timeout=1.0)  # so the log shows its last words
                log_event("worker_exit", function=f.spec.name, worker=w.id, pid=w.pid, code=rc,
                          last_output=w.stderr_tail[-1] if w.stderr_tail else "")
                self._discard(f, w, "exited")
        except asyncio.CancelledError:
            await w.terminate(graceful=False)
            raise

    def _ready(self, f: _Function, w: Worker, meta: dict) -> None:
        now = self.clock()
        w.ready_at = w.last_used = now
        w.startup_ms = (now - w.started_at) * 1000
        self.metrics.observe_init(f.label, now - w.started_at)
        log_event("worker_ready", function=f.spec.name, worker=w.id, pid=w.pid, startup_ms=w.startup_ms,
                  import_ms=float(meta.get("import_ms", 0.0)))
        if w.state is State.STOPPED:
            return
        waiter, w.claimed_by = w.claimed_by, None
        if waiter is not None and not waiter.future.done():
            waiter.started_for = True
            self._hand_over(f, waiter, w)
        else:
            self._set_state(f, w, State.IDLE)
            self._reconcile(f)

    async def _fail_and_reap(self, f: _Function, w: Worker, message: str,
                             stderr_task: asyncio.Task | None = None) -> None:
        if stderr_task is not None:
            await asyncio.wait([stderr_task], timeout=1.0)
            if w.stderr_tail:
                message = f"{message}: {w.stderr_tail[-1]}"
        self._failed_start(f, w, message)
        await w.terminate(graceful=False)

    def _failed_start(self, f: _Function, w: Worker, message: str) -> None:
        # Its claimant gets the error (502) rather than another start: the next one would likely fail too.
        waiter, w.claimed_by = w.claimed_by, None
        if waiter is not None:
            waiter.claimed = None
            with contextlib.suppress(ValueError):
                f.queue.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(_Failure(502, message))
        self._stop(f, w, "start_failed", terminate=False, error=message)
        self._reconcile(f)

    def _discard(self, f: _Function, w: Worker, reason: str) -> None:
        """Remove a worker whose process is (or must be made) gone; the request it served is answered apart."""
        if w.state is not State.STOPPED:
            self._stop(f, w, reason, graceful=False)
            self._reconcile(f)

    def _stop(self, f: _Function, w: Worker, reason: str, *, terminate: bool = True, graceful: bool = True,
              error: str | None = None) -> None:
        if w.state is State.STOPPED:
            return
        previous = w.state
        self._set_state(f, w, State.STOPPED)
        f.workers.pop(w.id, None)
        if w.keepalive is not None:
            w.keepalive.cancel()
            w.keepalive = None
        waiter, w.claimed_by = w.claimed_by, None
        if waiter is not None:
            waiter.claimed = None
            if self._closing and not waiter.future.done():
                waiter.future.set_exception(_Failure(503, "gateway is shutting down"))
        log_event("worker_stop", function=f.spec.name, worker=w.id, pid=w.pid, reason=reason, state=previous.value,
                  startup_ms=w.startup_ms if w.ready_at < math.inf else None, served=w.served, error=error)
        if terminate:
            # An idle worker exits by itself on EOF; a starting or wedged one needs a signal.
            self._spawn_task(w.terminate(graceful=graceful and previous is State.IDLE), name=f"stop-{w.id}")
        if waiter is not None and not self._closing:
            self._pump(f)  # its claimant needs another worker

    def _set_state(self, f: _Function, w: Worker, state: State) -> None:
        now = self.clock()
        if w.state in (State.IDLE, State.BUSY):
            self.metrics.add_gb_seconds(f.label, w.state.value, (now - w.state_since) * f.spec.memory_gb)
        if w.keepalive is not None and state is not State.IDLE:
            w.keepalive.cancel()
            w.keepalive = None
        w.state, w.state_since = state, now

    def account(self) -> None:
        """Bring the GB-s counters and worker gauges up to this instant (called at every scrape)."""
        now = self.clock()
        for f in self.functions.values():
            for w in f.workers.values():
                if w.state in (State.IDLE, State.BUSY):
                    self.metrics.add_gb_seconds(f.label, w.state.value, (now - w.state_since) * f.spec.memory_gb)
                    w.state_since = now
            self.metrics.set_workers(f.label, {s.value: f.count(s) for s in State if s is not State.STOPPED})

    # ---- shutdown -------------------------------------------------------------------------------

    async def shutdown(self, grace_s: float = 2.0) -> None:
        """Fail queued requests with 503, stop every worker and wait until every process is reaped."""
        self._closing = True
        for f in self.functions.values():
            for waiter in list(f.queue):
                if not waiter.future.done():
                    waiter.future.set_exception(_Failure(503, "gateway is shutting down"))
            f.queue.clear()
            for w in list(f.workers.values()):
                self._stop(f, w, "shutdown", graceful=True)
        self.account()
        await self._drain_tasks(grace_s)

    async def _drain_tasks(self, grace_s: float) -> None:
        # A bound on the waits below, so on the event loop's clock (the one their timeouts use), not the pool's.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace_s, 0.0) * 3 + 1.0  # EOF, SIGTERM and SIGKILL each get grace_s
        while self._tasks:
            pending = set(self._tasks)
            _, still = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            if still and loop.time() >= deadline:
                for t in still:
                    t.cancel()
                await asyncio.wait(still, timeout=5.0)
                break

