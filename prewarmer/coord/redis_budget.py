"""The auction of `prewarmer.coord.auction.allocate`, shared by several sidecar replicas through Redis.

Each replica owns a shard of the functions and bids for its own instances every control tick with one
`submit()`. One Lua script, run atomically by Redis, stores the replica's bids, drops the replicas whose
TTL ran out, gathers the bids of every live replica, runs the same greedy as `allocate` over all of them
(same order and tie-breaks, same fit checks with the same 1e-9 tolerance, the same float additions in the
same order, so the results are bit-identical), stores every replica's awards and returns the caller's.
Because the whole auction is one script, no interleaving of replicas can award more than the capacity or
a tenant's quota: the stored awards are always one consistent allocation.

Key layout (`<prefix>` defaults to `prewarmer:budget`; the braces around `<domain>` are literal: a hash tag,
so all keys of a domain share one cluster slot, as they must since the script reaches the other replicas'
keys by name):

    <prefix>:{<domain>}:replicas     ZSET  member = replica id, score = expiry in ms of Redis's own clock
                                           (TIME); expired members are dropped by every script call. The
                                           key itself expires with its last member.
    <prefix>:{<domain>}:bids:<id>    STRING  the replica's last bids (MessagePack, see `_encode_bids`),
                                             PX ttl_ms: a replica that stops renewing loses its bids.
    <prefix>:{<domain>}:award:<id>   STRING  the replica's current award, MessagePack map function ->
                                             instances (only > 0), rewritten by every replica's submit,
                                             expiring (PXAT) with the replica's registration.
    <prefix>:{<domain>}:held:<id>    STRING  the award the replica was last *told* (same format), written only
                                             by its own submit. Decommitment is measured against it and not
                                             against `award:<id>`, which another replica's submit may have
                                             already cut: what the replica lost is what it was told minus
                                             what it gets now.

Bids travel as one MessagePack blob built with numpy (no msgpack package needed in Python) and already
sorted by the auction order (value desc, rank asc, function name asc), so the script merges the live
replicas' sorted lists in O(bids × replicas) instead of sorting in Lua (Redis is blocked while a script
runs: about 1.3 ms for 2,000 bids from one replica, 2.6 ms for 2 × 2,000). Function names compare bytewise
(UTF-8), Python's `str` order; in Lua that comparison runs only on exact ties of value and rank.

Function names must be unique across the replicas of a domain (each owns different functions); tenants may
span replicas. Capacity and quotas come from the submitting replica: all replicas of a domain must be
configured alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from prewarmer.coord.auction import Award, Bids
from prewarmer.stream.consumer import client_for

DEFAULT_PREFIX = "prewarmer:budget"

# Shared head of both scripts: Redis's clock in ms, and dropping the replicas whose registration expired
# (their keys expire by themselves too; deleting them here keeps the registry and the keys in step).
_PURGE = """
local base = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(dead) do
  redis.call('DEL', base .. ':bids:' .. id, base .. ':award:' .. id, base .. ':held:' .. id)
end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
"""

# KEYS: registry, my bids, my held. ARGV: key base, replica id, ttl ms, bids blob, capacity,
# then (tenant, quota) pairs. Returns {price, used, {tenant, used, ...}, {func, n, ...}, {func, held, ...}};
# floats as '%.17g' strings because Redis would truncate Lua numbers to integers.
_SUBMIT = _PURGE + """
local me, ttl = ARGV[2], tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, me)
local cap = tonumber(ARGV[5])
local quota, tused = {}, {}
for i = 6, #ARGV, 2 do
  quota[ARGV[i]] = tonumber(ARGV[i + 1])
  tused[ARGV[i]] = 0.0
end

