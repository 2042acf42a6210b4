"""Event intake: read the owned shards' streams, screen out what must not be tracked, route the rest into the
shards' agents.

Screening is the bad-input guard (docs/bad-input.md): malformed events, events of functions the platform does
not list (`unlisted_functions="refuse"`) and of functions past `max_functions` go to the dead-letter stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from redis.exceptions import RedisError

from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.reachability import Reachability
from prewarmer.sidecar.shards import OwnedShards
from prewarmer.sidecar.status import PlatformStatus
from prewarmer.sidecar.timescale import TimeScale
from prewarmer.stream.consumer import RedisEventSource, SourceBatch, StreamUnavailable
from prewarmer.stream.events import PHASE_START
from prewarmer.stream.keys import shard_of

if TYPE_CHECKING:
    from prewarmer.sidecar.run import SidecarOptions

logger = logging.getLogger("prewarmer.sidecar")


class EventIntake:
    def __init__(self, opts: SidecarOptions, source: RedisEventSource, slots: OwnedShards, platform: PlatformStatus,
                 reachability: Reachability, metrics: SidecarMetrics, clock: Callable[[], float]) -> None:
        self.opts = opts
        self.source = source
        self.slots = slots
        self.platform = platform
        self.reachability = reachability
        self.metrics = metrics
        self.clock = clock

    async def read(self, now: float, ts: TimeScale) -> None:
        """Read, screen and route the owned shards' events, at most `max_events_per_iteration` (in whole batches)
        and for at most a third of the lease TTL: the leases are renewed once per loop iteration, and a backlog
        read in one go would let them expire (and the shards move) while this replica is still working on it."""
        shards = sorted(self.slots)
        if not shards:
            return
        total = 0
        deadline = time.monotonic() + self.opts.lease_ttl_ms / 3000
        while total < self.opts.max_events_per_iteration and time.monotonic() < deadline:
            try:
                batch = await self.source.read(shards)
            except (StreamUnavailable, RedisError, OSError) as e:
                self.reachability.redis_down("read", e)
                return
            self.reachability.redis_back()
            if batch.rejected:
                self.metrics.dead.inc(len(batch.rejected))
                for entry_id, _, err in batch.rejected:
                    log(logger, "malformed event dead-lettered", logging.WARNING, id=entry_id.decode(), error=str(err))
            if len(batch) == 0:
                break
            total += len(batch)
            self.route(batch, now, ts, await self.screen(batch, now))
        self.metrics.pending.set(self.slots.unacked())

    async def screen(self, batch: SourceBatch, now: float) -> set[int]:
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
            if name in new and self.platform.manages(batch.namespace[r]) and \
                    batch.ids[r] not in self.slots[shard_of(name, self.opts.n_shards)].seen:
                rows.setdefault(name, []).append(r)
        if not rows:
            return set()
        refuse = self.opts.unlisted_functions == "refuse"
        if refuse and any(n not in self.platform.functions for n in rows) and \
                self.clock() - self.platform.listed_at >= self.opts.list_refresh_s:
            await self.platform.read(now)  # a new function may just have been deployed
        room = self.opts.max_functions - self.slots.functions()
        skip: set[int] = set()
        refused: list[int] = []
        reasons: list[str] = []
        held = 0
        for name in sorted(rows):
            if not untracked(name):
                continue  # registered meanwhile from the platform's list
            if refuse and name not in self.platform.functions:
                if not self.reachability.gateway_ok or self.platform.listed_at == -np.inf:
                    skip.update(rows[name])  # the list is unknown: cannot judge now
                    held += len(rows[name])
                    continue
                reason = f"function {name!r} is not listed by the platform ({self.platform.actuator.kind})"
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
                self.reachability.redis_down("dead letter", e)  # left pending: re-delivered and judged again
                return skip
            self.metrics.dead.inc(len(refused))
            names = sorted({batch.function[r] for r in refused})
            log(logger, "events refused and dead-lettered", logging.WARNING, events=len(refused),
                functions=len(names), first=names[0][:64], reason=reasons[0][:200])
        return skip

    def route(self, batch: SourceBatch, now: float, ts: TimeScale, skip: set[int] = frozenset()) -> None:
        """Fold the fresh rows of owned shards (not seen before, not in `skip`) into their agents, registering the
        functions met for the first time; fresh rows of other namespaces too are acked with the next checkpoint."""
        fn = batch.function
        shard = np.fromiter((shard_of(f, self.opts.n_shards) for f in fn), np.int64, len(fn))
        arrival = np.asarray(batch.ts)
        dur = np.asarray(batch.duration_ms) / 1000.0 * self.opts.time_scale
        startup_s = np.asarray(batch.startup_ms) / 1000.0  # real seconds, as the platform measured them
        st = startup_s * self.opts.time_scale
        wait = np.asarray(batch.wait_ms) / 1000.0 * self.opts.time_scale
        cold = np.asarray(batch.cold, np.int64)
        status = np.asarray(batch.status, np.int64)
        phase = np.asarray(batch.phase, np.int64)
        ids = batch.ids
        for s in np.unique(shard).tolist():
            slot = self.slots.get(s)
            rows = np.flatnonzero(shard == s)
            if slot is None:
                continue  # a shard we no longer own: leave unacked, its owner gets it
            fresh = [r for r in rows.tolist() if ids[r] not in slot.seen and r not in skip]
            slot.unacked += [ids[r] for r in fresh]
            slot.seen.update(ids[r] for r in fresh)
            keep = [r for r in fresh if self.platform.manages(batch.namespace[r])]
            if not keep:
                continue
            agent = slot.agent
            names = [fn[r] for r in keep]
            unknown = sorted({n for n in names if n not in agent.index})
            if unknown:
                ns = {fn[r]: batch.namespace[r] for r in keep}
                agent.add_functions(now, unknown, [ns[n] for n in unknown],
                                    [self.platform.memory_mb(n) for n in unknown])
            k = np.asarray(keep)
            idx = np.fromiter((agent.index[n] for n in names), np.int64, len(names))
            agent.ingest(idx, ts.policy(arrival[k]), dur[k], st[k], cold[k], status[k], phase[k], wait=wait[k])
            self.metrics.events.inc(len(keep))
            # The OTel view of the finished requests (a `start` has no outcome yet); the wait of a cold one in real
            # seconds, as the platform measured it.
            done = phase[k] != PHASE_START
            if done.any():
                kd = k[done]
                self.metrics.faas.observe([n for n, d in zip(names, done.tolist(), strict=True) if d], status[kd],
                                          cold[kd], init_s=startup_s[kd])

    async def read_lag(self) -> None:
        """The consumer lag gauge: entries of the owned shards not yet delivered to this replica's group."""
        try:
            self.metrics.lag.set(await self.source.lag(sorted(self.slots)))
        except (StreamUnavailable, RedisError, OSError) as e:
            self.reachability.redis_down("lag", e)
