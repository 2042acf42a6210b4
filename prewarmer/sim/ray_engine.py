"""Parallel replay on Ray: the shards of `prewarmer.sim.replay` run as Ray tasks.

The split, the per-function seeds and the merge are those of the local process engine: the driver
chooses the same shards (`shard_functions`), every task replays one shard with the same `ReplayConfig`
(arrivals and durations come from each function's own random stream, so a shard sees exactly what a
single process would), the tasks send back their shard result with its simulator, and the driver runs
every shard on to the common end and merges them (`merge_shards`) as the process engine does. The
report is therefore identical to `replay(..., workers=N)` on one machine.

With a memory cap functions compete for the same memory and are not split: the whole replay runs as
one Ray task, exact but without parallelism (as the process engine runs it in one process).

Ray starts locally with `workers` CPUs unless `address` names a running cluster (`auto`, `ray://...`,
`host:port`); the workload is put in Ray's object store once and shared by all tasks. The local Ray
instance lives until the process exits or `shutdown()` is called, so that replaying several policies
starts it once.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable

import numpy as np

from prewarmer.policies.base import Policy
from prewarmer.sim.replay import merge_shards, parallel, plan_shards, run_shard_measured
from prewarmer.sim.result import ReplayConfig, SimResult
from prewarmer.workloads.base import Workload

MISSING = ("the ray engine needs Ray: pip install 'prewarmer[ray]' (or pip install 'ray>=2.9,<3')")

_started_here = False


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(MISSING) from None
    return ray


def available() -> bool:
    try:
        _ray()
    except RayUnavailable:
        return False
    return True


def ensure_started(workers: int, address: str | None = None):
    """Connect to Ray (the cluster at `address`, else a local instance with `workers` CPUs)."""
    global _started_here
    ray = _ray()
    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A small object store: shards exchange their results only, the workload is put once.
            ray.init(num_cpus=max(1, workers), object_store_memory=512 * 1024**2, **kwargs)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds (ConnectionError, RuntimeError, ...)
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = ""
        if address and not os.environ.get("RAY_AUTH_MODE"):
            # `ray start` clusters use token authentication by default since Ray 2.59; a client that does not say
            # so sends no token and is refused with a bare connection error.
            hint = (" (if the cluster uses token authentication, as `ray start` does by default, set"
                    " RAY_AUTH_MODE=token; the token is read from RAY_AUTH_TOKEN or ~/.ray/auth_token)")
        raise RayUnavailable(f"could not start or reach {where}: {e}{hint}") from e
    _started_here = True
    return ray


def _check_reachable(address: str) -> None:
    """Refuse an address where nothing listens now: Ray itself retries an unreachable GCS for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5.0).close()
    except OSError as e:
        raise RayUnavailable(f"could not reach the Ray cluster at {address}: nothing answers at {host}:{port} "
                             f"({e})") from None


def shutdown() -> None:
    """Stop the Ray instance this module started (or disconnect from the cluster)."""
    global _started_here
    if _started_here:
        _ray().shutdown()
        _started_here = False
    global _TASK
    _TASK = None


def _progress_actor(ray):
    @ray.remote(num_cpus=0)
    class Progress:
        def __init__(self) -> None:
            self.n = 0

        def add(self, n: int) -> None:
            self.n += n

        def get(self) -> int:
            return self.n

    return Progress.remote()


_TASK = None


def _shard_task(ray):
    global _TASK
    if _TASK is not None:
        return _TASK

    @ray.remote(num_cpus=1, max_retries=0)
    def run(workload: Workload, make_policy: Callable[[], Policy], cfg: ReplayConfig, idx: np.ndarray,
            top: np.ndarray, shard: int, counter) -> bytes:
        report = None
        if counter is not None:
            def report(n: int) -> None:
                counter.add.remote(n)
        # Pickled here so that the driver gets writable arrays (Ray hands numpy arrays back read-only,
        # zero-copy) for running the shard's simulator on to the common end.
        return pickle.dumps(run_shard_measured(workload, make_policy, cfg, idx, top, shard, progress=report),
                            protocol=pickle.HIGHEST_PROTOCOL)

    _TASK = run
    return run


def replay(workload: Workload, make_policy: Callable[[], Policy], cfg: ReplayConfig, workers: int,
           progress: Callable[[int], None] | None = None, address: str | None = None,
           stats: list[dict] | None = None) -> SimResult:
    """`prewarmer.sim.replay.replay` with the shards run as Ray tasks (same result)."""
    ray = ensure_started(workers, address)
    n = len(workload.functions)
    if parallel(workload, cfg, workers):
        shards, tops, top_all = plan_shards(workload, cfg, workers)
    else:  # one task runs everything, as one process would
        shards, tops, top_all = [np.arange(n)], [None], None
    counter = _progress_actor(ray) if progress is not None else None
    task = _shard_task(ray)
    wref = ray.put(workload)
    refs = [task.remote(wref, make_policy, cfg, s, t, i, counter) for i, (s, t) in enumerate(zip(shards, tops,
                                                                                                 strict=True))]
    seen, pending = 0, list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
        if counter is not None:
            now = ray.get(counter.get.remote())
            if now > seen:
                progress(now - seen)
                seen = now
    done: list[tuple[SimResult, dict]] = [pickle.loads(b) for b in ray.get(refs)]
    if counter is not None:
        total = sum(st["invocations"] for _, st in done)  # updates still in flight are not waited for
        if total > seen:
            progress(total - seen)
        ray.kill(counter)
    if stats is not None:
        stats.extend(st for _, st in done)
    if top_all is None:
        result = done[0][0]
        result.state = None
        return result
    return merge_shards([p for p, _ in done], cfg, top_all)
