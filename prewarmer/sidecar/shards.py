"""Shard ownership: the leases, the shards gained (restored from their checkpoints) and lost, and the checkpoints.

Exactly-once effect on agent state: a shard's events are acknowledged in the same MULTI/EXEC transaction that
stores the shard's checkpoint, so after a crash the restarted (or another) replica loads a checkpoint that
counted precisely the acknowledged events, and the unacknowledged ones are delivered again.
"""

from __future__ import annotations

import logging
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
        return ShardAgent(shard, self.make_policy, epoch_s)

    async def checkpoint(self) -> None:
        """Store every shard's state and acknowledge its events in one transaction per shard."""
        for shard, slot in list(self.slots.items()):
            ids = slot.unacked
            if not ids and slot.agent.events == slot.saved_events:
                continue
            blob = slot.agent.dumps()
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.set(self.state_key(shard), blob)
                    if ids:
                        pipe.xack(stream_key(shard, self.opts.prefix), self.opts.group, *ids)
                    await pipe.execute()
            except (RedisError, OSError) as e:
                self.reachability.redis_down("checkpoint", e)
                return
            slot.unacked = []
            slot.seen.clear()
            slot.saved_events = slot.agent.events
            self.metrics.checkpoints.inc()
        self.metrics.pending.set(self.slots.unacked())

    async def release_leases(self) -> None:
        """On shutdown: the other replicas take the shards over now rather than after the lease TTL."""
        try:
            await self.leases.release_all()
        except (StreamUnavailable, RedisError, OSError):
            pass
