"""The sidecar's control loop: own shards, read events, decide per shard, scale, checkpoint with the acks.

Exactly-once effect on agent state: a shard's events are acknowledged in the same MULTI/EXEC
transaction that stores the shard's checkpoint, so after a crash the restarted (or another)
replica loads a checkpoint that counted precisely the acknowledged events, and the unacknowledged
ones are delivered again. When Redis or the platform is unreachable the loop keeps running, holds
the last setting it applied and says so in its metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from prewarmer.actuators.base import Actuator, ActuatorAuthError, ActuatorError, FunctionStatus
from prewarmer.coord.redis_budget import BudgetUnavailable, RedisAllocator, RedisBudget
from prewarmer.policies.base import Policy
from prewarmer.sidecar.agent import Decision, ShardAgent
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.record import DecisionRecorder
from prewarmer.sidecar.timescale import TimeScale
from prewarmer.stream.consumer import RedisEventSource, StreamUnavailable
from prewarmer.stream.keys import DEFAULT_PREFIX, DEFAULT_SHARDS, shard_of, stream_key
from prewarmer.stream.shards import ShardLeases

logger = logging.getLogger("prewarmer.sidecar")


@dataclass
class SidecarOptions:
    replica_id: str
    prefix: str = DEFAULT_PREFIX
    n_shards: int = DEFAULT_SHARDS
    group: str = "prewarmer"
    interval_s: float = 1.0  # real seconds between loop iterations (the fleet's resolution)
    status_interval_s: float = 5.0  # real seconds between platform status reads
    checkpoint_interval_s: float = 5.0  # real seconds between checkpoints (acks wait for them)
    claim_min_idle_ms: int = 30_000
    lease_ttl_ms: int = 15_000
    batch_size: int = 1000
    max_events_per_iteration: int = 200_000
    time_scale: float = 1.0
    namespace: str | None = None  # only functions of this namespace (None: all)
    policy_spec: str = ""
    record: Path | None = None
    budget_gb: float | None = None  # shared memory budget of `+bid` policies, awarded through Redis
    tenant_quota_gb: dict[str, float] | None = None  # per namespace (tenant)
    # Bad input (docs/bad-input.md): events of a function the platform does not list are dead-lettered
    # ("refuse", the `prewarmer run` default) or tracked ("admit"); either way at most `max_functions`
    # functions are tracked by this replica, and events of any further one are dead-lettered.
    unlisted_functions: str = "admit"
    max_functions: int = 10_000
    list_refresh_s: float = 2.0  # an unlisted function re-reads the platform's list at most this often
    max_ts_skew_s: float | None = 300.0  # events whose ts is further ahead of the Redis clock are dead-lettered


@dataclass
class _ShardSlot:
    agent: ShardAgent
    unacked: list[bytes] = field(default_factory=list)
    # Ids folded in but not yet acked: XAUTOCLAIM may hand them back to us after an outage.
    seen: set[bytes] = field(default_factory=set)
    saved_events: int = -1
    last_sent: dict[int, int] = field(default_factory=dict)
    predicted_warm: np.ndarray | None = None
    desired: np.ndarray | None = None


class Sidecar:
    def __init__(self, opts: SidecarOptions, make_policy: Callable[[], Policy], actuator: Actuator,
                 redis: aioredis.Redis, metrics: SidecarMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.opts = opts
        self.make_policy = make_policy
        self.actuator = actuator
        self.redis = redis
        self.metrics = metrics or SidecarMetrics()
        self.clock = clock
        self.ts = TimeScale(clock(), opts.time_scale)  # replaced by the shared epoch in `start`
        self.source = RedisEventSource(redis, prefix=opts.prefix, n_shards=opts.n_shards, group=opts.group,
                                       consumer=opts.replica_id, batch_size=opts.batch_size, block_ms=None,
                                       claim_min_idle_ms=opts.claim_min_idle_ms, max_ts_skew_s=opts.max_ts_skew_s)
        self.leases = ShardLeases(redis, replica_id=opts.replica_id, n_shards=opts.n_shards, prefix=opts.prefix,
                                  lease_ttl_ms=opts.lease_ttl_ms)
        self.slots: dict[int, _ShardSlot] = {}
        self.status: dict[str, FunctionStatus] = {}
        self.recorder = DecisionRecorder(opts.record) if opts.record else None
        self.last_status = -np.inf
        self.last_checkpoint = -np.inf
        self.last_loop = clock()
        self.redis_ok = True
        self.gateway_ok = True
        self.listed_at = -np.inf  # when the platform's function list was last read successfully
        self.fatal: str | None = None
        self.budget = opts.budget_gb  # shared memory budget (GB) of `+bid` policies, or None
        self.seats: dict[int, RedisBudget] = {}

    # ------------------------------------------------------------------ keys
    def _state_key(self, shard: int) -> str:
        return f"{self.opts.prefix}:state:{self.opts.group}:{shard}"

    # ------------------------------------------------------------------ main loop
    async def start(self) -> None:
        """Adopt the policy clock shared by every replica and restart, so checkpointed times stay valid."""
        key = f"{self.opts.prefix}:epoch:{self.opts.group}"
        await self.redis.set(key, repr(self.clock()), nx=True)
        t0 = float(await self.redis.get(key))
        self.ts = TimeScale(t0, self.opts.time_scale)
        self.last_checkpoint = self.clock()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        log(logger, "sidecar started", replica=self.opts.replica_id, policy=self.opts.policy_spec,
            actuator=self.actuator.kind, shards=self.opts.n_shards, time_scale=self.opts.time_scale)
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                await self.iterate()
                self.metrics.tick_seconds.observe(time.perf_counter() - t0)
                self.last_loop = self.clock()
                if self.fatal:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.opts.interval_s)
                except TimeoutError:
                    pass
        finally:
            await self.shutdown()

    async def iterate(self) -> None:
        """One loop iteration: ownership, events, platform status, decisions, scaling, checkpoints."""
        real = self.clock()
        now = self.ts.policy(real)
        if not await self._own_shards(now):
            self._set_holding()
            return
        await self._read_events(now)
        if real - self.last_status >= self.opts.status_interval_s:
            await self._read_status(now)
            await self._read_lag()
            self.last_status = real
        await self._decide_and_scale(now)
        if real - self.last_checkpoint >= self.opts.checkpoint_interval_s:
            await self.checkpoint()
            self.last_checkpoint = real
        self._set_holding()

    def _set_holding(self) -> None:
        self.metrics.redis_up.set(1 if self.redis_ok else 0)
        self.metrics.gateway_up.set(1 if self.gateway_ok else 0)
        self.metrics.holding.set(0 if self.redis_ok and self.gateway_ok else 1)

    def _redis_down(self, what: str, err: Exception) -> None:
        if self.redis_ok:
            log(logger, "redis unavailable, holding last settings", logging.WARNING, during=what, error=str(err))
        self.redis_ok = False

    def _redis_back(self) -> None:
        if not self.redis_ok:
            log(logger, "redis reachable again")
        self.redis_ok = True

    async def _own_shards(self, now: float) -> bool:
        try:
            owned = await self.leases.rebalance()
        except (StreamUnavailable, RedisError, OSError) as e:
            self._redis_down("lease renewal", e)
            return False
        self._redis_back()
        for shard in list(self.slots):
            if shard not in owned:
                # Lost or handed over: the next owner resumes from the last checkpoint and gets our unacked events.
                del self.slots[shard]
                seat = self.seats.pop(shard, None)
                if seat is not None:  # its bids and awards go with it; the new owner bids afresh
                    with contextlib.suppress(BudgetUnavailable):
                        await seat.leave()
                log(logger, "shard released", shard=shard)
        gained = [s for s in sorted(owned) if s not in self.slots]
        if gained:
            try:
                await self.source.ensure_groups(gained)
                blobs = await self.redis.mget([self._state_key(s) for s in gained])
            except (StreamUnavailable, RedisError, OSError) as e:
                self._redis_down("shard acquisition", e)
                return False
            for shard, blob in zip(gained, blobs, strict=True):
                self.slots[shard] = _ShardSlot(self._restore(shard, blob, now))
        self.metrics.shards.set(len(self.slots))
        return True

    def _restore(self, shard: int, blob: bytes | None, now: float) -> ShardAgent:
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
        return ShardAgent(shard, self.make_policy, self.ts.t0)

    async def _read_events(self, now: float) -> None:
        shards = sorted(self.slots)
        if not shards:
            return
        total = 0
        while total < self.opts.max_events_per_iteration:
            try:
                batch = await self.source.read(shards)
            except (StreamUnavailable, RedisError, OSError) as e:
                self._redis_down("read", e)
                return
            self._redis_back()
            if batch.rejected:
                self.metrics.dead.inc(len(batch.rejected))
                for entry_id, _, err in batch.rejected:
                    log(logger, "malformed event dead-lettered", logging.WARNING, id=entry_id.decode(), error=str(err))
            if len(batch) == 0:
                break
            total += len(batch)
            self._route(batch, now, await self._screen(batch, now))
        self.metrics.pending.set(sum(len(s.unacked) for s in self.slots.values()))

    def _tracked(self) -> int:
        return sum(len(slot.agent.names) for slot in self.slots.values())

    async def _screen(self, batch, now: float) -> set[int]:
        """Rows of `batch` not to route: events of a function this replica does not track yet and must not
        start tracking. A function the platform does not list (with `unlisted_functions="refuse"`, after
        re-reading the list if it is older than `list_refresh_s`), or one past `max_functions`, is refused:
        its events go to the dead-letter stream with the reason (acked with it). While the platform's list
        cannot be read, such events are held: left pending, they come back through XAUTOCLAIM later."""
        def untracked(name: str) -> bool:
            slot = self.slots.get(shard_of(name, self.opts.n_shards))
            return slot is not None and name not in slot.agent.index

        new = {name for name in set(batch.function) if untracked(name)}  # usually empty: one set per batch
        if not new:
            return set()
        rows: dict[str, list[int]] = {}
        for r, name in enumerate(batch.function):
            if name in new and self._wanted(batch.namespace[r]) and \
                    batch.ids[r] not in self.slots[shard_of(name, self.opts.n_shards)].seen:
                rows.setdefault(name, []).append(r)
        if not rows:
            return set()
        refuse = self.opts.unlisted_functions == "refuse"
        if refuse and any(n not in self.status for n in rows) and \
                self.clock() - self.listed_at >= self.opts.list_refresh_s:
            await self._read_status(now)  # a new function may just have been deployed
        room = self.opts.max_functions - self._tracked()
        skip: set[int] = set()
        refused: list[int] = []
        reasons: list[str] = []
        held = 0
        for name in sorted(rows):
            if not untracked(name):
                continue  # registered meanwhile from the platform's list
            if refuse and name not in self.status:
                if not self.gateway_ok or self.listed_at == -np.inf:
                    skip.update(rows[name])  # the list is unknown: cannot judge now
                    held += len(rows[name])
                    continue
                reason = f"function {name!r} is not listed by the platform ({self.actuator.kind})"
            elif room <= 0:
                reason = (f"function {name!r} refused: this replica already tracks {self.opts.max_functions} "
                          f"functions (max_functions)")
            else:
                room -= 1
                continue
            refused += rows[name]
            reasons += [reason] * len(rows[name])
        if held:
            log(logger, "events of unlisted functions held until the platform's list can be read", logging.WARNING,
                events=held)
        if refused:
            skip.update(refused)
            try:
                await self.source.dead_letter_rows(batch, refused, reasons)
            except (StreamUnavailable, RedisError, OSError) as e:
                self._redis_down("dead letter", e)  # left pending: re-delivered and judged again
                return skip
            self.metrics.dead.inc(len(refused))
            names = sorted({batch.function[r] for r in refused})
            log(logger, "events refused and dead-lettered", logging.WARNING, events=len(refused),
                functions=len(names), first=names[0][:64], reason=reasons[0][:200])
        return skip

    def _route(self, batch, now: float, skip: set[int] = frozenset()) -> None:
        fn = batch.function
        shard = np.fromiter((shard_of(f, self.opts.n_shards) for f in fn), np.int64, len(fn))
        ts = np.asarray(batch.ts)
        dur = np.asarray(batch.duration_ms) / 1000.0 * self.opts.time_scale
        st = np.asarray(batch.startup_ms) / 1000.0 * self.opts.time_scale
        cold = np.asarray(batch.cold, np.int64)
        status = np.asarray(batch.status, np.int64)
        ids = batch.ids
        for s in np.unique(shard).tolist():
            slot = self.slots.get(s)
            rows = np.flatnonzero(shard == s)
            if slot is None:
                continue  # a shard we no longer own: leave unacked, its owner gets it
            fresh = [r for r in rows.tolist() if ids[r] not in slot.seen and r not in skip]
            slot.unacked += [ids[r] for r in fresh]
            slot.seen.update(ids[r] for r in fresh)
            keep = [r for r in fresh if self._wanted(batch.namespace[r])]
            if not keep:
                continue
            agent = slot.agent
            names = [fn[r] for r in keep]
            unknown = sorted({n for n in names if n not in agent.index})
            if unknown:
                ns = {fn[r]: batch.namespace[r] for r in keep}
                agent.add_functions(now, unknown, [ns[n] for n in unknown],
                                    [self._memory(n) for n in unknown])
            k = np.asarray(keep)
            idx = np.fromiter((agent.index[n] for n in names), np.int64, len(names))
            agent.ingest(idx, self.ts.policy(ts[k]), dur[k], st[k], cold[k], status[k])
            self.metrics.events.inc(len(keep))

    async def _read_lag(self) -> None:
        try:
            self.metrics.lag.set(await self.source.lag(sorted(self.slots)))
        except (StreamUnavailable, RedisError, OSError) as e:
            self._redis_down("lag", e)

    def _wanted(self, namespace: str) -> bool:
        return self.opts.namespace is None or namespace == self.opts.namespace

    def _memory(self, name: str) -> float | None:
        st = self.status.get(name)
        return st.memory_mb if st else None

    async def _read_status(self, now: float) -> None:
        try:
            statuses = await self.actuator.list_functions()
        except ActuatorAuthError as e:
            self._auth_failed(e)
            return
        except ActuatorError as e:
            self.metrics.actuator_errors.labels(type(e).__name__).inc()
            if self.gateway_ok:
                log(logger, "platform unavailable, holding last settings", logging.WARNING, error=str(e))
            self.gateway_ok = False
            return
        if not self.gateway_ok:
            log(logger, "platform reachable again")
        self.gateway_ok = True
        self.listed_at = self.clock()
        self.status = {s.name: s for s in statuses if self._wanted(s.namespace)}
        by_shard: dict[int, list[FunctionStatus]] = {}
        for st in self.status.values():
            by_shard.setdefault(shard_of(st.name, self.opts.n_shards), []).append(st)
        room = self.opts.max_functions - self._tracked()
        for shard, slot in self.slots.items():
            new = [st for st in by_shard.get(shard, []) if st.name not in slot.agent.index]
            if len(new) > max(room, 0):
                log(logger, "function cap reached, listed functions left untracked", logging.WARNING,
                    shard=shard, untracked=len(new) - max(room, 0), max_functions=self.opts.max_functions)
                new = new[:max(room, 0)]
            room -= len(new)
            if new:
                slot.agent.add_functions(now, [s.name for s in new], [s.namespace for s in new],
                                         [s.memory_mb for s in new])
                # Replicas already warm when we first see a function count as just used, so the
                # policy's keep-alive decides their fate rather than an abrupt release at start.
                idx = np.array([slot.agent.index[st.name] for st in new])
                slot.agent.fleet.adopt(idx, np.array([st.available_replicas for st in new]), now)
                slot.last_sent.update({int(i): st.replicas for i, st in zip(idx, new, strict=True)})
        self.metrics.functions.set(sum(len(s.agent.names) for s in self.slots.values()))

    def _auth_failed(self, e: ActuatorAuthError) -> None:
        self.metrics.actuator_errors.labels("ActuatorAuthError").inc()
        self.gateway_ok = False
        self.fatal = f"the platform refused the credentials: {e}"
        log(logger, "stopping: credentials refused", logging.ERROR, error=str(e))

    async def _decide_and_scale(self, now: float) -> None:
        interval = self.ts.seconds(self.opts.interval_s)
        if self.budget is None:
            ticks = self._tick_shards(now, interval, None)
        else:
            # A bidding tick waits for the shared auction in Redis: run the ticks in a worker thread so that
            # the event loop (which owns the Redis client) can run the submits meanwhile.
            ticks = await asyncio.to_thread(self._tick_shards, now, interval, asyncio.get_running_loop())
        wanted = 0
        for slot, decision, desired, allocator in ticks:
            if decision is not None:
                self._score(slot, decision, desired)
            if allocator is not None:
                if allocator.error is not None:
                    self._redis_down("budget", allocator.error)
                elif allocator.last is not None:
                    self.metrics.budget_used.set(allocator.last.used_gb)
                    self.metrics.budget_price.set(allocator.last.price)
            slot.desired = desired
            wanted += int(desired.sum())
        self.metrics.desired.set(wanted)
        requests = self._scale_requests()
        if not requests or self.fatal:
            return
        if not self.gateway_ok and self.clock() - self.last_status < self.opts.status_interval_s:
            return  # platform down: hold the last setting until the next status read says it is back
        results = await asyncio.gather(*(self._scale(slot, i, n) for slot, i, n in requests))
        self.metrics.scale_requests.inc(sum(1 for r in results if r))

    def _tick_shards(self, now: float, interval: float, loop: asyncio.AbstractEventLoop | None) -> list[tuple]:
        """Every owned shard's tick (`ShardAgent.tick`, i.e. `prewarmer.platform.tick`) and desired counts."""
        out = []
        for shard, slot in self.slots.items():
            agent = slot.agent
            if not agent.names:
                continue
            replicas = np.array([self.status[n].replicas if n in self.status else 0 for n in agent.names])
            ready = np.array([self.status[n].available_replicas if n in self.status else 0 for n in agent.names])
            allocator = None
            if loop is not None:
                allocator = RedisAllocator(self._seat(shard), agent.names, agent.namespaces, loop)
            decision = agent.tick(now, replicas, ready, allocator)
            out.append((slot, decision, agent.desired(now, agent.startup_s() + interval), allocator))
        return out

    def _seat(self, shard: int) -> RedisBudget:
        """The shard's own seat in the shared auction: shards move between replicas whole, awards with them."""
        seat = self.seats.get(shard)
        if seat is None:
            opts = self.opts
            seat = self.seats[shard] = RedisBudget(
                self.redis, domain=opts.group, capacity_gb=opts.budget_gb, tenant_quota_gb=opts.tenant_quota_gb,
                replica_id=f"{opts.replica_id}/{shard}", ttl_ms=opts.lease_ttl_ms, prefix=f"{opts.prefix}:budget")
        return seat

    def _scale_requests(self) -> list[tuple[_ShardSlot, int, int]]:
        out = []
        for slot in self.slots.values():
            d = slot.desired
            if d is None or not len(d):
                continue
            sent = np.array([slot.last_sent.get(j, -1) for j in range(len(d))])
            out += [(slot, int(i), int(d[i])) for i in np.flatnonzero(d != sent)]
        return out

    async def _scale(self, slot: _ShardSlot, i: int, n: int) -> bool:
        agent = slot.agent
        name, ns = agent.names[i], agent.namespaces[i]
        try:
            outcome = await self.actuator.scale(name, ns, n)
        except ActuatorAuthError as e:
            self._auth_failed(e)
            return False
        except ActuatorError as e:
            self.metrics.actuator_errors.labels(type(e).__name__).inc()
            log(logger, "scale failed", logging.WARNING, function=name, replicas=n, error=str(e))
            return False
        slot.last_sent[i] = n
        if self.recorder:
            self.recorder.scale(self.clock(), name, ns, n, outcome.applied, outcome.note)
        if outcome.note:
            log(logger, "scale adjusted", function=name, requested=n, applied=outcome.applied, note=outcome.note)
        return outcome.applied is not None

    def _score(self, slot: _ShardSlot, decision: Decision, desired: np.ndarray) -> None:
        counts = decision.actions.counts()
        for verb, k in counts.items():
            if k:
                self.metrics.decisions.labels(verb).inc(k)
        invoked = decision.obs.arrivals > 0
        prev = slot.predicted_warm
        if prev is not None and len(prev) == len(invoked):
            for outcome, mask in (("hit", prev & invoked), ("miss", ~prev & invoked),
                                  ("false_alarm", prev & ~invoked), ("idle", ~prev & ~invoked)):
                self.metrics.predictions.labels(outcome).inc(int(mask.sum()))
        slot.predicted_warm = desired > 0
        events = getattr(decision.actions, "events", None) or getattr(slot.agent.policy, "events", None)
        if isinstance(events, list) and events:
            self.metrics.fallbacks.inc(len(events))
            for e in events:
                log(logger, "online fallback", shard=slot.agent.shard, detail=e)
            events.clear()
        if self.recorder:
            self.recorder.decision(self.clock(), slot.agent, decision, desired)

    # ------------------------------------------------------------------ checkpoints
    async def checkpoint(self) -> None:
        """Store every shard's state and acknowledge its events in one transaction per shard."""
        for shard, slot in list(self.slots.items()):
            ids = slot.unacked
            if not ids and slot.agent.events == slot.saved_events:
                continue
            blob = slot.agent.dumps()
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.set(self._state_key(shard), blob)
                    if ids:
                        pipe.xack(stream_key(shard, self.opts.prefix), self.opts.group, *ids)
                    await pipe.execute()
            except (RedisError, OSError) as e:
                self._redis_down("checkpoint", e)
                return
            slot.unacked = []
            slot.seen.clear()
            slot.saved_events = slot.agent.events
            self.metrics.checkpoints.inc()
        self.metrics.pending.set(sum(len(s.unacked) for s in self.slots.values()))

    async def shutdown(self) -> None:
        if self.redis_ok:
            await self.checkpoint()
            try:
                await self.leases.release_all()
            except (StreamUnavailable, RedisError, OSError):
                pass
        if self.redis_ok:
            for seat in self.seats.values():
                with contextlib.suppress(Exception):
                    await seat.leave()
        if self.recorder:
            self.recorder.close()
        log(logger, "sidecar stopped", replica=self.opts.replica_id,
            events=sum(s.agent.events for s in self.slots.values()))

    # ------------------------------------------------------------------ probes
    def health(self) -> tuple[bool, str]:
        stale = self.clock() - self.last_loop
        if self.fatal:
            return False, self.fatal
        limit = max(10 * self.opts.interval_s, 30.0)
        return (stale < limit, f"last loop {stale:.1f}s ago")

    def ready(self) -> tuple[bool, str]:
        if not self.redis_ok:
            return False, "redis unavailable"
        return True, f"{len(self.slots)} shards"
