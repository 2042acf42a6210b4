"""Each owned shard's seat in the memory budget auction that `+bid` policies share through Redis.

Shards move between replicas whole, so a seat belongs to a shard ("<replica>/<shard>"), not to the replica:
when a shard goes, its bids and awards go with it and its next owner bids afresh.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from prewarmer.coord.redis_budget import BudgetUnavailable, RedisBudget

if TYPE_CHECKING:
    from prewarmer.sidecar.run import SidecarOptions


class BudgetSeats:
    def __init__(self, redis: aioredis.Redis, opts: SidecarOptions) -> None:
        self.redis = redis
        self.opts = opts
        self.by_shard: dict[int, RedisBudget] = {}

    def seat(self, shard: int) -> RedisBudget:
        """The shard's seat, taken at its first bid."""
        seat = self.by_shard.get(shard)
        if seat is None:
            opts = self.opts
            seat = self.by_shard[shard] = RedisBudget(
                self.redis, domain=opts.group, capacity_gb=opts.budget_gb, tenant_quota_gb=opts.tenant_quota_gb,
                replica_id=f"{opts.replica_id}/{shard}", ttl_ms=opts.lease_ttl_ms, prefix=f"{opts.prefix}:budget")
        return seat

    async def leave(self, shard: int) -> None:
        """Give up a lost shard's seat; if Redis cannot be told, the seat's TTL frees it."""
        seat = self.by_shard.pop(shard, None)
        if seat is not None:
            with contextlib.suppress(BudgetUnavailable):
                await seat.leave()

    async def leave_all(self) -> None:
        """On shutdown: hand every seat's capacity to the other replicas now rather than after the TTL."""
        for seat in self.by_shard.values():
            with contextlib.suppress(Exception):
                await seat.leave()