local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local reps = {}
local last_expiry = 0
for i = 1, #live, 2 do
  local id, expiry = live[i], live[i + 1]
  local blob = ARGV[4]
  if id ~= me then blob = redis.call('GET', base .. ':bids:' .. id) end
  -- A registered replica without bids (its key just expired) bids for nothing.
  local b = blob and cmsgpack.unpack(blob) or {{}, {}, {}, {}, {}, {}, {}, {}}
  reps[#reps + 1] = {id = id, expiry = expiry, names = b[1], limit = b[2], tenants = b[3], func = b[4],
                     rank = b[5], value = b[6], mem = b[7], tenant = b[8], n = #b[4], pos = 1, count = {}}
  if tonumber(expiry) > last_expiry then last_expiry = tonumber(expiry) end
end

-- Bytewise, as Python compares str (Lua's '<' on strings follows the server's locale).
local function name_lt(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- The order of allocate() is value desc, rank asc, function asc; this decides equal values.
local function tie_before(A, i, B, j)
  local ra, rb = A.rank[i], B.rank[j]
  if ra ~= rb then return ra < rb end
  return name_lt(A.names[A.func[i]], B.names[B.func[j]])
end

local used, price = 0.0, 0.0
local nrep = #reps
while true do
  -- Each replica's list is sorted already: the next bid is the best of the heads (values compared
  -- inline, the rest only on ties: this loop is most of the script's time).
  local best, bi, bv = nil, 0, 0
  for r = 1, nrep do
    local R = reps[r]
    local p = R.pos
    if p <= R.n then
      local v = R.value[p]
      if best == nil or v > bv or (v == bv and tie_before(R, p, best, bi)) then best, bi, bv = R, p, v end
    end
  end
  if best == nil then break end
  best.pos = bi + 1
  local f = best.func[bi]
  local c = best.count[f] or 0
  local lim = best.limit[f]
  if lim < 0 or c < lim then
    local m = best.mem[bi]
    local tk = best.tenant[bi]
    local tn = nil
    if tk > 0 then tn = best.tenants[tk] end
    local q = nil
    if tn then q = quota[tn] end
    if q and tused[tn] + m > q + 1e-9 then
      -- refused for the tenant's quota: not a capacity price
    elseif used + m > cap + 1e-9 then
      if best.value[bi] > price then price = best.value[bi] end
    else
      best.count[f] = c + 1
      used = used + m
      if tn then tused[tn] = (tused[tn] or 0.0) + m end
    end
  end
end

local mine, held = {}, {}
for _, R in ipairs(reps) do
  local award = {}
  for f, c in pairs(R.count) do award[R.names[f]] = c end
  local packed = cmsgpack.pack(award)
  redis.call('SET', base .. ':award:' .. R.id, packed, 'PXAT', R.expiry)
  if R.id == me then
    for name, c in pairs(award) do
      mine[#mine + 1] = name
      mine[#mine + 1] = c
    end
    local old = redis.call('GET', KEYS[3])
    if old then
      for name, c in pairs(cmsgpack.unpack(old)) do
        held[#held + 1] = name
        held[#held + 1] = c
      end
    end
    redis.call('SET', KEYS[3], packed, 'PX', ttl)
  end
end
redis.call('PEXPIREAT', KEYS[1], last_expiry)

local tflat = {}
for name, u in pairs(tused) do
  tflat[#tflat + 1] = name
  tflat[#tflat + 1] = string.format('%.17g', u)
end
return {string.format('%.17g', price), string.format('%.17g', used), tflat, mine, held}
"""

# KEYS: registry. ARGV: key base. Returns {id, {func, n, ...}, ...} for every live replica.
_CURRENT = _PURGE + """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local flat = {}
  local a = redis.call('GET', base .. ':award:' .. id)
  if a then
    for name, c in pairs(cmsgpack.unpack(a)) do
      flat[#flat + 1] = name
      flat[#flat + 1] = c
    end
  end
  out[#out + 1] = id
  out[#out + 1] = flat
end
return out
"""


class BudgetUnavailable(Exception):
    """The shared budget could not be reached or refused the call; no award this tick, retry on the next."""


@dataclass
class ReplicaAward:
    """This replica's share of one auction. `instances` and `decommitted` cover every function it bid for."""

    instances: dict[str, int]
    decommitted: dict[str, int]
    price: float  # value per GB-s of the best bid refused for capacity (0 when everything fitted)
    used_gb: float  # awarded over all live replicas
    tenant_used_gb: dict[str, float] = field(default_factory=dict)  # every tenant with a quota or a bid


@contextlib.contextmanager
def _unavailable_as_error() -> Iterator[None]:
    try:
        yield
    except (RedisError, ConnectionError, TimeoutError) as e:
        raise BudgetUnavailable(f"redis budget unavailable: {type(e).__name__}: {e}") from e


def _text(x: bytes | str) -> str:
    # The client may or may not decode responses.
    return x.decode() if isinstance(x, bytes) else x


# --- MessagePack, just the parts the bids need, vectorized with numpy ---

def _mp_len(n: int, fix: int, b16: int, b32: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    if n < 1 << 16:
        return struct.pack(">BH", b16, n)
    return struct.pack(">BI", b32, n)


def _mp_str(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 1 << 8:
        return struct.pack(">BB", 0xD9, n) + b
    if n < 1 << 16:
        return struct.pack(">BH", 0xDA, n) + b
    return struct.pack(">BI", 0xDB, n) + b


def _mp_strs(items: Sequence[str]) -> bytes:
    return _mp_len(len(items), 0x90, 0xDC, 0xDD) + b"".join(_mp_str(s) for s in items)


_INT32 = np.dtype([("tag", "u1"), ("v", ">i4")])
_FLOAT64 = np.dtype([("tag", "u1"), ("v", ">f8")])


def _mp_numbers(a: np.ndarray, dtype: np.dtype, tag: int) -> bytes:
    out = np.empty(len(a), dtype)
    out["tag"] = tag
    out["v"] = a
    return _mp_len(len(a), 0x90, 0xDC, 0xDD) + out.tobytes()


def _encode_bids(functions: Sequence[str], rank: Sequence[int], value: Sequence[float], mem_gb: Sequence[float],
                 tenant: Sequence[str | None], max_instances: dict[str, int] | None) -> tuple[bytes, list[str],
                                                                                          np.ndarray]:
    """The blob the script reads: [names, limit per name (-1 = none), tenant names, then per bid, in auction
    order: name index, rank, value, mem, tenant index (0 = none)], indices 1-based for Lua. Also returns the
    names and the number of bids per name (what the replica wants, for decommitment)."""
    n = len(functions)
    if not (len(rank) == len(value) == len(mem_gb) == len(tenant) == n):
        raise ValueError("functions, rank, value, mem_gb and tenant must have the same length")
    value_a = np.asarray(value, np.float64).reshape(n)
    mem_a = np.asarray(mem_gb, np.float64).reshape(n)
    rank_a = np.asarray(rank, np.int64).reshape(n)
    if np.isnan(value_a).any() or np.isnan(mem_a).any():
        raise ValueError("bid values and memory must not be NaN")
    if n and (rank_a.min() < -(1 << 31) or rank_a.max() >= 1 << 31):
        raise ValueError("ranks must fit in 32 bits")
    names = sorted(set(functions))  # str order = UTF-8 byte order, as the script compares
    index = {name: i for i, name in enumerate(names)}
    func_a = np.fromiter((index[f] for f in functions), np.int64, n)
    tenants = sorted({t for t in tenant if t is not None})
    tindex = {t: i + 1 for i, t in enumerate(tenants)}
    tenant_a = np.fromiter((0 if t is None else tindex[t] for t in tenant), np.int64, n)
    limits = max_instances or {}
    limit_a = np.array([limits.get(name, -1) for name in names], np.int64)
    order = np.lexsort((func_a, rank_a, -value_a))
    blob = b"".join((
        b"\x98",  # array of 8
        _mp_strs(names),
        _mp_numbers(limit_a, _INT32, 0xD2),
        _mp_strs(tenants),
        _mp_numbers(func_a[order] + 1, _INT32, 0xD2),
        _mp_numbers(rank_a[order], _INT32, 0xD2),
        _mp_numbers(value_a[order], _FLOAT64, 0xCB),
        _mp_numbers(mem_a[order], _FLOAT64, 0xCB),
        _mp_numbers(tenant_a[order], _INT32, 0xD2),
    ))
    return blob, names, np.bincount(func_a, minlength=len(names))


class RedisBudget:
    """One replica's seat in the shared auction of a budget domain (one per cluster or pool of memory).

    Call `submit()` once per control tick, well within `ttl_ms`: a replica that does not renew within the
    TTL is dropped and its capacity goes to the others. `leave()` on clean shutdown hands it over at once.
    """

    def __init__(self, redis: aioredis.Redis | str, domain: str, capacity_gb: float,
                 tenant_quota_gb: dict[str, float] | None = None, *, replica_id: str, ttl_ms: int = 15000,
                 prefix: str = DEFAULT_PREFIX) -> None:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive")
        self.redis, self._owns_client = client_for(redis)
        self.domain = domain
        self.capacity_gb = float(capacity_gb)
        self.tenant_quota_gb = dict(tenant_quota_gb or {})
        self.replica_id = replica_id
        self.ttl_ms = int(ttl_ms)
        self.base = f"{prefix}:{{{domain}}}"
        self.registry_key = f"{self.base}:replicas"
        # register_script's call reloads the script on NOSCRIPT (a restarted or flushed server).
        self._submit = self.redis.register_script(_SUBMIT)
        self._current = self.redis.register_script(_CURRENT)

    def _key(self, kind: str, replica_id: str | None = None) -> str:
        return f"{self.base}:{kind}:{replica_id or self.replica_id}"

    async def submit(self, functions: list[str], rank: list[int], value: list[float], mem_gb: list[float],
                     tenant: list[str | None], max_instances: dict[str, int] | None = None) -> ReplicaAward:
        """Replace this replica's bids (one row per instance asked for), run the auction over every live
        replica and return this replica's awards. Raises BudgetUnavailable when Redis fails."""
        blob, names, wanted = _encode_bids(functions, rank, value, mem_gb, tenant, max_instances)
        quota_args: list[str] = []
        for name, q in self.tenant_quota_gb.items():
            quota_args += [name, repr(float(q))]
        with _unavailable_as_error():
            reply = await self._submit(
                keys=[self.registry_key, self._key("bids"), self._key("held")],
                args=[self.base, self.replica_id, self.ttl_ms, blob, repr(self.capacity_gb), *quota_args])
        price, used, tflat, mine, held = reply
        got = {_text(mine[i]): int(mine[i + 1]) for i in range(0, len(mine), 2)}
        before = {_text(held[i]): int(held[i + 1]) for i in range(0, len(held), 2)}
        instances = {name: got.get(name, 0) for name in names}
        # As allocate(): awards told last time that are still wanted but not awarded now.
        decommitted = {name: max(min(before.get(name, 0), int(w)) - instances[name], 0)
                       for name, w in zip(names, wanted, strict=True)}
        return ReplicaAward(
            instances=instances, decommitted=decommitted, price=float(_text(price)), used_gb=float(_text(used)),
            tenant_used_gb={_text(tflat[i]): float(_text(tflat[i + 1])) for i in range(0, len(tflat), 2)})

    async def current(self) -> dict[str, dict[str, int]]:
        """Awards of every live replica: replica id -> function -> instances (functions with 0 left out)."""
        with _unavailable_as_error():
            reply = await self._current(keys=[self.registry_key], args=[self.base])
        return {_text(reply[i]): {_text(flat[j]): int(flat[j + 1]) for j in range(0, len(flat), 2)}
                for i in range(0, len(reply), 2) for flat in (reply[i + 1],)}

    async def leave(self) -> None:
        """Withdraw this replica's bids and awards at once (clean shutdown); the others get the capacity on
        their next submit instead of after the TTL."""
        with _unavailable_as_error():
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(self.registry_key, self.replica_id)
            pipe.delete(self._key("bids"), self._key("award"), self._key("held"))
            await pipe.execute()

    async def close(self) -> None:
        """Close the client if this object made it from a URL."""
        if self._owns_client:
            await self.redis.aclose()


class RedisAllocator:
    """`prewarmer.platform.Allocator` over a `RedisBudget` seat, for a tick run in a worker thread while the
    event loop that owns the Redis client runs `submit` (the sidecar ticks its shards that way).

    `names` / `tenants` map the policy's function indices to the names the shared auction knows. A failed
    or late submit gives None (the policy keeps its last awards) and is kept in `error`."""

    def __init__(self, budget: RedisBudget, names: Sequence[str], tenants: Sequence[str | None],
                 loop: asyncio.AbstractEventLoop, timeout_s: float = 10.0) -> None:
        self.budget, self.names, self.tenants, self.loop = budget, list(names), list(tenants), loop
        self.timeout_s = timeout_s
        self.error: Exception | None = None
        self.last: ReplicaAward | None = None

    def allocate(self, bids: Bids, n_functions: int, capacity_gb: float, held: np.ndarray) -> Award | None:
        f = np.asarray(bids.func, np.int64).tolist()
        coro = self.budget.submit([self.names[i] for i in f], np.asarray(bids.rank).tolist(),
                                  np.asarray(bids.value, np.float64).tolist(),
                                  np.asarray(bids.mem_gb, np.float64).tolist(), [self.tenants[i] for i in f])
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            got = fut.result(self.timeout_s)
        except (BudgetUnavailable, TimeoutError) as e:
            fut.cancel()
            self.error = e
            return None
        self.last = got
        instances = np.array([got.instances.get(n, 0) for n in self.names[:n_functions]], np.int64)
        decommitted = np.array([got.decommitted.get(n, 0) for n in self.names[:n_functions]], np.int64)
        return Award(instances=instances, accepted=np.zeros(0, bool), price=got.price, decommitted=decommitted,
                     used_gb=got.used_gb, tenant_used_gb=np.zeros(0))
