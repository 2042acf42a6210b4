"""The sidecar loop against a real redis-server: counting, crash and restart, Redis outages, dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import numpy as np
import pytest
import redis.asyncio as aioredis
from helpers import checkpointed_events

from prewarmer.actuators import DryRunActuator
from prewarmer.actuators.base import ActuatorError, FunctionStatus
from prewarmer.registry import policy_factory
from prewarmer.sidecar.run import Sidecar, SidecarOptions
from prewarmer.sim import engine as E
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.keys import clock_key, dead_letter_key, shard_of, stream_key
from prewarmer.stream.producer import RedisEventProducer

N_SHARDS = 4


def make_events(n: int, t0: float, functions: int = 10) -> list[InvocationEvent]:
    """Reports of requests that arrived from 10 s before t0 on, 10 ms apart (reported once complete: in the past)."""
    return [InvocationEvent(function=f"fn{i % functions}", namespace="openfaas-fn", ts=t0 - 10.0 + i * 0.01,
                            duration_ms=5.0, cold=i < functions, status=200, instance=f"w{i % functions}")
            for i in range(n)]


async def produce(url: str, events: list[InvocationEvent]) -> None:
    producer = RedisEventProducer(url, n_shards=N_SHARDS)
    for e in events:
        await producer.emit(e)
    await producer.close()
    assert producer.buffered == 0


def sidecar(redis: aioredis.Redis, replica: str = "r1", policy: str = "fixed:10m",
            actuator: DryRunActuator | None = None, clock: Callable[[], float] = time.time, **kw) -> Sidecar:
    opts = SidecarOptions(replica_id=replica, n_shards=N_SHARDS, claim_min_idle_ms=kw.pop("claim_ms", 200),
                          lease_ttl_ms=kw.pop("lease_ms", 2000), checkpoint_interval_s=kw.pop("ckpt", 0.0),
                          status_interval_s=kw.pop("status_interval_s", 0.0), policy_spec=policy, **kw)
    return Sidecar(opts, policy_factory(policy), actuator or DryRunActuator(), redis, clock=clock)


async def counted(redis: aioredis.Redis) -> int:
    return await checkpointed_events(redis, N_SHARDS)


async def iterate_until(sc: Sidecar, redis: aioredis.Redis, want: int, deadline_s: float = 30.0) -> int:
    end = time.monotonic() + deadline_s
    got = -1
    while time.monotonic() < end:
        await sc.iterate()
        got = await counted(redis)
        if got >= want:
            return got
    return got


async def test_every_event_is_counted_once_and_scales_follow(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    events = make_events(500, time.time())
    await produce(redis_server.url, events)
    sc = sidecar(r)
    await sc.start()
    await sc._own_shards(0.0)
    await sc._read_lag()
    assert sc.metrics.lag._value.get() == 500  # the consumer lag metric: nothing delivered yet
    assert await iterate_until(sc, r, 500) == 500
    await sc.iterate()
    assert await counted(r) == 500
    for s in range(N_SHARDS):
        assert (await r.xpending(stream_key(s), "prewarmer"))["pending"] == 0
    # fixed:10m keeps each function's one instance warm: one scale request to 1 per function
    scaled = {rec.function: rec.replicas for rec in sc.actuator.records}
    assert scaled == {f"fn{i}": 1 for i in range(10)}
    assert sc.metrics.events._value.get() == 500
    assert sc.metrics.lag._value.get() == 0  # everything delivered
    await sc.shutdown()
    await r.aclose()


async def test_malformed_events_go_to_the_dead_letter_stream(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    good = make_events(20, time.time(), functions=2)
    await produce(redis_server.url, good)
    key = stream_key(shard_of("fn0", N_SHARDS))
    await r.xadd(key, {"function": "fn0", "ts": "yesterday", "duration_ms": "1", "cold": "0", "status": "200"})
    await r.xadd(key, {"function": "fn0", "ts": "1", "duration_ms": "1", "cold": "0"})
    sc = sidecar(r)
    await sc.start()
    assert await iterate_until(sc, r, 20) == 20
    dead = await r.xrange(dead_letter_key())
    errors = sorted(fields[b"error"].decode() for _, fields in dead)
    assert len(errors) == 2
    assert "'status'" in errors[0] or "'status'" in errors[1]
    assert any("'ts'" in e for e in errors)
    assert sc.metrics.dead._value.get() == 2
    assert (await r.xpending(key, "prewarmer"))["pending"] == 0
    await r.aclose()


async def test_a_crashed_sidecar_loses_no_event_and_counts_none_twice(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    t0 = time.time()
    await produce(redis_server.url, make_events(300, t0))
    first = sidecar(r, replica="a", ckpt=3600.0)  # read everything, never checkpoint: then "crash"
    await first.start()
    await first.iterate()
    assert sum(s.agent.events for s in first.slots.values()) == 300
    assert await counted(r) == 0
    # The crash: no shutdown, no checkpoint, leases left to expire; more events keep arriving.
    await produce(redis_server.url, make_events(200, t0 + 10))
    second = sidecar(r, replica="b", lease_ms=2000)
    await second.start()
    assert await iterate_until(second, r, 500) == 500
    await second.iterate()
    assert await counted(r) == 500
    await r.aclose()


async def test_restart_resumes_from_the_checkpoint(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    await produce(redis_server.url, make_events(100, time.time()))
    sc = sidecar(r, policy="hybrid")
    await sc.start()
    assert await iterate_until(sc, r, 100) == 100
    learned = {s: slot.agent.policy.counts.copy() for s, slot in sc.slots.items() if slot.agent.policy is not None
               and hasattr(slot.agent.policy, "counts")}
    await sc.shutdown()
    again = sidecar(r, policy="hybrid")
    await again.start()
    await again.iterate()
    assert sum(s.agent.events for s in again.slots.values()) == 100
    for s, counts in learned.items():
        assert np.array_equal(again.slots[s].agent.policy.counts, counts)
    await r.aclose()


async def test_redis_restart_mid_stream_neither_crashes_nor_loses_acknowledged_work(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    t0 = time.time()
    await produce(redis_server.url, make_events(200, t0))
    sc = sidecar(r)
    await sc.start()
    assert await iterate_until(sc, r, 200) == 200
    redis_server.stop()
    await sc.iterate()  # must not raise
    assert sc.metrics.redis_up._value.get() == 0
    assert sc.metrics.holding._value.get() == 1
    redis_server.start()
    await produce(redis_server.url, make_events(100, t0 + 100))
    assert await iterate_until(sc, r, 300) == 300
    assert sc.metrics.redis_up._value.get() == 1
    await r.aclose()


@pytest.mark.parametrize("policy", ["hybrid", "marl"])
async def test_learned_policies_run_in_the_sidecar(redis_server, policy):
    r = aioredis.Redis.from_url(redis_server.url)
    await produce(redis_server.url, make_events(50, time.time(), functions=5))
    sc = sidecar(r, policy=policy)
    await sc.start()
    assert await iterate_until(sc, r, 50) == 50
    await sc.iterate()  # the first decision for functions just met comes at the next iteration
    # every function was invoked within the last minute: under either policy each keeps an instance warm
    desired = {n: int(d) for slot in sc.slots.values() if slot.agent.names
               for n, d in zip(slot.agent.names, slot.desired, strict=True)}
    assert set(desired) == {f"fn{i}" for i in range(5)}
    assert all(d >= 1 for d in desired.values()), desired
    assert sc.metrics.desired._value.get() == sum(desired.values())
    await r.aclose()


async def test_two_replicas_share_one_budget_through_redis_and_never_exceed_it(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    budget = 3.0  # GB: 24 instances of 128 MB for 12 functions that want far more
    clock = [time.time()]  # a controlled clock: each round is one policy tick (60 s) later
    replicas = []
    for name in ("a", "b"):
        opts = SidecarOptions(replica_id=name, n_shards=N_SHARDS, claim_min_idle_ms=200, lease_ttl_ms=5000,
                              checkpoint_interval_s=0.0, status_interval_s=0.0, policy_spec="fixed+bid",
                              budget_gb=budget, interval_s=1.0)
        replicas.append(Sidecar(opts, policy_factory("fixed+bid"), DryRunActuator(), r, clock=lambda: clock[0]))
    for sc in replicas:
        await sc.start()
    prices = []
    for _ in range(5):
        # each round, bursts: many concurrent long invocations per function, so every agent wants many instances
        t = clock[0]
        await produce(redis_server.url, [
            InvocationEvent(function=f"fn{i % 12}", namespace="openfaas-fn", ts=t - 50 + (i // 12) * 0.01,
                            duration_ms=40_000.0, cold=False, status=200, instance=f"w{i}") for i in range(600)])
        for sc in replicas:
            await sc.iterate()
        prices.append(max(sc.metrics.budget_price._value.get() for sc in replicas))
        clock[0] += 61.0
    owned = [set(sc.slots) for sc in replicas]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    seat = next(iter(replicas[0].seats.values()))  # every shard bids from its own seat: "<replica>/<shard>"
    awards = await seat.current()
    assert {k.split("/")[0] for k in awards} == {"a", "b"}
    assert {k for k in awards} == {f"{sc.opts.replica_id}/{s}" for sc in replicas for s in sc.slots}
    total_gb = sum(n * 0.125 for per in awards.values() for n in per.values())
    assert total_gb <= budget + 1e-9
    assert max(prices) > 0  # the budget did bind
    # and what each replica asks the platform for stays within its awards, but for instances still starting or
    # busy (they cannot be released)
    limited = 0
    for sc in replicas:
        for slot in sc.slots.values():
            if slot.desired is not None and len(slot.desired):
                fi = slot.agent.fleet.state.fi
                running = fi[:, E.F_STARTING] + fi[:, E.F_BUSY]
                assert (slot.desired <= np.maximum(slot.agent.fleet.limit, running)).all()
                limited += int((slot.agent.fleet.limit < 1 << 40).sum())
    assert limited > 0
    await r.aclose()


async def test_dry_run_records_decisions_predictions_and_scale_requests(redis_server, tmp_path):
    r = aioredis.Redis.from_url(redis_server.url)
    await produce(redis_server.url, make_events(40, time.time(), functions=4))
    record = tmp_path / "decisions.jsonl"
    sc = sidecar(r, record=record)
    await sc.start()
    assert await iterate_until(sc, r, 40) == 40
    await sc.iterate()  # the policy's first decision for functions it just met comes at the next iteration
    await sc.shutdown()
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    decisions = [x for x in rows if x["type"] == "decision"]
    scales = [x for x in rows if x["type"] == "scale"]
    assert {d["function"] for d in decisions} == {f"fn{i}" for i in range(4)}
    assert all(d["keep_alive_s"] == 600.0 and d["desired"] >= 0 for d in decisions)
    assert {s["function"]: s["requested"] for s in scales} == {f"fn{i}": 1 for i in range(4)}
    # nothing was acted on: the dry-run actuator only recorded the same requests
    assert {rec.function for rec in sc.actuator.records} == {f"fn{i}" for i in range(4)}
    await r.aclose()


async def test_the_loop_wakes_when_a_policy_tick_is_due_not_up_to_an_interval_later(redis_server):
    """At 30x, a 60-s policy tick comes every 2 real seconds: an iteration every second would tick up to a second
    (30 s of policy time) late. The loop sleeps until the tick instead, and the tick happens on time."""
    r = aioredis.Redis.from_url(redis_server.url)
    clock = [1_000_000.25]
    opts = SidecarOptions(replica_id="t", n_shards=N_SHARDS, checkpoint_interval_s=0.0, status_interval_s=0.0,
                          policy_spec="hybrid", time_scale=30.0, interval_s=1.0)
    sc = Sidecar(opts, policy_factory("hybrid"), DryRunActuator(), r, clock=lambda: clock[0])
    await sc.start()  # policy time 0 is now
    clock[0] += 0.25
    await produce(redis_server.url, [InvocationEvent(function="fn0", namespace="openfaas-fn", ts=clock[0] - 0.1,
                                                     duration_ms=5.0, cold=False, status=200)])
    await sc.iterate()
    agent = next(slot.agent for slot in sc.slots.values() if slot.agent.names)
    due = agent.next_tick  # policy seconds: the next multiple of 60
    assert due == 60.0 and sc.ts.policy(clock[0]) == pytest.approx(7.5)
    # 52.5 policy seconds away = 1.75 real seconds: more than an interval, so one interval first
    assert sc.sleep_s() == 1.0
    clock[0] += 1.0
    await sc.iterate()
    assert agent.next_tick == due  # not yet
    assert sc.sleep_s() == pytest.approx(0.75 + 0.001)  # then exactly to the tick
    clock[0] += sc.sleep_s()
    await sc.iterate()
    assert agent.next_tick == 120.0  # it ticked, 0.03 policy seconds after the tick time
    await sc.shutdown()
    await r.aclose()


async def test_not_ready_until_the_policy_is_warmed_up_on_its_clock(redis_server):
    """/readyz says 200 only once the sidecar acts: policy warmed up (seconds for marl), policy clock adopted and
    shards owned. A load test starts its requests on that 200; before, it measured the gateway alone for the
    warm-up's seconds while its replay counted the policy in from the first request (issue 13)."""
    r = aioredis.Redis.from_url(redis_server.url)
    sc = sidecar(r, policy="marl")
    stop = asyncio.Event()
    task = asyncio.create_task(sc.run(stop))
    polls = 0
    try:
        while not sc.ready()[0]:
            assert not task.done(), task
            polls += 1
            await asyncio.sleep(0.01)  # a poll interval, as a prober's: the warm-up runs in a worker thread
        assert polls > 0  # it was not ready while it warmed the policy up
        assert await r.get(clock_key(sc.opts.prefix, sc.opts.group)) is not None
        assert len(sc.slots) == N_SHARDS  # and it owns its shards
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await r.aclose()


