"""Sidecar scale-out: 1, 2 and 4 replicas against one Redis, 10k functions; ingest rate, tick latency, takeover.

    .venv/bin/python benchmarks/scaleout.py [--replicas 1,2,4] [--functions 10000] [--backlog-per-function 20]
        [--rate 2000] [--steady-s 15] [--lease-ttl 5] [--policy hybrid] [--json OUT]

For each replica count, on a fresh redis-server (a free loopback port, no persistence) started here:
1. N replica processes start (each a `Sidecar`, the loop `prewarmer run` runs, dry run, every function admitted,
   time scale 60 so that hybrid's one-minute ticks come every real second) and split the 16 shards by lease;
2. a backlog of functions x backlog-per-function events is published, then all replicas are let go at once:
   ingest = events folded into agent state per second, per replica (its events / its time to its last one)
   and in total (the backlog / the time until the last replica has folded its last event);
3. steady phase: `--rate` events/s over all functions for `--steady-s` seconds. Control-tick latency is the wall
   time of the loop's decide step in iterations where a policy tick ran (the shards' `prewarmer.platform.tick`
   and desired counts), and the whole loop iteration (`prewarmer_control_tick_seconds`), per replica;
4. with N >= 2, one replica is frozen (SIGSTOP) and killed (SIGKILL) a third into the steady phase: unmanaged time
   of each of its shards = the first policy tick of that shard by a survivor - the freeze;
5. the survivors stop (SIGTERM: final checkpoint), and the events the shard checkpoints count are compared with
   the events published: equal means none lost and none counted twice.

Figures are wall-clock on whatever the machine is doing; each replica is one process (one core at most).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PREFIX = "prewarmer:events"
GROUP = "prewarmer"
N_SHARDS = 16
GO_KEY = "bench:go"
INGESTED_KEY = "bench:ingested"


# ---------------------------------------------------------------------------------------------- replica process
async def replica(args: argparse.Namespace) -> None:
    """One replica: the sidecar's own loop (`Sidecar.iterate`), its steps timed, a line per iteration to --out."""
    import redis.asyncio as aioredis

    from prewarmer.registry import policy_factory
    from prewarmer.sidecar.platform import ReadOnlyActuator
    from prewarmer.sidecar.run import Sidecar, SidecarOptions

    opts = SidecarOptions(replica_id=args.replica_id, interval_s=args.interval, lease_ttl_ms=int(args.lease_ttl * 1000),
                          checkpoint_interval_s=args.checkpoint_interval, time_scale=60.0, policy_spec=args.policy,
                          unlisted_functions="admit", max_functions=args.functions)
    redis = aioredis.Redis.from_url(args.redis, socket_timeout=30)
    sc = Sidecar(opts, policy_factory(args.policy), ReadOnlyActuator(None), redis)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await sc.start()
    # Hold leases (and nothing else) until every replica has its share and the backlog is in.
    while not stop.is_set() and not await redis.exists(GO_KEY):
        await sc.ownership.rebalance(sc._epoch())
        await asyncio.sleep(opts.interval_s / 2)

    timing: dict[str, float | list[int]] = {}
    decide = sc.decider.decide

    async def timed_decide(now: float, interval: float) -> None:
        before = {s: slot.agent.next_tick for s, slot in sc.slots.items()}
        t0 = time.perf_counter()
        await decide(now, interval)
        timing["decide_s"] = time.perf_counter() - t0
        timing["ticked"] = [s for s, slot in sc.slots.items() if slot.agent.next_tick != before.get(s)]

    sc.decider.decide = timed_decide
    with open(args.out, "a", buffering=1) as out:
        try:
            while not stop.is_set():
                timing.clear()
                t_start, t0 = time.time(), time.perf_counter()
                await sc.iterate()
                took = time.perf_counter() - t0
                ingested = int(sc.metrics.events._value.get())
                await redis.hset(INGESTED_KEY, args.replica_id, ingested)
                out.write(json.dumps({"t": t_start, "iteration_s": took, "decide_s": timing.get("decide_s"),
                                      "ticked": timing.get("ticked", []), "shards": sorted(sc.slots),
                                      "ingested": ingested}) + "\n")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=opts.interval_s)
                except TimeoutError:
                    pass
        finally:
            await sc.shutdown()
            await redis.aclose()


# ---------------------------------------------------------------------------------------------- driver
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    r = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            r.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    r.close()
    return proc, f"redis://127.0.0.1:{port}/0"


