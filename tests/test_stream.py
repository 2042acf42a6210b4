"""Redis Streams ingestion against a real redis-server: producer, consumer group, dead letters, shard leases."""

from __future__ import annotations

import asyncio
import time

import pytest

from prewarmer.stream.consumer import RedisEventSource, SourceBatch, StreamUnavailable, connect
from prewarmer.stream.events import PHASE_DONE, PHASE_END, PHASE_START, InvocationEvent
from prewarmer.stream.keys import dead_letter_key, shard_of, stream_key
from prewarmer.stream.producer import RedisEventProducer
from prewarmer.stream.shards import ShardLeases

PREFIX = "t:events"
N_SHARDS = 4
ALL = range(N_SHARDS)


@pytest.fixture
async def r(redis_server):
    client = connect(redis_server.url)
    yield client
    await client.aclose()


def event(i: int, function: str | None = None, **kw) -> InvocationEvent:
    base = {"function": function or f"fn-{i % 7}", "namespace": f"ns-{i % 2}", "ts": 1.7e9 + i,
            "duration_ms": 10.0 + i, "startup_ms": 800.0 if i % 3 == 0 else 0.0, "cold": i % 3 == 0,
            "status": 200 if i % 5 else 503, "instance": f"inst-{i}"}
    return InvocationEvent(**{**base, **kw})


def producer(redis_server, **kw) -> RedisEventProducer:
    return RedisEventProducer(redis_server.url, prefix=PREFIX, n_shards=N_SHARDS, **kw)


def source(redis_server, consumer: str = "c1", **kw) -> RedisEventSource:
    kw.setdefault("block_ms", 50)
    return RedisEventSource(redis_server.url, prefix=PREFIX, n_shards=N_SHARDS, consumer=consumer, **kw)


async def drain(src: RedisEventSource, n: int, shards=ALL, timeout_s: float = 15.0, ack: bool = True) -> list:
    """Read (and ack) until `n` entries came back; returns the batches. Fails at the deadline."""
    batches: list[SourceBatch] = []
    deadline = time.monotonic() + timeout_s
    while sum(len(b) for b in batches) < n:
        assert time.monotonic() < deadline, f"got {sum(len(b) for b in batches)} of {n} entries"
        b = await src.read(shards)
        if len(b):
            batches.append(b)
            if ack:
                await src.ack(b)
    return batches


def ids_of(batches: list[SourceBatch]) -> list[tuple[bytes, bytes]]:
    return [(s, i) for b in batches for s, i in zip(b.streams, b.ids, strict=True)]


async def stream_lengths(r) -> int:
    return sum([await r.xlen(stream_key(s, PREFIX)) for s in ALL])


# --- producer -> consumer -------------------------------------------------------------------------

async def test_round_trip_keeps_every_field(redis_server):
    prod, src = producer(redis_server), source(redis_server)
    events = [event(i) for i in range(50)]
    for ev in events:
        await prod.emit(ev)
    await prod.flush()
    assert prod.sent == 50
    batches = await drain(src, 50)
    got = [InvocationEvent(function=b.function[i], namespace=b.namespace[i], ts=b.ts[i], duration_ms=b.duration_ms[i],
                           startup_ms=b.startup_ms[i], cold=b.cold[i], status=b.status[i], instance=b.instance[i])
           for b in batches for i in range(len(b))]
    assert sorted(got, key=lambda e: e.ts) == events
    # Each event went to its function's shard stream.
    for b in batches:
        for key, fn in zip(b.streams, b.function, strict=True):
            assert key == stream_key(shard_of(fn, N_SHARDS), PREFIX).encode()
    assert prod.dropped == 0
    await prod.close()
    await src.close()


async def test_background_flusher_sends_without_explicit_flush(redis_server, r):
    prod = producer(redis_server, flush_interval_s=0.01)
    for i in range(10):
        await prod.emit(event(i))
    deadline = time.monotonic() + 10
    while await stream_lengths(r) < 10:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert prod.sent == 10 and prod.buffered == 0
    await prod.close()


