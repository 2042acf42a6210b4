"""Sidecar scale-out against a real redis-server: replicas share the shards through leases, a killed replica's
shards and unacknowledged events move to a survivor, and every event is counted exactly once.

What the design promises, and what these tests hold it to:
- delivery is at least once: an event a replica read but had not checkpointed when it died is delivered again,
  to the shard's next owner (which may act on it a second time: a scale request is not undone);
- the effect on the checkpointed agent state is exactly once: a shard's checkpoint is written in one atomic
  step with the acknowledgement of the events it counts, and only while the writer holds the shard's lease;
- a dead replica's shards are owned and ticked by a survivor within the lease TTL plus one tick period.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis
from test_gateway import eventually

from prewarmer.registry import policy_factory
from prewarmer.sidecar.agent import ShardAgent
from prewarmer.sidecar.platform import ReadOnlyActuator
from prewarmer.sidecar.run import Sidecar, SidecarOptions
from prewarmer.stream.consumer import RedisEventSource, connect
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.keys import DEFAULT_PREFIX, dead_letter_key, shard_of, stream_key
from prewarmer.stream.producer import RedisEventProducer
from prewarmer.stream.shards import ShardLeases

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 16
GROUP = "prewarmer"


def fields(function: str, ts: float | None = None) -> dict[str, str]:
    return InvocationEvent(function=function, namespace="openfaas-fn", ts=ts or time.time(), duration_ms=10.0,
                           startup_ms=0.0, cold=False, status=200, instance=f"{function}-0").to_fields()


def state_key(shard: int) -> str:
    return f"{DEFAULT_PREFIX}:state:{GROUP}:{shard}"


def lease_key(shard: int) -> str:
    return f"{DEFAULT_PREFIX}:lease:{shard}"


async def lease_holders(r: aioredis.Redis) -> dict[int, str]:
    values = await r.mget([lease_key(s) for s in range(SHARDS)])
    return {s: v.decode() for s, v in enumerate(values) if v is not None}


async def counted(r: aioredis.Redis, policy: str = "hybrid") -> dict[str, int]:
    """Events per function that the shard checkpoints in Redis vouch for (what any next owner resumes with)."""
    out: dict[str, int] = {}
    for blob in await r.mget([state_key(s) for s in range(SHARDS)]):
        if blob:
            agent = ShardAgent.loads(blob, policy_factory(policy))
            out.update({n: int(c) for n, c in zip(agent.names, agent.function_events, strict=True) if c})
    return out


async def pending(r: aioredis.Redis, consumer: str | None = None) -> int:
    """Entries delivered to the group and not acknowledged, on every shard (of one consumer, if given)."""
    total = 0
    for s in range(SHARDS):
        try:
            summary = await r.xpending(stream_key(s), GROUP)
        except aioredis.ResponseError:  # no group yet
            continue
        if consumer is None:
            total += summary["pending"]
        else:
            total += sum(c["pending"] for c in summary["consumers"] if c["name"] == consumer.encode())
    return total


# --- focused: the fixes ---------------------------------------------------------------------------------


async def test_takeover_claims_a_dead_owners_pending_events_at_once(redis_server):
    """A shard's new owner claims the events its dead owner left pending right away, not after `claim_idle`:
    the lease says nobody else may count them."""
    r = connect(redis_server.url)
    n = 200
    await RedisEventProducer(r).emit_fields_batch([fields(f"fn-{i % 20}") for i in range(n)])
    a_leases = ShardLeases(r, "a", lease_ttl_ms=300)
    a = RedisEventSource(r, consumer="a", block_ms=None, claim_min_idle_ms=60_000, prefetch=False)
    owned = await a_leases.rebalance()
    await a.ensure_groups(owned)
    taken = await a.read(owned)  # "a" reads, then dies without acknowledging
    assert len(taken) > 0 and await pending(r, "a") == len(taken)

    b_leases = ShardLeases(r, "b", lease_ttl_ms=300)
    await eventually(lambda: _owns(b_leases, SHARDS), "b to own every shard after a's leases expire")
    b = RedisEventSource(r, consumer="b", block_ms=None, claim_min_idle_ms=60_000, prefetch=False)
    await b.ensure_groups(b_leases.owned)
    b.take_over(b_leases.owned)
    got: list[tuple[bytes, bytes]] = []
    for _ in range(10):  # bounded: ten reads of 1000 are far more than 200 entries need
        batch = await b.read(b_leases.owned)
        got += zip(batch.streams, batch.ids, strict=True)
        await b.ack(batch)
    assert len(got) == len(set(got)) == n  # a's entries (idle far less than 60 s) included, none twice
    assert set(zip(taken.streams, taken.ids, strict=True)) <= set(got)
    assert await pending(r) == 0
    await r.aclose()


async def _owns(leases: ShardLeases, n: int) -> bool:
    return len(await leases.rebalance()) == n


async def test_a_lost_lease_is_not_taken_back_in_the_same_rebalance(redis_server):
    """A replica whose lease expired while it stalled must drop the shard (and its in-memory state) before it may
    own it again: re-acquiring the free lease in the same call would keep state that another owner may have
    advanced and checkpointed meanwhile."""
    r = connect(redis_server.url)
    a = ShardLeases(r, "a", n_shards=4)
    assert await a.rebalance() == {0, 1, 2, 3}
    await r.delete(lease_key(2))  # expired (or taken by another replica and released meanwhile)
    assert await a.rebalance() == {0, 1, 3}
    assert await a.rebalance() == {0, 1, 2, 3}  # free, so taken on the next call, as a new shard
    await r.aclose()


async def test_a_checkpoint_under_a_lost_lease_writes_and_acknowledges_nothing(redis_server):
    """Fencing: a replica that stalled past its lease TTL while another took the shard over can neither overwrite
    the new owner's checkpoint nor acknowledge events the new owner has not counted."""
    r = connect(redis_server.url)
    await RedisEventProducer(r).emit_fields_batch([fields(f"fn-{i % 40}") for i in range(300)])
    opts = dict(interval_s=0.05, status_interval_s=0.1, checkpoint_interval_s=3600, claim_min_idle_ms=60_000,
                unlisted_functions="admit", policy_spec="hybrid", time_scale=60.0)
    # a's leases are short, so that b takes over soon; b's are long, so that they outlast the test's own pauses.
    a = Sidecar(SidecarOptions(replica_id="a", lease_ttl_ms=400, **opts), policy_factory("hybrid"),
                ReadOnlyActuator(None), r)
    await a.start()
    await a.iterate()  # owns every shard, reads and counts all 300, acknowledges nothing yet
    assert len(a.slots) == SHARDS and a.slots.events() == 300 and await pending(r, "a") == 300

    # "a" stalls; "b" takes every shard over once a's leases expire, claims a's pending events and checkpoints.
    b = Sidecar(SidecarOptions(replica_id="b", lease_ttl_ms=30_000, **opts), policy_factory("hybrid"),
                ReadOnlyActuator(None), r)
    await b.start()

    async def b_owns_all() -> bool:
        await b.iterate()
        return len(b.slots) == SHARDS

    await eventually(b_owns_all, "b to take every shard over")
    await b.iterate()
    assert b.slots.events() == 300  # a's 300 pending events, claimed at once (claim_idle is a minute)
    await b.checkpoint()
    assert await pending(r) == 0 and sum((await counted(r)).values()) == 300

    # "a" wakes up and checkpoints what it holds: refused, nothing written, its shards dropped.
    before = await r.mget([state_key(s) for s in range(SHARDS)])
    await a.checkpoint()
    assert await r.mget([state_key(s) for s in range(SHARDS)]) == before
    assert len(a.slots) == 0
    await RedisEventProducer(r).emit_fields_batch([fields(f"fn-{i % 40}") for i in range(50)])
    await b.iterate()
    await b.checkpoint()
    assert sum((await counted(r)).values()) == 350  # counted once each
    await r.aclose()


