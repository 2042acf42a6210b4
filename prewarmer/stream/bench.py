"""Ingest throughput: pipelined XADD into the shard streams, then one consumer draining them all.

`python -m prewarmer.stream.bench --url redis://127.0.0.1:6390/0` against a scratch redis-server
(`redis-server --port 6390 --save '' --appendonly no`). Keys go under a fresh prefix and are deleted
afterwards. Wall-clock rates include Redis's own work; the per-CPU-second rate is this process only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
import uuid

from prewarmer.stream.consumer import RedisEventSource, connect
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.keys import dead_letter_key, stream_key
from prewarmer.stream.producer import RedisEventProducer


def synthetic_entries(n: int, n_functions: int = 500) -> list[dict[str, str]]:
    """Well-formed stream entries for `n` invocations spread over `n_functions` functions."""
    base = [InvocationEvent(function=f"fn-{i}", namespace="openfaas-fn", ts=1.7e9, duration_ms=12.5,
                            startup_ms=0.0, cold=False, status=200, instance=f"fn-{i}-0").to_fields()
            for i in range(n_functions)]
    return [{**base[i % n_functions], "ts": repr(1.7e9 + i * 1e-3)} for i in range(n)]


async def bench_ingest(redis_url: str, n_events: int = 500_000, batch: int = 1000, n_shards: int = 16) -> dict:
    """Produce `n_events` (pipelines of `batch` XADDs), then consume them with XREADGROUP COUNT `batch`,
    decode and XACK; returns events/s for both sides."""
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    entries = synthetic_entries(n_events)
    producer = RedisEventProducer(redis_url, prefix=prefix, n_shards=n_shards, maxlen=max(1_000_000, n_events))
    source = RedisEventSource(redis_url, prefix=prefix, n_shards=n_shards, group="bench", consumer="bench-0",
                              batch_size=batch, block_ms=None, claim_min_idle_ms=3_600_000)
    shards = range(n_shards)
    try:
        t0 = time.perf_counter()
        for i in range(0, n_events, batch):
            await producer.emit_fields_batch(entries[i:i + batch])
        produce_s = time.perf_counter() - t0
        # The consumer is measured without half a million producer-side dicts alive for the GC to walk.
        del entries
        gc.collect()

        await source.ensure_groups(shards)
        consumed = rejected = reads = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while consumed + rejected < n_events:
            got = await source.read(shards)
            if not len(got) and not got.rejected:
                break  # everything was produced before reading started: empty means drained
            await source.ack(got)
            consumed += len(got)
            rejected += len(got.rejected)
            reads += 1
        consume_s, consume_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finally:
        cleanup = connect(redis_url)
        await cleanup.delete(*[stream_key(s, prefix) for s in shards], dead_letter_key(prefix))
        await cleanup.aclose()
        await source.close()
        await producer.close()
    return {"n_events": n_events, "batch": batch, "n_shards": n_shards,
            "produce_s": round(produce_s, 3), "produce_events_per_s": round(n_events / produce_s),
            "consumed": consumed, "rejected": rejected, "reads": reads,
            "consume_s": round(consume_s, 3), "consume_events_per_s": round(consumed / consume_s),
            "consume_cpu_s": round(consume_cpu_s, 3),
            "consume_events_per_cpu_s": round(consumed / consume_cpu_s) if consume_cpu_s else None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=16)
    args = ap.parse_args(argv)
    print(json.dumps(asyncio.run(bench_ingest(args.url, args.events, args.batch, args.shards)), indent=2))


if __name__ == "__main__":
    main()