async def test_group_delivers_each_entry_to_one_consumer(redis_server):
    prod = producer(redis_server)
    await prod.emit_fields_batch([event(i).to_fields() for i in range(300)])
    a = source(redis_server, "a", batch_size=20, prefetch=False)
    b = source(redis_server, "b", batch_size=20, prefetch=False)
    seen: dict[str, list] = {"a": [], "b": []}
    deadline = time.monotonic() + 15
    while len(seen["a"]) + len(seen["b"]) < 300:
        assert time.monotonic() < deadline
        for name, src in (("a", a), ("b", b)):
            batch = await src.read(ALL)
            seen[name].extend(zip(batch.streams, batch.ids, strict=True))
            await src.ack(batch)
    assert seen["a"] and seen["b"]
    assert not set(seen["a"]) & set(seen["b"])
    assert len(set(seen["a"]) | set(seen["b"])) == 300
    for src in (a, b, prod):
        await src.close()


async def test_ack_removes_from_pel_and_lag_counts_undelivered(redis_server):
    prod, src = producer(redis_server), source(redis_server, prefetch=False)
    await prod.emit_fields_batch([event(i).to_fields() for i in range(40)])
    await src.ensure_groups(ALL)
    assert await src.lag(ALL) == 40
    batches = await drain(src, 40, ack=False)
    assert await src.lag(ALL) == 0
    assert await src.pending_count(ALL) == 40
    assert sum([await src.ack(b) for b in batches]) == 40
    assert await src.pending_count(ALL) == 0
    await prod.close()
    await src.close()


async def test_dead_consumers_unacked_entries_are_reclaimed_once(redis_server):
    prod = producer(redis_server)
    n = 500
    await prod.emit_fields_batch([event(i).to_fields() for i in range(n)])
    # "a" reads (with read-ahead) and dies before acking anything: its object is simply abandoned.
    a = source(redis_server, "a", batch_size=50)
    first = await a.read(ALL)
    assert len(first) > 0
    del a
    b = source(redis_server, "b", batch_size=50, claim_min_idle_ms=200)
    batches = await drain(b, n)
    got = ids_of(batches)
    assert len(got) == n and len(set(got)) == n  # nothing lost, nothing twice
    assert set(zip(first.streams, first.ids, strict=True)) <= set(got)
    assert sum(bt.claimed for bt in batches) >= len(first)
    assert await b.pending_count(ALL) == 0
    await b.close()
    await prod.close()


async def test_malformed_entries_go_to_dead_letter_without_blocking_the_batch(redis_server, r):
    prod, src = producer(redis_server), source(redis_server)
    good = event(1, function="good").to_fields()
    missing = {k: v for k, v in good.items() if k != "ts"}
    bad_number = {**good, "duration_ms": "fast"}
    bad_cold = {**good, "cold": "2"}
    bad_version = {**good, "v": "9"}
    not_utf8 = {**good, "instance": b"\xff\xfe"}
    entries = [good, missing, good, bad_number, bad_cold, good, bad_version, not_utf8, good]
    ids = await prod.emit_fields_batch(entries, shard=0)
    batches = await drain(src, 4)
    assert [i for b in batches for i in b.ids] == [ids[0], ids[2], ids[5], ids[8]]
    assert sum(len(b.rejected) for b in batches) == 5

    dead = await r.xrange(dead_letter_key(PREFIX))
    assert len(dead) == 5
    expected = {ids[1]: "'ts'", ids[3]: "'duration_ms'", ids[4]: "'cold'", ids[6]: "'v'", ids[7]: "'instance'"}
    for _, f in dead:
        source_id = f[b"source_id"]
        assert expected[source_id] in f[b"error"].decode(), f[b"error"]
        assert f[b"source_stream"] == stream_key(0, PREFIX).encode()
        assert f[b"function"] == b"good"
    assert {f[b"source_id"] for _, f in dead} == set(expected)
    assert dict(dead[-1][1])[b"instance"] == b"\xff\xfe"  # original bytes kept as they were
    # Dead-lettered entries were acked with their copy; the good ones by the caller.
    assert await src.pending_count(ALL) == 0
    await prod.close()
    await src.close()