async def test_a_replica_ticks_its_policy_once_before_it_takes_any_lease(redis_server):
    """A process's first tick loads (or, with an empty numba cache, compiles for up to a minute) the compiled code:
    longer than a lease TTL. `start()` does it on a throwaway shard, before the first lease is taken, so a new
    replica does not lose the shards it has just taken in its first iteration."""
    import redis as sync_redis

    sync = sync_redis.Redis.from_url(redis_server.url)
    leases_held_at_tick: list[int] = []
    make = policy_factory("hybrid")
    built = 0

    def spying_policy():
        nonlocal built
        policy = make()
        built += 1
        if built == 1:  # the warm-up's policy: record whether any lease was held when it ticked
            decide = policy.decide

            def spy(now, obs):
                leases_held_at_tick.append(sync.exists(*[lease_key(s) for s in range(SHARDS)]))
                return decide(now, obs)

            policy.decide = spy
        return policy

    r = connect(redis_server.url)
    a = Sidecar(SidecarOptions(replica_id="a", policy_spec="hybrid", unlisted_functions="admit"), spying_policy,
                ReadOnlyActuator(None), r)
    await a.start()
    assert leases_held_at_tick == [0]  # one tick, before any lease
    await a.iterate()
    assert len(a.slots) == SHARDS
    sync.close()
    await r.aclose()