async def until(check, what: str, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return value


def entries(functions: list[str], ts: np.ndarray, order: np.ndarray) -> list[dict]:
    return [{"v": "1", "function": functions[f], "namespace": "openfaas-fn", "ts": repr(float(t)),
             "duration_ms": "12.5", "startup_ms": "0.0", "cold": "0", "status": "200", "instance": "i-0"}
            for f, t in zip(order.tolist(), ts.tolist(), strict=True)]


async def run_one(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    from prewarmer.registry import policy_factory
    from prewarmer.sidecar.agent import ShardAgent
    from prewarmer.stream.consumer import connect
    from prewarmer.stream.producer import RedisEventProducer

    redis_proc, url = start_redis(workdir)
    r = connect(url, socket_timeout=30)  # the stream code's client: commands packed by hiredis
    producer = RedisEventProducer(r, maxlen=10_000_000)
    functions = [f"fn-{i:05d}" for i in range(args.functions)]
    ids = [f"r{n}-{i}" for i in range(n)]
    outs = {rid: workdir / f"{rid}.jsonl" for rid in ids}
    procs = {rid: subprocess.Popen(
        [sys.executable, __file__, "--replica", "--replica-id", rid, "--redis", url, "--out", str(outs[rid]),
         "--policy", args.policy, "--lease-ttl", str(args.lease_ttl), "--interval", str(args.interval),
         "--checkpoint-interval", str(args.checkpoint_interval), "--functions", str(args.functions)],
        stdout=(workdir / f"{rid}.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True) for rid in ids}
    rng = np.random.default_rng(0)
    try:
        async def split() -> bool:
            holders = [h for h in await r.mget([f"{PREFIX}:lease:{s}" for s in range(N_SHARDS)]) if h]
            per = {rid: holders.count(rid.encode()) for rid in ids}
            return len(holders) == N_SHARDS and max(per.values()) - min(per.values()) <= 1

        await until(split, f"{n} replicas to split the shards", timeout=120)

        # Backlog: every function called backlog-per-function times over the last minute (an hour of policy time).
        m = args.functions * args.backlog_per_function
        now = time.time()
        order = rng.permutation(np.tile(np.arange(args.functions), args.backlog_per_function))
        ts = np.sort(rng.uniform(now - 60, now, m))
        t0 = time.perf_counter()
        for i in range(0, m, 10_000):
            await producer.emit_fields_batch(entries(functions, ts[i:i + 10_000], order[i:i + 10_000]))
        publish_s = time.perf_counter() - t0
        published = m

        go = time.time()
        await r.set(GO_KEY, repr(go))

        async def drained() -> bool:
            return sum(int(v) for v in (await r.hgetall(INGESTED_KEY)).values()) >= m

        await until(drained, "the backlog to be ingested", timeout=600, interval=0.02)

        # Steady phase, with a kill a third of the way in.
        victim, died, victim_shards = None, None, []
        steady_start = time.time()
        per_tick = args.rate / 10
        k = 0
        carry = 0.0
        while (t := time.time()) < steady_start + args.steady_s:
            if n >= 2 and victim is None and t >= steady_start + args.steady_s / 3:
                victim = ids[-1]
                os.killpg(procs[victim].pid, signal.SIGSTOP)
                died = time.time()
                holders = await r.mget([f"{PREFIX}:lease:{s}" for s in range(N_SHARDS)])
                victim_shards = [s for s, h in enumerate(holders) if h == victim.encode()]
                os.killpg(procs[victim].pid, signal.SIGKILL)
                procs[victim].wait()
            carry += per_tick
            batch, carry = int(carry), carry - int(carry)
            f = rng.integers(0, args.functions, batch)
            await producer.emit_fields_batch(entries(functions, np.full(batch, time.time()), f))
            published += batch
            k += 1
            await asyncio.sleep(max(0.0, steady_start + k * 0.1 - time.time()))
        steady_end = time.time()

        # Survivors take over anything left, then stop: SIGTERM makes each checkpoint and release.
        if victim is not None:
            async def taken_over() -> bool:
                holders = await r.mget([f"{PREFIX}:lease:{s}" for s in range(N_SHARDS)])
                return all(h is not None and h != victim.encode() for h in holders)

            await until(taken_over, "the survivors to take the victim's shards", timeout=120)

        async def all_acknowledged() -> bool:
            """Every entry delivered to the group and acknowledged, i.e. in a checkpoint. (The replicas' ingest
            counters are no test: the killed one counted events it never checkpointed, which a survivor reads
            again.)"""
            for s in range(N_SHARDS):
                groups = await r.xinfo_groups(f"{PREFIX}:{s}")
                if not groups or groups[0]["pending"] or groups[0]["lag"]:
                    return False
            return True

        await until(all_acknowledged, "every event to be checkpointed", timeout=120, interval=0.1)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(timeout=120)
        make = policy_factory(args.policy)
        counted = sum(ShardAgent.loads(blob, make).events
                      for blob in await r.mget([f"{PREFIX}:state:{GROUP}:{s}" for s in range(N_SHARDS)]) if blob)
        dead = await r.xlen(f"{PREFIX}:dead")
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        await r.aclose()
        redis_proc.terminate()
        redis_proc.wait()

    # Per replica, from its iteration lines.
    replicas = []
    takeover: dict[int, float] = {}
    for rid in ids:
        rows = [json.loads(line) for line in outs[rid].read_text().splitlines() if line.strip()]
        drain_rows = [row for row in rows if row["t"] < steady_start]
        got = max((row["ingested"] for row in drain_rows), default=0)
        last = next((row["t"] + row["iteration_s"] for row in drain_rows if row["ingested"] >= got), go)
        steady = [row for row in rows if steady_start <= row["t"] < steady_end and row["decide_s"] is not None]
        ticks = [row["decide_s"] * 1e3 for row in steady if row["ticked"]]
        iters = [row["iteration_s"] * 1e3 for row in steady]
        replicas.append({
            "replica": rid, "killed": rid == victim, "backlog_events": got, "drain_s": last - go,
            "ingest_events_per_s": got / (last - go) if last > go else None,
            "tick_ms_median": float(np.median(ticks)) if ticks else None,
            "tick_ms_p99": float(np.percentile(ticks, 99)) if ticks else None, "ticks": len(ticks),
            "iteration_ms_median": float(np.median(iters)) if iters else None,
            "iteration_ms_p99": float(np.percentile(iters, 99)) if iters else None, "iterations": len(iters),
            "shards_at_end": rows[-1]["shards"] if rows else []})
        if rid != victim and died is not None:
            for row in rows:
                if row["t"] >= died:
                    for s in row["ticked"]:
                        if s in victim_shards:
                            takeover.setdefault(s, row["t"] + row["iteration_s"] - died)
    drain_s = max(rep["drain_s"] for rep in replicas)
    return {
        "replicas": n, "functions": args.functions, "policy": args.policy, "lease_ttl_s": args.lease_ttl,
        "backlog_events": m, "publish_events_per_s": m / publish_s,
        "drain_s": drain_s, "ingest_events_per_s_total": m / drain_s,
        "steady_rate": args.rate, "steady_s": args.steady_s, "per_replica": replicas,
        "killed": victim, "victim_shards": victim_shards,
        "unmanaged_s_max": max(takeover.values()) if victim_shards and len(takeover) == len(victim_shards) else None,
        "unmanaged_s_median": float(np.median(list(takeover.values()))) if takeover else None,
        "victim_shards_taken_over": len(takeover),
        "published": published, "counted_in_checkpoints": counted, "dead_lettered": dead,
        "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}


def report(results: list[dict]) -> None:
    from rich.table import Table

    from prewarmer.console import wide_console

    t = Table(title="sidecar scale-out (one Redis, 16 shards; per replica: backlog ingest, then steady-phase ticks)")
    for c in ("replicas", "replica", "backlog events", "ingest ev/s", "tick ms med", "p99", "n",
              "iteration ms med", "p99"):
        t.add_column(c, justify="right")
    def f(x: float | None, digits: int = 1) -> str:
        return "-" if x is None else f"{x:,.{digits}f}"

    for res in results:
        for rep in res["per_replica"]:
            t.add_row(str(res["replicas"]), rep["replica"] + (" (killed)" if rep["killed"] else ""),
                      f"{rep['backlog_events']:,}", f(rep["ingest_events_per_s"], 0), f(rep["tick_ms_median"]),
                      f(rep["tick_ms_p99"]), str(rep["ticks"]), f(rep["iteration_ms_median"]),
                      f(rep["iteration_ms_p99"]))
    wide_console().print(t)
    s = Table(title="totals")
    for c in ("replicas", "backlog", "ingest ev/s total", "killed", "shards moved", "unmanaged s (max / median)",
              "published", "counted", "dead letters", "load avg (1 min, end)"):
        s.add_column(c, justify="right")
    for res in results:
        um = "-" if res["killed"] is None else \
            f"{res['unmanaged_s_max'] or float('nan'):.2f} / {res['unmanaged_s_median'] or float('nan'):.2f}"
        s.add_row(str(res["replicas"]), f"{res['backlog_events']:,}", f"{res['ingest_events_per_s_total']:,.0f}",
                  res["killed"] or "-", f"{res['victim_shards_taken_over']}/{len(res['victim_shards'])}", um,
                  f"{res['published']:,}", f"{res['counted_in_checkpoints']:,}", str(res["dead_lettered"]),
                  f"{res['load_average_1m']:.1f} on {res['cpus']} CPUs")
    wide_console().print(s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="1,2,4", help="replica counts to run (1,2,4)")
    p.add_argument("--functions", type=int, default=10_000)
    p.add_argument("--backlog-per-function", type=int, default=20)
    p.add_argument("--rate", type=float, default=2000.0, help="steady-phase events per second (2000)")
    p.add_argument("--steady-s", type=float, default=15.0)
    p.add_argument("--lease-ttl", type=float, default=5.0, help="seconds (5)")
    p.add_argument("--interval", type=float, default=0.2, help="loop period, seconds (0.2)")
    p.add_argument("--checkpoint-interval", type=float, default=2.0, help="seconds (2)")
    p.add_argument("--policy", default="hybrid")
    p.add_argument("--json", metavar="OUT")
    # the replica process
    p.add_argument("--replica", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--replica-id", help=argparse.SUPPRESS)
    p.add_argument("--redis", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.replica:
        asyncio.run(replica(args))
        return 0
    results = []
    for n in [int(x) for x in args.replicas.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"scaleout-{n}-") as tmp:
            t0 = time.perf_counter()
            res = asyncio.run(run_one(n, args, Path(tmp)))
            res["wall_s"] = time.perf_counter() - t0
            results.append(res)
            print(f"{n} replica(s): {res['wall_s']:.0f} s", file=sys.stderr, flush=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