async def test_start_and_end_entries_are_read_and_malformed_ones_dead_lettered(redis_server, r):
    prod, src = producer(redis_server), source(redis_server)
    start = InvocationEvent.start("good", "ns", 1.7e9).to_fields()
    end = event(1, function="good", phase="end", ts=1.7e9).to_fields()
    v1 = {k: v for k, v in event(2, function="good").to_fields().items() if k != "phase"} | {"v": "1"}
    start_with_outcome = {**start, "duration_ms": "5"}
    end_without_status = {k: v for k, v in end.items() if k != "status"}
    unknown_phase = {**end, "phase": "middle"}
    v1_with_phase = {**v1, "phase": "start"}
    entries = [start, start_with_outcome, end, end_without_status, unknown_phase, v1, v1_with_phase]
    ids = await prod.emit_fields_batch(entries, shard=0)
    batches = await drain(src, 3)
    got = [(i, p) for b in batches for i, p in zip(b.ids, b.phase, strict=True)]
    assert got == [(ids[0], PHASE_START), (ids[2], PHASE_END), (ids[5], PHASE_DONE)]
    assert batches[0].status[0] == 0 and batches[0].ts[0] == 1.7e9  # a start has no outcome yet
    dead = {f[b"source_id"]: f[b"error"].decode() for _, f in await r.xrange(dead_letter_key(PREFIX))}
    assert set(dead) == {ids[1], ids[3], ids[4], ids[6]}
    assert "'duration_ms'" in dead[ids[1]] and "not allowed in a start entry" in dead[ids[1]]
    assert "'status'" in dead[ids[3]]
    assert "'phase'" in dead[ids[4]]
    assert "'phase'" in dead[ids[6]] and "version 1" in dead[ids[6]]
    assert await src.pending_count(ALL) == 0
    await prod.close()
    await src.close()


async def test_maxlen_trimming_keeps_the_stream_bounded(redis_server, r):
    prod = producer(redis_server, maxlen=100, batch_size=10_000)
    for i in range(2000):
        await prod.emit(event(i, function="hot"))
    await prod.flush()
    assert prod.sent == 2000
    length = await r.xlen(stream_key(shard_of("hot", N_SHARDS), PREFIX))
    # "~" trims whole macro-nodes (stream-node-max-entries, 100 by default), never below maxlen.
    assert 100 <= length <= 200
    await prod.close()


# --- outages --------------------------------------------------------------------------------------

async def test_producer_buffers_while_redis_is_down_and_delivers_after(redis_server, r):
    prod = producer(redis_server, flush_interval_s=0.01, backoff_initial_s=0.01, backoff_max_s=0.05)
    await prod.emit(event(0))
    await prod.flush()
    redis_server.stop()
    for i in range(1, 31):
        await prod.emit(event(i))  # must not raise
    assert await prod.flush() == 0
    assert prod.buffered == 30 and prod.failures >= 1
    redis_server.start()
    await prod.flush()  # the background flusher may have delivered part already: it shares the buffer
    assert prod.buffered == 0 and prod.dropped == 0
    assert await stream_lengths(r) == 31
    src = source(redis_server)
    batches = await drain(src, 31)
    assert sorted(t for b in batches for t in b.ts) == [1.7e9 + i for i in range(31)]
    await prod.close()
    await src.close()


async def test_producer_buffer_is_bounded_dropping_the_oldest(redis_server):
    prod = producer(redis_server, max_buffer=10, batch_size=1000, flush_interval_s=60)
    redis_server.stop()
    for i in range(25):
        await prod.emit(event(i))
    await prod.flush()
    assert prod.buffered == 10 and prod.dropped == 15
    redis_server.start()
    assert await prod.flush() == 10
    src = source(redis_server)
    batches = await drain(src, 10)
    assert sorted(t for b in batches for t in b.ts) == [1.7e9 + i for i in range(15, 25)]
    await prod.close()
    await src.close()