async def test_a_backlog_is_read_over_several_iterations_without_losing_the_leases(redis_server, monkeypatch):
    """The loop renews its leases once per iteration, so one iteration must not read a backlog for longer than the
    lease TTL: it would lose every shard (its checkpoints refused), and, restarting from the checkpoint, do the
    same again. Reading stops after a third of the TTL; the rest comes in the next iterations. The intake's clock
    is made to advance 0.4 s per look, so that the budget (1 s of a 3 s TTL) ends after two reads of at most
    16 x 1000 entries, whatever this machine's speed."""
    from prewarmer.sidecar import intake

    class TwoReadsPerBudget:
        t = 0.0

        @classmethod
        def monotonic(cls) -> float:
            cls.t += 0.4
            return cls.t

    monkeypatch.setattr(intake, "time", TwoReadsPerBudget)
    r = connect(redis_server.url)
    n = 40_000
    base = [fields(f"fn-{j}") for j in range(500)]
    await RedisEventProducer(r).emit_fields_batch([base[j % 500] for j in range(n)])
    opts = SidecarOptions(replica_id="a", interval_s=0.05, checkpoint_interval_s=0.0, lease_ttl_ms=3000,
                          unlisted_functions="admit", policy_spec="hybrid", time_scale=60.0)
    a = Sidecar(opts, policy_factory("hybrid"), ReadOnlyActuator(None), r)
    await a.start()
    await a.iterate()
    assert 0 < a.slots.events() <= 2 * SHARDS * 1000 < n

    async def all_read_under_the_same_leases() -> bool:
        await a.iterate()  # checkpoints every iteration (checkpoint_interval_s=0)
        assert len(a.slots) == SHARDS, "a lease expired during an iteration"
        return a.slots.events() == n and a.slots.unacked() == 0

    await eventually(all_read_under_the_same_leases, f"all {n} events read", timeout=120, interval=0.0)
    assert sum((await counted(r)).values()) == n
    assert await pending(r) == 0
    await r.aclose()


# --- end to end: two `prewarmer run` processes, one killed mid-run ---------------------------------------

LEASE_TTL_S = 2.0
TICK_S = 1.0  # hybrid ticks every 60 s of policy time: 1 s real at time scale 60
INTERVAL_S = 0.1