async def test_a_policy_tick_observes_the_replicas_the_platform_runs_at_the_tick(redis_server, tmp_path):
    """Replay's policy sees its engine's instances at every tick; the live one sees the platform's last read. The
    periodic read (`status_interval_s`, 5 real seconds by default) is 150 policy seconds at 30x, so a tick reads too."""
    r = aioredis.Redis.from_url(redis_server.url)
    clock = [1_000_000.0]
    record = tmp_path / "decisions.jsonl"
    actuator = DryRunActuator()
    actuator.set_functions([FunctionStatus("fn0", "openfaas-fn", 1, 1, 0.0, 128.0)])
    sc = sidecar(r, "t", "hybrid", actuator, lambda: clock[0], status_interval_s=3600.0, time_scale=30.0,
                 interval_s=1.0, record=record)
    await sc.start()
    await sc.iterate()  # the first read of the platform (periodic): fn0 with 1 replica; the first tick sees it
    actuator.set_functions([FunctionStatus("fn0", "openfaas-fn", 7, 5, 0.0, 128.0)])  # it scaled meanwhile
    clock[0] += 2.0  # 60 policy seconds: the next tick is due; the periodic read is an hour away
    await sc.iterate()
    await sc.shutdown()
    seen = [(row["policy_now"], row["obs"]["alive"], row["obs"]["starting"])
            for row in map(json.loads, record.read_text().splitlines())
            if row["type"] == "decision" and row["function"] == "fn0"]
    assert [(round(t), alive, starting) for t, alive, starting in seen] == [(0, 1, 0), (60, 7, 2)]
    await r.aclose()