async def test_consumer_raises_stream_unavailable_and_recovers(redis_server, r):
    prod, src = producer(redis_server), source(redis_server)
    await prod.emit_fields_batch([event(i).to_fields() for i in range(5)])
    await drain(src, 5)
    redis_server.stop()
    with pytest.raises(StreamUnavailable):
        await src.read(ALL)
    with pytest.raises(StreamUnavailable):
        await src.pending_count(ALL)
    redis_server.start()
    await prod.emit_fields_batch([event(i).to_fields() for i in range(5, 10)])
    batches = await drain(src, 5)
    assert sorted(t for b in batches for t in b.ts) == [1.7e9 + i for i in range(5, 10)]
    # Redis comes back empty (no groups): the consumer re-creates them and reads the new entries.
    await r.flushall()
    await prod.emit_fields_batch([event(i).to_fields() for i in range(10, 13)])
    batches = await drain(src, 3)
    assert sorted(t for b in batches for t in b.ts) == [1.7e9 + i for i in range(10, 13)]
    await prod.close()
    await src.close()


# --- shard leases ---------------------------------------------------------------------------------

def leases(redis_server, replica: str, n_shards: int = 16, ttl_ms: int = 10_000) -> ShardLeases:
    return ShardLeases(redis_server.url, replica, n_shards=n_shards, prefix=PREFIX, lease_ttl_ms=ttl_ms)


async def lease_holders(r, n_shards: int = 16) -> dict[int, str]:
    values = await r.mget([f"{PREFIX}:lease:{s}" for s in range(n_shards)])
    return {s: v.decode() for s, v in enumerate(values) if v is not None}