def start_replica(name: str, redis_url: str, tmp_path: Path) -> subprocess.Popen:
    """`prewarmer run` as its own process: dry run (no platform), every decision recorded, short lease TTL. The
    claim idle time stays at its default (30 s): a new owner must not need it to get a dead owner's events."""
    return subprocess.Popen(
        [sys.executable, "-m", "prewarmer", "run", "--dry-run", "--redis", redis_url, "--policy", "hybrid",
         "--unlisted-functions", "admit", "--time-scale", "60", "--interval", f"{INTERVAL_S}s",
         "--checkpoint-interval", "1s", "--lease-ttl", f"{LEASE_TTL_S}s", "--metrics-port", "0",
         "--replica-id", name, "--record", str(tmp_path / f"{name}.jsonl"), "--log-level", "warning"],
        stdout=(tmp_path / f"{name}.log").open("a"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


async def _wait(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


def decisions(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["type"] == "decision"]


async def test_two_replicas_split_the_shards_and_a_killed_one_loses_no_event(tmp_path, redis_server):
    r = connect(redis_server.url)
    producer = RedisEventProducer(r)
    functions = [f"fn-{i:03d}" for i in range(300)]
    published: collections.Counter[str] = collections.Counter()
    procs = {name: start_replica(name, redis_server.url, tmp_path) for name in ("a", "b")}
    stop_publishing = asyncio.Event()

    async def publish() -> None:
        """400 events/s over the 300 functions, round robin, until told to stop."""
        i = 0
        while not stop_publishing.is_set():
            names = [functions[(i + k) % len(functions)] for k in range(20)]
            await producer.emit_fields_batch([fields(n) for n in names])
            published.update(names)
            i += 20
            await asyncio.sleep(0.05)

    async def split_evenly() -> bool:
        holders = collections.Counter((await lease_holders(r)).values())
        return holders == {"a": 8, "b": 8}

    try:
        await eventually(split_evenly, "the two replicas to own 8 shards each", timeout=60)
        publisher = asyncio.create_task(publish())
        victim = procs["b"]

        async def b_has_checkpointed_some() -> bool:
            mine = [s for s, h in (await lease_holders(r)).items() if h == "b"]
            blobs = await r.mget([state_key(s) for s in mine])
            return any(blob and ShardAgent.loads(blob, policy_factory("hybrid")).events for blob in blobs)

        await eventually(b_has_checkpointed_some, "b to checkpoint some events", timeout=30)

        # Freeze b at a moment it holds events read but not yet checkpointed (checked while it cannot move), then
        # kill it: a crash mid-run, with work in flight.
        async def frozen_with_work_in_flight() -> bool:
            os.killpg(victim.pid, signal.SIGSTOP)
            if await pending(r, "b") > 0:
                return True
            os.killpg(victim.pid, signal.SIGCONT)
            return False

        await eventually(frozen_with_work_in_flight, "b to hold unacknowledged events", timeout=30)
        died = time.time()
        in_flight = await pending(r, "b")
        b_shards = {s for s, h in (await lease_holders(r)).items() if h == "b"}
        assert len(b_shards) == 8
        before_death = {f for f in published if shard_of(f) in b_shards}
        os.killpg(victim.pid, signal.SIGKILL)
        await _wait(victim)

        async def a_owns_all() -> bool:
            return collections.Counter((await lease_holders(r)).values()) == {"a": SHARDS}

        await eventually(a_owns_all, "a to take b's shards over", timeout=30)
        stop_publishing.set()
        await publisher

        # (a) + (c): every event counted exactly once in the checkpoints, per function; nothing left pending.
        async def all_counted() -> bool:
            got = await counted(r)
            over = {f: (got[f], published[f]) for f in got if got[f] > published[f]}
            assert not over, f"counted more often than published: {over}"
            return got == dict(published)

        await eventually(all_counted, f"all {sum(published.values())} events counted", timeout=20, interval=0.2)
        assert in_flight > 0  # so b's unacknowledged events were delivered again, to a, and counted once
        assert await pending(r) == 0
        assert await r.xlen(dead_letter_key()) == 0

        # (b): every shard, and every function b managed, ticked by a within the lease TTL and one tick of death.
        rows = [row for row in decisions(tmp_path / "a.jsonl") if row["t"] >= died]
        first_by_shard = {}
        first_by_function = {}
        for row in rows:
            first_by_shard.setdefault(row["shard"], row["t"])
            first_by_function.setdefault(row["function"], row["t"])
        assert b_shards <= set(first_by_shard), f"shards never ticked by a: {b_shards - set(first_by_shard)}"
        assert before_death <= set(first_by_function)
        unmanaged = max(first_by_function[f] for f in before_death) - died
        print(f"b killed with {in_flight} events in flight; {len(before_death)} functions of its {len(b_shards)} "
              f"shards ticked by a after {unmanaged:.2f} s at most (lease TTL {LEASE_TTL_S} s, tick {TICK_S} s)")
        assert unmanaged <= LEASE_TTL_S + TICK_S, f"a function of b's went {unmanaged:.2f} s unmanaged"
        b_rows = decisions(tmp_path / "b.jsonl")
        assert b_rows and {row["shard"] for row in b_rows} <= b_shards  # b managed only its own shards
    finally:
        stop_publishing.set()
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen one would not act on SIGTERM
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            code = await _wait(proc)
            assert code in (0, -signal.SIGKILL), (tmp_path / f"{name}.log").read_text()[-3000:]
        await r.aclose()
    assert await _leases_released(redis_server.url)  # a's SIGTERM released its shards


async def _leases_released(url: str) -> bool:
    r = connect(url)
    try:
        return await lease_holders(r) == {}
    finally:
        await r.aclose()
