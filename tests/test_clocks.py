"""Injected clocks: the gateway's worker pool and the stream consumer read time from the clock they are
given, so a fake clock decides exactly when a time rule applies. Real worker processes and a real
redis-server; the fake clock, not sleeping, moves time."""

from __future__ import annotations

from pathlib import Path

from helpers import alive

from prewarmer.gateway.config import load_functions
from prewarmer.gateway.workers import State, WorkerPool
from prewarmer.stream.consumer import RedisEventSource
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.producer import RedisEventProducer

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
PREFIX = "t:clocks"


class FakeClock:
    """Stands still until the test sets `t`."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_an_idle_worker_goes_exactly_when_the_pool_clock_passes_its_keep_alive():
    clock = FakeClock(1000.0)
    pool = WorkerPool(load_functions(FUNCTIONS), keep_alive_s=60.0, clock=clock)
    label = pool.functions["echo"].label
    memory_gb = pool.functions["echo"].spec.memory_gb
    try:
        meta = {"method": "POST", "path": "/", "query": "", "headers": {}}
        inv = await pool.invoke("echo", meta, b"x")
        assert (inv.status, inv.body) == (200, b"x")
        [w] = pool.workers("echo")
        assert w.state is State.IDLE and w.last_used == 1000.0 and w.idle_until == 1060.0

        clock.t = 1059.5  # (the event loop's own timer is a real minute away)
        assert pool.expire_idle() == []
        assert pool.workers("echo") == [w] and w.state is State.IDLE

        clock.t = 1060.0
        assert pool.expire_idle() == [w.id]
        assert pool.workers("echo") == [] and w.state is State.STOPPED
        # Idle from 1000 to 1060 on the pool's clock, busy for no time at all on it.
        sample = pool.metrics.registry.get_sample_value
        assert sample("prewarmer_gateway_idle_gb_seconds_total", {"function_name": label}) == 60.0 * memory_gb
        assert sample("prewarmer_gateway_busy_gb_seconds_total", {"function_name": label}) == 0.0
    finally:
        await pool.shutdown()
    assert pool.all_pids and not [p for p in pool.all_pids if alive(p)]


def _event(i: int) -> dict:
    return InvocationEvent(function=f"fn-{i}", namespace="ns", ts=1.7e9 + i, duration_ms=10.0, startup_ms=0.0,
                           cold=False, status=200, instance=f"inst-{i}").to_fields()


async def test_stale_pending_entries_are_claimed_only_when_the_clock_passes_claim_interval(redis_server):
    clock = FakeClock(500.0)
    prod = RedisEventProducer(redis_server.url, prefix=PREFIX, n_shards=1)
    # block_ms=None: reads return at once, so an empty read means "nothing to hand out now".
    dead = RedisEventSource(redis_server.url, prefix=PREFIX, n_shards=1, consumer="dead", block_ms=None,
                            prefetch=False)
    live = RedisEventSource(redis_server.url, prefix=PREFIX, n_shards=1, consumer="live", block_ms=None,
                            prefetch=False, claim_min_idle_ms=0, claim_interval_s=10.0, clock=clock)
    try:
        await live.ensure_groups([0])

        async def strand(n: int, start: int) -> list[bytes]:
            """Entries that the "dead" consumer reads and never acks."""
            ids = await prod.emit_fields_batch([_event(start + i) for i in range(n)], shard=0)
            assert (await dead.read([0])).ids == ids
            return ids

        # A shard read for the first time is claimed from at once, whatever the clock.
        first = await strand(3, 0)
        b = await live.read([0])
        assert (b.ids, b.claimed) == (first, 3)
        await live.ack(b)

        second = await strand(4, 10)
        clock.t = 509.5
        b = await live.read([0])
        assert (len(b), b.claimed) == (0, 0)
        assert await live.pending_count([0]) == 4  # still stranded on "dead"

        clock.t = 510.0  # claim_interval_s after the consumer was made
        b = await live.read([0])
        assert (b.ids, b.claimed) == (second, 4)
        await live.ack(b)

        third = await strand(2, 20)
        clock.t = 519.5  # the next claim is claim_interval_s after the last one
        assert len(await live.read([0])) == 0
        clock.t = 520.0
        b = await live.read([0])
        assert (b.ids, b.claimed) == (third, 2)
        await live.ack(b)
        assert await live.pending_count([0]) == 0
    finally:
        await dead.close()
        await live.close()
        await prod.close()
