"""Split the event shards among the live sidecar replicas, with nothing but Redis.

Each replica heartbeats into a sorted set (`{prefix}:replicas`, member = replica id, score = expiry
in Redis's own clock) and owns a shard while it holds the lease key `{prefix}:lease:{shard}` (value =
replica id, PX ttl). Leases are taken with SET NX PX and renewed or released only through Lua
compare-and-set scripts, so a key never names two owners and nobody can extend or drop a lease it
lost. All TTLs are Redis's: no local clock decides ownership.

Calling `rebalance()` every third of the lease TTL or so keeps the leases alive and converges: with
`live` replicas each aims for ceil(n_shards / live) shards, gives back its highest-numbered surplus,
and fills up from the free shards, starting at an offset given by its rank among the live ids (so
replicas reach for different shards first). A dead replica's heartbeat and leases expire, the
others count one replica fewer and take its shards.

Ownership returned by `rebalance()` is safe until the lease TTL has passed since that call; a
replica that cannot reach Redis must stop processing its shards by then. What it writes for a shard
goes through `fenced_checkpoint`, which Redis applies only while the lease is still the writer's, so
a replica that stalled past its TTL (GC, swap, a stopped process) cannot overwrite the state of the
shard's next owner or acknowledge events the next owner has not counted yet. A lease found lost is
not taken back in the same `rebalance()` call: its holder first drops the shard (and the in-memory
state it had) and restores it afresh from the checkpoint if it gets it again later.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from prewarmer.stream.consumer import client_for, unavailable_as_error
from prewarmer.stream.keys import DEFAULT_PREFIX, DEFAULT_SHARDS

# Register (or refresh) this replica and drop the expired ones; returns the live ids, sorted.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# Extend each lease still held by ARGV[1]; 1 per key renewed, 0 per key lost.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# Store a shard's checkpoint and acknowledge the events it counts, atomically, only while ARGV[1] holds the
# lease KEYS[1]: KEYS = lease, state, stream; ARGV = holder, state blob, group, entry ids...; 1 if written.
_FENCED_CHECKPOINT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
for i = 4, #ARGV, 1000 do
  redis.call('XACK', KEYS[3], ARGV[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
"""

# Delete each lease held by ARGV[1], and leave the others alone.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


class ShardLeases:
    """Lease-based shard ownership for one replica; `owned` is the set from the last `rebalance()`."""

    def __init__(self, redis: str | aioredis.Redis, replica_id: str, n_shards: int = DEFAULT_SHARDS,
                 prefix: str = DEFAULT_PREFIX, lease_ttl_ms: int = 10_000, heartbeat_ttl_ms: int | None = None) -> None:
        self.redis, self._owns_client = client_for(redis)
        self.replica_id = replica_id
        self.n_shards = n_shards
        self.prefix = prefix
        self.lease_ttl_ms = lease_ttl_ms
        self.heartbeat_ttl_ms = heartbeat_ttl_ms or lease_ttl_ms
        self.registry_key = f"{prefix}:replicas"
        self._id = replica_id.encode()
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._checkpoint = self.redis.register_script(_FENCED_CHECKPOINT)
        self.owned: set[int] = set()

    def lease_key(self, shard: int) -> str:
        return f"{self.prefix}:lease:{shard}"

    async def rebalance(self) -> set[int]:
        """Heartbeat, renew, give back surplus, take free shards up to the fair share; the shards owned now.

        Raises StreamUnavailable when Redis cannot be reached (`owned` is then left as it was).
        """
        with unavailable_as_error():
            live = await self._heartbeat(keys=[self.registry_key], args=[self.replica_id, self.heartbeat_ttl_ms])
            owned = await self._renew_owned()
            lost = self.owned - owned
            n_live = max(1, len(live))
            target = math.ceil(self.n_shards / n_live)
            if len(owned) > target:
                surplus = sorted(owned)[target:]
                await self._release(keys=[self.lease_key(s) for s in surplus], args=[self.replica_id])
                owned.difference_update(surplus)
            elif len(owned) < target:
                rank = live.index(self._id) if self._id in live else 0
                owned |= await self._acquire(target - len(owned), start=rank * self.n_shards // n_live, skip=lost)
        self.owned = owned
        return set(owned)

    async def fenced_checkpoint(self, shard: int, state_key: str, state: bytes, stream: str, group: str,
                                ids: list[bytes]) -> bool:
        """Store `state` at `state_key` and XACK `ids` on `stream` for `group`, in one atomic step, only if this
        replica still holds the shard's lease; False (nothing written, and the shard is no longer owned) if not.

        Raises StreamUnavailable when Redis cannot be reached."""
        with unavailable_as_error():
            ok = await self._checkpoint(keys=[self.lease_key(shard), state_key, stream],
                                        args=[self.replica_id, state, group, *ids])
        if not ok:
            self.owned.discard(shard)
        return bool(ok)

    async def release_all(self) -> None:
        """Leave: give back every lease and deregister, so the others take over without waiting for TTLs."""
        with unavailable_as_error():
            keys = [self.lease_key(s) for s in range(self.n_shards)]
            await self._release(keys=keys, args=[self.replica_id])
            await self.redis.zrem(self.registry_key, self.replica_id)
        self.owned = set()

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def _renew_owned(self) -> set[int]:
        if not self.owned:
            return set()
        shards = sorted(self.owned)
        kept = await self._renew(keys=[self.lease_key(s) for s in shards], args=[self.replica_id, self.lease_ttl_ms])
        # A lease someone else holds now (ours expired) is dropped at once, never fought over.
        return {s for s, ok in zip(shards, kept, strict=True) if ok}

    async def _acquire(self, want: int, start: int, skip: set[int] = frozenset()) -> set[int]:
        holders = await self.redis.mget([self.lease_key(s) for s in range(self.n_shards)])
        candidates = sorted((s for s, h in enumerate(holders) if h is None and s not in skip),
                            key=lambda s: (s - start) % self.n_shards)
        got: set[int] = set()
        while want > 0 and candidates:
            # Try exactly as many as are missing, so a replica never ends above its share.
            tried, candidates = candidates[:want], candidates[want:]
            pipe = self.redis.pipeline(transaction=False)
            for s in tried:
                pipe.set(self.lease_key(s), self.replica_id, nx=True, px=self.lease_ttl_ms)
            for s, ok in zip(tried, await pipe.execute(), strict=True):
                if ok:
                    got.add(s)
                    want -= 1
        return got