async def test_a_tick_does_not_read_a_platform_that_is_down_the_periodic_read_probes_it(redis_server):
    """The read a tick makes is for fresh counts; a gateway that is down is probed every `status_interval_s` only,
    not at every tick (at 30x, a tick comes every 0.67 real seconds)."""
    class Flaky(DryRunActuator):
        down, reads = False, 0

        async def list_functions(self):
            self.reads += 1
            if self.down:
                raise ActuatorError("gateway unreachable")
            return await super().list_functions()

    r = aioredis.Redis.from_url(redis_server.url)
    clock = [1_000_000.0]
    actuator = Flaky()
    actuator.set_functions([FunctionStatus("fn0", "openfaas-fn", 1, 1, 0.0, 128.0)])
    sc = sidecar(r, "t", "hybrid", actuator, lambda: clock[0], status_interval_s=10.0, time_scale=30.0, interval_s=1.0)
    await sc.start()
    await sc.iterate()  # the periodic read
    clock[0] += 2.0  # the next tick (60 policy seconds), the periodic read 8 real seconds away
    await sc.iterate()
    assert actuator.reads == 2  # the tick read the platform
    actuator.down = True
    clock[0] += 2.0
    await sc.iterate()  # the tick's read finds the gateway down
    assert actuator.reads == 3 and not sc.reachability.gateway_ok
    clock[0] += 2.0
    await sc.iterate()  # another tick: the platform is down, and the periodic read is not due yet (6 s since it)
    assert actuator.reads == 3
    clock[0] += 4.0
    await sc.iterate()  # 10 s since the last periodic read: it probes again
    assert actuator.reads == 4
    await sc.shutdown()
    await r.aclose()
