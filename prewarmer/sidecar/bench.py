"""`prewarmer bench tick`: wall time of one sidecar control tick (observe, decide, desired replicas) for N functions.

The CPU time of the same ticks is reported too: on a shared machine the wall time includes the time the
process waits for a core, the CPU time does not (it still includes what other processes cost in caches)."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from rich.table import Table

from prewarmer.console import wide_console


def tick_latency(spec: str, n: int, repeat: int, events_per_function: float = 5.0, seed: int = 0) -> dict:
    """Median and p90 ms of `ShardAgent.tick` + `desired` after a minute of events for n functions (wall clock;
    and the median CPU time of this thread)."""
    import torch

    from prewarmer.registry import policy_factory
    from prewarmer.sidecar.agent import ShardAgent

    torch.set_num_threads(1)
    agent = ShardAgent(0, policy_factory(spec), 0.0)
    agent.add_functions(0.0, [f"f{i}" for i in range(n)], ["ns"] * n, [256.0] * n)
    rng = np.random.default_rng(seed)
    ticks, cpu, ingest = [], [], []
    tick_s = agent.policy.tick_s or 60.0
    for k in range(1, repeat + 4):
        m = int(n * events_per_function)
        f = rng.integers(0, n, m)
        t = np.sort(rng.uniform((k - 1) * tick_s, k * tick_s, m))
        t0 = time.perf_counter()
        agent.ingest(f, t, np.full(m, 0.1), np.zeros(m), np.zeros(m, np.int64), np.full(m, 200))
        t1, c1 = time.perf_counter(), time.thread_time()
        agent.tick(k * tick_s, np.ones(n, np.int64), np.ones(n, np.int64))
        agent.desired(k * tick_s, agent.startup_s() + 1.0)
        t2, c2 = time.perf_counter(), time.thread_time()
        if k > 3:
            ticks.append((t2 - t1) * 1e3)
            cpu.append((c2 - c1) * 1e3)
            ingest.append((t1 - t0) / m * 1e6)
    return {"policy": spec, "functions": n, "tick_ms_median": float(np.median(ticks)),
            "tick_ms_p90": float(np.percentile(ticks, 90)), "tick_cpu_ms_median": float(np.median(cpu)),
            "ingest_us_per_event": float(np.median(ingest))}


def cmd_bench_tick(args: argparse.Namespace) -> int:
    rows = []
    for spec in args.policy or ["fixed", "hybrid", "marl"]:
        for n in [int(x) for x in str(args.functions).split(",")]:
            rows.append(tick_latency(spec, n, args.repeat))
    table = Table(title="sidecar control tick, one core (median of repeats)")
    for c in ("policy", "functions", "tick ms (median)", "p90 ms", "CPU ms (median)", "state update µs/event"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["policy"], f"{r['functions']:,}", f"{r['tick_ms_median']:.1f}", f"{r['tick_ms_p90']:.1f}",
                      f"{r['tick_cpu_ms_median']:.1f}", f"{r['ingest_us_per_event']:.2f}")
    _show(table, rows, args.json)
    return 0


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    """Events per second through Redis Streams: pipelined XADD, then XREADGROUP + decode + XACK, one process."""
    import asyncio

    from prewarmer.stream.bench import bench_ingest

    result = asyncio.run(bench_ingest(args.redis, n_events=args.events, batch=args.batch, n_shards=args.shards))
    table = Table(title=f"Redis Streams ingest, {args.events:,} events, batch {args.batch}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:,.0f}" if isinstance(v, float | int) else str(v))
    _show(table, result, args.json)
    return 0


def _show(table: Table, data: object, json_path: str | None) -> None:
    """Print the table; with --json also write the figures behind it."""
    wide_console().print(table)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(data, fh, indent=2)


def add_bench_parsers(bsub: argparse._SubParsersAction) -> None:
    bt = bsub.add_parser("tick", help="latency of one sidecar control tick for N functions (one core)")
    bt.add_argument("--functions", default="1000,10000", help="function counts (1000,10000)")
    bt.add_argument("--policy", action="append", default=[], help="default: fixed, hybrid, marl")
    bt.add_argument("--repeat", type=int, default=20)
    bt.add_argument("--json", metavar="OUT")
    bg = bsub.add_parser("ingest", help="events per second ingested from Redis Streams (one process)")
    bg.add_argument("--redis", default="redis://127.0.0.1:6379/15",
                    help="Redis to write to; the benchmark deletes its own keys after (default: local db 15)")
    bg.add_argument("--events", type=int, default=500_000)
    bg.add_argument("--batch", type=int, default=1000)
    bg.add_argument("--shards", type=int, default=16)
    bg.add_argument("--json", metavar="OUT")
