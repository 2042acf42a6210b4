"""Hand-made workloads for simulator and policy tests: explicit arrivals, answers computable by hand."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import numpy as np

from prewarmer.policies.base import Policy
from prewarmer.sim.replay import ReplayConfig, SimResult, run_shard
from prewarmer.workloads.base import ArrivalChunk, FunctionTable, Workload


def make_table(functions: Sequence[tuple[str, float]], cold_start_s: Sequence[float] | None = None,
               apps: Sequence[int] | None = None) -> FunctionTable:
    """A FunctionTable from (name, memory_mb) pairs; one app per function unless `apps` is given."""
    n = len(functions)
    app_idx = np.arange(n, dtype=np.int32) if apps is None else np.asarray(apps, np.int32)
    n_apps = int(app_idx.max()) + 1 if n else 0
    return FunctionTable(
        names=[name for name, _ in functions],
        apps=app_idx,
        app_names=[f"app-{a}" for a in range(n_apps)],
        memory_mb=np.array([float(m) for _, m in functions], dtype=np.float64),
        cold_start_s=np.full(n, np.nan) if cold_start_s is None else np.asarray(cold_start_s, np.float64),
        triggers=["others"] * n,
    )


class ListWorkload(Workload):
    """Explicit arrivals `(t, func_index, duration)` over [0, horizon_s)."""

    def __init__(self, functions: Sequence[tuple[str, float]], arrivals: Sequence[tuple[float, int, float]],
                 horizon_s: float, cold_start_s: Sequence[float] | None = None,
                 apps: Sequence[int] | None = None) -> None:
        self.functions = make_table(functions, cold_start_s, apps)
        rows = sorted(((float(t), int(f), float(d)) for t, f, d in arrivals), key=lambda r: r[0])
        for t, f, d in rows:
            if not (0 <= f < len(functions)) or not (0.0 <= t < horizon_s) or d < 0:
                raise ValueError(f"bad arrival {(t, f, d)} for {len(functions)} functions, horizon {horizon_s}")
        self.t = np.array([r[0] for r in rows], dtype=np.float64)
        self.func = np.array([r[1] for r in rows], dtype=np.int32)
        self.duration = np.array([r[2] for r in rows], dtype=np.float64)
        self.horizon_s = float(horizon_s)

    def describe(self) -> dict:
        return {"model": "list", "arrivals": len(self.t), "horizon_s": self.horizon_s}

    def total_invocations(self) -> int:
        return len(self.t)

    def chunks(self, seed: int, chunk_s: float = 3600.0,
               functions: np.ndarray | None = None) -> Iterator[ArrivalChunk]:
        keep = np.ones(len(self.t), bool) if functions is None else np.isin(self.func, np.asarray(functions))
        n_chunks = max(1, math.ceil(self.horizon_s / chunk_s))
        for i in range(n_chunks):
            start, end = i * chunk_s, min(self.horizon_s, (i + 1) * chunk_s)
            sel = keep & (self.t >= start) & (self.t < end)
            yield ArrivalChunk(start, end, self.t[sel].copy(), self.func[sel].copy(), self.duration[sel].copy())


def run(workload: Workload, policy: Policy, **cfg) -> SimResult:
    """`run_shard` with a ReplayConfig built from keyword arguments."""
    return run_shard(workload, policy, ReplayConfig(**cfg))


def all_arrivals(workload: Workload, seed: int, chunk_s: float = 3600.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every arrival of the workload for the seed, concatenated: (t, func, duration)."""
    chunks = list(workload.chunks(seed, chunk_s))
    return (np.concatenate([c.t for c in chunks]), np.concatenate([c.func for c in chunks]),
            np.concatenate([c.duration for c in chunks]))


async def serve_on_loopback(app, **runner_options) -> tuple:
    """Run an aiohttp app on 127.0.0.1, on a free port: (runner, to clean up; base URL)."""
    from aiohttp import web

    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def checkpointed_events(redis, shards: int) -> int:
    """Events vouched for by the shard checkpoints in Redis (what a restarted sidecar resumes with)."""
    from prewarmer.registry import policy_factory
    from prewarmer.sidecar.agent import ShardAgent

    total = 0
    for s in range(shards):
        blob = await redis.get(f"prewarmer:events:state:prewarmer:{s}")
        if blob:
            total += ShardAgent.loads(blob, policy_factory("fixed")).events
    return total


def alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
