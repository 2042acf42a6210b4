"""Shard ownership: the leases, the shards gained (restored from their checkpoints) and lost, and the checkpoints.

Exactly-once effect on agent state: a shard's events are acknowledged in the same atomic step (a Lua script) that
stores the shard's checkpoint, so after a crash the restarted (or another) replica loads a checkpoint that
counted precisely the acknowledged events, and the unacknowledged ones are delivered again. That step is fenced
by the shard's lease: a replica that lost the lease (it stalled past the TTL) writes nothing and drops the shard.

On gaining a shard, its events still pending on another consumer (a dead replica's, or this replica's from
before it lost the shard) are claimed at once, whatever their idle time (`RedisEventSource.take_over`): the
lease says nobody else may count them, so there is no reason to wait `claim_min_idle_ms` for them.

Before taking any lease, a replica ticks its policy once on a throwaway shard (`warm_up`): a process's first tick
loads, or with an empty cache compiles, the engine's and the policies' compiled code, which takes seconds to a
minute, longer than a lease TTL. Done with leases held, it would make a new replica lose the shards it had just
taken, in its first iteration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from prewarmer.policies.base import Policy
from prewarmer.sidecar.agent import ShardAgent
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.reachability import Reachability
from prewarmer.sidecar.seats import BudgetSeats
from prewarmer.stream.consumer import RedisEventSource, StreamUnavailable
from prewarmer.stream.events import PHASE_END, PHASE_START
from prewarmer.stream.keys import stream_key
from prewarmer.stream.shards import ShardLeases

if TYPE_CHECKING:
    from prewarmer.sidecar.run import SidecarOptions

logger = logging.getLogger("prewarmer.sidecar")


@dataclass
class ShardSlot:
    """One owned shard: its agent, its events not yet acknowledged, and what its functions were last asked for."""

    agent: ShardAgent
    unacked: list[bytes] = field(default_factory=list)
    # Ids folded in but not yet acked: XAUTOCLAIM may hand them back to us after an outage.
    seen: set[bytes] = field(default_factory=set)
    saved_events: int = -1
    last_sent: dict[int, int] = field(default_factory=dict)  # function index -> replicas last sent to the platform
    predicted_warm: np.ndarray | None = None
    desired: np.ndarray | None = None


class OwnedShards(dict[int, ShardSlot]):
    """The shards this replica owns, by number: one table that every part of the loop reads."""

    def functions(self) -> int:
        """Functions tracked, over every owned shard (what `max_functions` caps)."""
        return sum(len(slot.agent.names) for slot in self.values())

    def unacked(self) -> int:
        return sum(len(slot.unacked) for slot in self.values())

    def events(self) -> int:
        return sum(slot.agent.events for slot in self.values())

    def next_tick(self) -> float:
        """The earliest policy time at which a shard's policy is due to tick (inf: none is)."""
        return min((slot.agent.next_tick for slot in self.values() if slot.agent.policy is not None),
                   default=float("inf"))