async def until(condition, timeout_s: float = 15.0) -> None:
    """Poll `condition` (async) until true; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


async def _owns_all_of(lease: ShardLeases, n: int) -> bool:
    return await lease.rebalance() == set(range(n))


async def test_single_replica_owns_every_shard(redis_server, r):
    a = leases(redis_server, "a")
    assert await a.rebalance() == set(range(16))
    assert await a.rebalance() == set(range(16))  # renewal keeps them
    assert await lease_holders(r) == {s: "a" for s in range(16)}
    await a.release_all()
    assert await lease_holders(r) == {}
    await a.close()


async def test_two_replicas_split_eight_and_eight(redis_server, r):
    a, b = leases(redis_server, "a"), leases(redis_server, "b")
    owned = {"a": set(), "b": set()}

    async def split() -> bool:
        owned["a"] = await a.rebalance()
        owned["b"] = await b.rebalance()
        return len(owned["a"]) == 8 and len(owned["b"]) == 8

    await until(split)
    assert not owned["a"] & owned["b"]
    holders = await lease_holders(r)
    assert {s for s, h in holders.items() if h == "a"} == owned["a"]
    assert {s for s, h in holders.items() if h == "b"} == owned["b"]
    await a.close()
    await b.close()


async def test_survivor_takes_over_a_dead_replicas_shards(redis_server, r):
    a, b = leases(redis_server, "a", ttl_ms=300), leases(redis_server, "b", ttl_ms=300)

    async def split() -> bool:
        mine, theirs = await a.rebalance(), await b.rebalance()
        return len(mine) == 8 and len(theirs) == 8

    await until(split)
    # "b" stops heartbeating (crashed): its heartbeat and leases expire by TTL.
    await until(lambda: _owns_all_of(a, 16))
    assert await lease_holders(r) == {s: "a" for s in range(16)}
    await a.close()
    await b.close()


async def test_lost_lease_is_dropped_not_fought_over(redis_server, r):
    a = leases(redis_server, "a")
    await a.rebalance()
    await r.set(f"{PREFIX}:lease:3", "intruder")  # as if a's lease had expired and been taken
    owned = await a.rebalance()
    assert 3 not in owned
    assert (await lease_holders(r))[3] == "intruder"
    await a.close()


async def test_concurrent_rebalances_never_share_a_shard(redis_server, r):
    replicas = [leases(redis_server, name) for name in ("a", "b", "c")]
    for round_ in range(60):
        if round_ == 20:
            await replicas[2].release_all()  # "c" leaves cleanly for a while, then comes back
        active = replicas if not 20 <= round_ < 35 else replicas[:2]
        results = await asyncio.gather(*(rep.rebalance() for rep in active))
        for i, mine in enumerate(results):
            for theirs in results[i + 1:]:
                assert not mine & theirs, f"round {round_}: shards {mine & theirs} owned twice"
        holders = await lease_holders(r)
        for rep, mine in zip(active, results, strict=True):
            assert mine == {s for s, h in holders.items() if h == rep.replica_id}, f"round {round_}"
    # By now it has converged: every shard owned, nobody above ceil(16 / 3).
    assert set().union(*results) == set(range(16))
    assert max(len(m) for m in results) <= 6
    for rep in replicas:
        await rep.close()


async def test_shard_handover_redelivers_a_dead_owners_unacked_batch(redis_server):
    prod = producer(redis_server)
    await prod.emit_fields_batch([event(i).to_fields() for i in range(200)])
    a_leases = leases(redis_server, "a", n_shards=N_SHARDS, ttl_ms=300)
    b_leases = leases(redis_server, "b", n_shards=N_SHARDS, ttl_ms=300)
    a_src = source(redis_server, "a", claim_min_idle_ms=200)
    taken = await a_src.read(await a_leases.rebalance())
    assert len(taken) > 0
    # "a" dies holding every shard and an unacked batch; "b" gets the shards once a's leases expire.
    await until(lambda: _owns_all_of(b_leases, N_SHARDS))
    b_src = source(redis_server, "b", claim_min_idle_ms=200)
    got = ids_of(await drain(b_src, 200, shards=b_leases.owned))
    assert len(got) == len(set(got)) == 200
    await b_src.close()
    await b_leases.close()
    await prod.close()


async def test_wait_ms_is_read_defaults_to_the_start_up_and_bad_values_are_dead_lettered(redis_server, r):
    """`wait_ms` (arrival to the start of execution) tells a request queued at the platform's instance bound apart
    from one that waited for a start-up only. Entries without it (producers of before the field) read as having
    waited for their start-up; a malformed value, one below `startup_ms`, or one in a start entry is refused."""
    prod, src = producer(redis_server), source(redis_server)
    queued = {**event(1, function="good", phase="end", ts=1.7e9).to_fields(), "startup_ms": "0.0",
              "wait_ms": "4012.5"}
    cold = {**event(2, function="good").to_fields(), "startup_ms": "850.0", "wait_ms": "850.0"}
    older = {k: v for k, v in {**event(3, function="good").to_fields(), "startup_ms": "300.0"}.items()
             if k != "wait_ms"}
    built = InvocationEvent(phase="end", function="good", ts=1.7e9, duration_ms=5.0, startup_ms=10.0, wait_ms=25.0,
                            cold=True, status=200).to_fields()
    not_a_number = {**queued, "wait_ms": "soon"}
    negative = {**queued, "wait_ms": "-1"}
    infinite = {**queued, "wait_ms": "inf"}
    below_start_up = {**cold, "wait_ms": "100.0"}
    in_a_start = {**InvocationEvent.start("good", "ns", 1.7e9).to_fields(), "wait_ms": "5"}
    entries = [queued, cold, older, built, not_a_number, negative, infinite, below_start_up, in_a_start]
    ids = await prod.emit_fields_batch(entries, shard=0)
    batches = await drain(src, 4)
    got = {i: w for b in batches for i, w in zip(b.ids, b.wait_ms, strict=True)}
    assert got == {ids[0]: 4012.5, ids[1]: 850.0, ids[2]: 300.0, ids[3]: 25.0}
    dead = {f[b"source_id"]: f[b"error"].decode() for _, f in await r.xrange(dead_letter_key(PREFIX))}
    assert set(dead) == set(ids[4:])
    assert all("'wait_ms'" in dead[i] for i in ids[4:]), dead
    assert "less than startup_ms" in dead[ids[7]]
    assert "not allowed in a start entry" in dead[ids[8]]
    assert await src.pending_count(ALL) == 0
    await prod.close()
    await src.close()
