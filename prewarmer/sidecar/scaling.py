"""Deciding: tick every owned shard's policy (`ShardAgent.tick`, i.e. `prewarmer.platform.tick`), set the desired
warm instances per function, and score each decision (action and prediction metrics, online fallbacks, records).

With a memory budget (`+bid` policies) each shard's tick bids for memory in the auction shared through Redis,
from the shard's own seat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from prewarmer.coord.redis_budget import RedisAllocator
from prewarmer.sidecar.agent import Decision
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.reachability import Reachability
from prewarmer.sidecar.record import DecisionRecorder
from prewarmer.sidecar.seats import BudgetSeats
from prewarmer.sidecar.shards import OwnedShards, ShardSlot
from prewarmer.sidecar.status import PlatformStatus

if TYPE_CHECKING:
    from prewarmer.sidecar.run import SidecarOptions

logger = logging.getLogger("prewarmer.sidecar")

Tick = tuple[ShardSlot, Decision | None, np.ndarray, RedisAllocator | None]


class Decider:
    def __init__(self, opts: SidecarOptions, slots: OwnedShards, platform: PlatformStatus, seats: BudgetSeats,
                 reachability: Reachability, metrics: SidecarMetrics, recorder: DecisionRecorder | None,
                 clock: Callable[[], float]) -> None:
        self.opts = opts
        self.slots = slots
        self.platform = platform
        self.seats = seats
        self.reachability = reachability
        self.metrics = metrics
        self.recorder = recorder
        self.clock = clock

    async def decide(self, now: float, interval: float) -> None:
        """Tick the shards due and set every shard's `desired` counts, looking `interval` policy seconds (one
        loop period) beyond the functions' startup times."""
        if self.opts.budget_gb is None:
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
                    self.reachability.redis_down("budget", allocator.error)
                elif allocator.last is not None:
                    self.metrics.budget_used.set(allocator.last.used_gb)
                    self.metrics.budget_price.set(allocator.last.price)
            slot.desired = desired
            wanted += int(desired.sum())
        self.metrics.desired.set(wanted)

    def _tick_shards(self, now: float, interval: float, loop: asyncio.AbstractEventLoop | None) -> list[Tick]:
        """Every owned shard's tick (`ShardAgent.tick`, i.e. `prewarmer.platform.tick`) and desired counts."""
        listed = self.platform.functions
        out = []
        for shard, slot in self.slots.items():
            agent = slot.agent
            if not agent.names:
                continue
            replicas = np.array([listed[n].replicas if n in listed else 0 for n in agent.names])
            ready = np.array([listed[n].available_replicas if n in listed else 0 for n in agent.names])
            allocator = None
            if loop is not None:
                allocator = RedisAllocator(self.seats.seat(shard), agent.names, agent.namespaces, loop)
            decision = agent.tick(now, replicas, ready, allocator)
            out.append((slot, decision, agent.desired(now, agent.startup_s() + interval, replicas), allocator))
        return out

    def _score(self, slot: ShardSlot, decision: Decision, desired: np.ndarray) -> None:
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