class ShardOwnership:
    def __init__(self, opts: SidecarOptions, make_policy: Callable[[], Policy], redis: aioredis.Redis,
                 source: RedisEventSource, seats: BudgetSeats, reachability: Reachability,
                 metrics: SidecarMetrics) -> None:
        self.opts = opts
        self.make_policy = make_policy
        self.redis = redis
        self.source = source
        self.seats = seats
        self.reachability = reachability
        self.metrics = metrics
        self.leases = ShardLeases(redis, replica_id=opts.replica_id, n_shards=opts.n_shards, prefix=opts.prefix,
                                  lease_ttl_ms=opts.lease_ttl_ms)
        self.slots = OwnedShards()

    async def warm_up(self) -> None:
        """One policy tick on a throwaway shard, in a worker thread (the metrics and probes keep answering), before
        any lease is taken; a failure is logged and ignored, the real ticks will say what is wrong."""
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(_tick_once, self.make_policy)
        except Exception as e:  # noqa: BLE001 - an optimisation must never stop the sidecar
            log(logger, "policy warm-up failed", logging.WARNING, error=str(e)[:200])
            return
        log(logger, "policy warmed up", seconds=round(time.perf_counter() - t0, 2))

    def state_key(self, shard: int) -> str:
        return f"{self.opts.prefix}:state:{self.opts.group}:{shard}"

    async def rebalance(self, epoch_s: float) -> bool:
        """Renew and take leases, drop the shards lost, restore the ones gained; False while Redis is unreachable.
        `epoch_s` is the policy clock's epoch, which shards that start fresh are created with."""
        try:
            owned = await self.leases.rebalance()
        except (StreamUnavailable, RedisError, OSError) as e:
            self.reachability.redis_down("lease renewal", e)
            return False
        self.reachability.redis_back()
        for shard in list(self.slots):
            if shard not in owned:
                # Lost or handed over: the next owner resumes from the last checkpoint and gets our unacked events.
                del self.slots[shard]
                await self.seats.leave(shard)
                log(logger, "shard released", shard=shard)
        gained = [s for s in sorted(owned) if s not in self.slots]
        if gained:
            try:
                await self.source.ensure_groups(gained)
                blobs = await self.redis.mget([self.state_key(s) for s in gained])
                self.source.take_over(gained)
            except (StreamUnavailable, RedisError, OSError) as e:
                self.reachability.redis_down("shard acquisition", e)
                return False
            for shard, blob in zip(gained, blobs, strict=True):
                self.slots[shard] = ShardSlot(self._restore(shard, blob, epoch_s))
        self.metrics.shards.set(len(self.slots))
        return True

    def _restore(self, shard: int, blob: bytes | None, epoch_s: float) -> ShardAgent:
        if blob is not None:
            try:
                agent = ShardAgent.loads(blob, self.make_policy)
                if agent.policy is not None and agent.policy.spec != self.opts.policy_spec:
                    log(logger, "checkpoint is for another policy, starting fresh", logging.WARNING, shard=shard,
                        checkpoint_policy=agent.policy.spec, policy=self.opts.policy_spec)
                else:
                    log(logger, "shard resumed from checkpoint", shard=shard, functions=len(agent.names),
                        events=agent.events)
                    return agent
            except ValueError as e:
                log(logger, "unreadable checkpoint, starting fresh", logging.WARNING, shard=shard, error=str(e))
        log(logger, "shard acquired", shard=shard)
        return ShardAgent(shard, self.make_policy, epoch_s, self.opts.max_replicas)

    async def checkpoint(self) -> None:
        """Store every shard's state and acknowledge its events in one transaction per shard."""
        for shard, slot in list(self.slots.items()):
            ids = slot.unacked
            if not ids and slot.agent.events == slot.saved_events:
                continue
            blob = slot.agent.dumps()
            try:
                written = await self.leases.fenced_checkpoint(shard, self.state_key(shard), blob,
                                                              stream_key(shard, self.opts.prefix), self.opts.group, ids)
            except (StreamUnavailable, RedisError, OSError) as e:
                self.reachability.redis_down("checkpoint", e)
                return
            if not written:
                # The lease expired (this replica stalled past the TTL): the shard's next owner resumes from the last
                # checkpoint written under the lease and counts the events left unacknowledged here.
                del self.slots[shard]
                await self.seats.leave(shard)
                log(logger, "shard lost before its checkpoint, state dropped", logging.WARNING, shard=shard,
                    unacked=len(ids))
                continue
            slot.unacked = []
            slot.seen.clear()
            slot.saved_events = slot.agent.events
            self.metrics.checkpoints.inc()
        self.metrics.pending.set(self.slots.unacked())
        self.metrics.shards.set(len(self.slots))

    async def release_leases(self) -> None:
        """On shutdown: the other replicas take the shards over now rather than after the lease TTL."""
        try:
            await self.leases.release_all()
        except (StreamUnavailable, RedisError, OSError):
            pass


def _tick_once(make_policy: Callable[[], Policy]) -> None:
    """Register one function, fold in one event, tick and ask for the desired count: every compiled path of a tick."""
    agent = ShardAgent(-1, make_policy, 0.0)
    agent.add_functions(0.0, ["warm-up"], ["warm-up"], [None])
    first, one = np.zeros(1, np.int64), np.ones(1, np.int64)
    agent.ingest(first, np.ones(1), np.ones(1), np.zeros(1), first, np.full(1, 200))
    # A request reported as it starts and again as it ends (the gateway's `start` / `end`), running across the
    # tick: the fleet's open requests and `_finish_open`. Left out, they compiled at the first `end` of a live run
    # (seconds on a loaded box, measured 6 s at a load test's first burst), and the tick that read it came late.
    start, end = np.array([PHASE_START]), np.array([PHASE_END])
    agent.ingest(first, np.full(1, 30.0), np.zeros(1), np.zeros(1), first, np.zeros(1, np.int64), start)
    agent.tick(60.0, one, one)
    agent.desired(60.0, agent.startup_s() + 1.0, one)  # the model runs the open request from here
    agent.ingest(first, np.full(1, 30.0), np.full(1, 40.0), np.zeros(1), first, np.full(1, 200), end)
    agent.desired(61.0, agent.startup_s() + 1.0, one)
