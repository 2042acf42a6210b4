"""The sidecar's control loop: `Sidecar` wires the parts, each a module of this package, and runs them.

Once per iteration, in this order:
- `shards`: own shards (leases), restore the ones gained from their checkpoints; checkpoint with the acks,
- `intake`: read the owned shards' events, screen out bad input (dead letters), route the rest into the agents,
- `status`: read the platform's function list, register the functions listed, adopt their running replicas,
- `scaling`: tick every shard's policy, set the desired counts (bidding for a shared budget through `seats`),
- `actuation`: ask the platform for the counts that changed.
`reachability` keeps whether Redis and the platform answer, which the gauges and the probes report.

`iterate` reads the clock once and hands that `now` to every step, so one iteration's steps agree on the time.
When Redis or the platform is unreachable the loop keeps running, holds the last setting it applied and says so
in its metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis.asyncio as aioredis

from prewarmer.actuators.base import Actuator, ActuatorAuthError, FunctionStatus
from prewarmer.coord.redis_budget import RedisBudget
from prewarmer.policies.base import Policy
from prewarmer.sidecar.actuation import PlatformScaler
from prewarmer.sidecar.intake import EventIntake
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.reachability import Reachability
from prewarmer.sidecar.record import DecisionRecorder
from prewarmer.sidecar.scaling import Decider
from prewarmer.sidecar.seats import BudgetSeats
from prewarmer.sidecar.shards import ShardOwnership
from prewarmer.sidecar.status import PlatformStatus
from prewarmer.sidecar.timescale import TimeScale
from prewarmer.stream.consumer import RedisEventSource
from prewarmer.stream.keys import DEFAULT_PREFIX, DEFAULT_SHARDS, clock_key

if TYPE_CHECKING:
    from prewarmer.kube.control import PolicyControl
    from prewarmer.sidecar.rules import RulesFile

logger = logging.getLogger("prewarmer.sidecar")
#: Woken for a tick, the loop sleeps this much past it, so that the clock it then reads has reached the tick.
_TICK_MARGIN_S = 0.001


@dataclass
class SidecarOptions:
    replica_id: str
    prefix: str = DEFAULT_PREFIX
    n_shards: int = DEFAULT_SHARDS
    group: str = "prewarmer"
    interval_s: float = 1.0  # real seconds between loop iterations (the fleet's resolution)
    status_interval_s: float = 5.0  # real seconds between periodic platform status reads (a policy tick reads too)
    checkpoint_interval_s: float = 5.0  # real seconds between checkpoints (acks wait for them)
    claim_min_idle_ms: int = 30_000
    lease_ttl_ms: int = 15_000
    batch_size: int = 1000
    max_events_per_iteration: int = 200_000
    time_scale: float = 1.0
    # The time (seconds since a midnight; a Unix time works) that policy time 0 stands for: what the agents'
    # time-of-day and day-of-week features read. None: the wall clock when the replicas first started. A load
    # test replaying trace minutes [A, B) sets A x 60, as replay does.
    clock_epoch_s: float | None = None
    namespace: str | None = None  # only functions of this namespace (None: all)
    policy_spec: str = ""
    max_replicas: int | None = None  # the platform's most replicas per function, modelled by the fleet
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


class Sidecar:
    """One sidecar replica: the loop's parts, wired to share one table of owned shards, and the loop running them."""

    def __init__(self, opts: SidecarOptions, make_policy: Callable[[], Policy], actuator: Actuator,
                 redis: aioredis.Redis, metrics: SidecarMetrics | None = None,
                 clock: Callable[[], float] = time.time, policies: PolicyControl | None = None,
                 rules_file: RulesFile | None = None) -> None:
        self.opts = opts
        self.actuator = actuator
        self.redis = redis
        self.metrics = metrics or SidecarMetrics()
        self.clock = clock
        self.ts = TimeScale(clock(), opts.time_scale)  # replaced by the shared epoch in `start`
        source = RedisEventSource(redis, prefix=opts.prefix, n_shards=opts.n_shards, group=opts.group,
                                  consumer=opts.replica_id, batch_size=opts.batch_size, block_ms=None,
                                  claim_min_idle_ms=opts.claim_min_idle_ms, max_ts_skew_s=opts.max_ts_skew_s)
        self.recorder = DecisionRecorder(opts.record) if opts.record else None
        self.reachability = Reachability(self.metrics)
        self.budget_seats = BudgetSeats(redis, opts)
        self.ownership = ShardOwnership(opts, make_policy, redis, source, self.budget_seats, self.reachability,
                                        self.metrics)
        self.slots = self.ownership.slots  # the one table of owned shards every part reads
        self.platform = PlatformStatus(opts, actuator, self.slots, self.reachability, self.metrics, clock)
        self.intake = EventIntake(opts, source, self.slots, self.platform, self.reachability, self.metrics, clock)
        self.decider = Decider(opts, self.slots, self.platform, self.budget_seats, self.reachability, self.metrics,
                               self.recorder, clock)
        self.scaler = PlatformScaler(opts, actuator, self.slots, self.platform, self.reachability, self.metrics,
                                     self.recorder, clock)
        self.last_checkpoint = -np.inf
        self.last_loop = clock()
        # Ready (`/readyz`) once the policy is warmed up, the shared policy clock adopted and one iteration done:
        # requests sent before would meet a platform with no prewarmer yet (see `ready`).
        self.started = False
        self.policies = policies  # PrewarmPolicies and annotations (`--watch-policies`), prewarmer.kube
        self.rules_file = rules_file  # `--schedule-file` without `--watch-policies` (prewarmer.sidecar.rules)

    @property
    def fatal(self) -> str | None:
        """Why the loop stopped by itself (credentials refused), or None."""
        return self.reachability.fatal

    @property
    def status(self) -> dict[str, FunctionStatus]:
        """The platform's functions as last listed, by name."""
        return self.platform.functions

    @property
    def seats(self) -> dict[int, RedisBudget]:
        """Each owned shard's seat in the shared budget auction (`+bid` policies)."""
        return self.budget_seats.by_shard

    # ------------------------------------------------------------------ main loop
    async def start(self) -> None:
        """Warm the policy's compiled code up (before any lease: see `ShardOwnership.warm_up`); adopt the policy
        clock shared by every replica and restart, so checkpointed times stay valid."""
        await self.ownership.warm_up()
        key = clock_key(self.opts.prefix, self.opts.group)
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
                self.started = True
                self.metrics.tick_seconds.observe(time.perf_counter() - t0)
                self.last_loop = self.clock()
                if self.fatal:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.sleep_s())
                except TimeoutError:
                    pass
        finally:
            await self.shutdown()

    def sleep_s(self) -> float:
        """Real seconds until the next iteration: `interval_s`, or less when a shard's policy tick is due sooner.
        Policies then tick when they are due, as in replay, rather than at the first iteration after (up to
        `interval_s` late: at a load test's 30x, half a minute of policy time, enough for a pre-warm to miss the
        burst it was meant for)."""
        until = self.ts.t0 + self.ts.real(self.slots.next_tick()) - self.clock()
        if not until > 0:  # none due, or one overdue (an iteration that could not tick): the usual pace
            return self.opts.interval_s
        return min(self.opts.interval_s, until + _TICK_MARGIN_S)

    async def iterate(self) -> None:
        """One loop iteration: ownership, events, platform status, decisions, scaling, checkpoints."""
        real = self.clock()
        now = self.ts.policy(real)
        if not await self.ownership.rebalance(self._epoch()):
            self.reachability.publish()
            return
        await self.intake.read(now, self.ts)
        polled = real - self.platform.polled_at >= self.opts.status_interval_s
        if polled:
            await self.platform.read(now)
            await self.intake.read_lag()
            self.platform.polled_at = real
        if self.rules_file is not None:
            self.rules_file.sync(self.slots, real, self.platform.functions, self.platform.listed_at)
        if self.policies is not None:
            if self.policies.fatal:
                self.reachability.credentials_refused(ActuatorAuthError(self.policies.fatal))
                return
            self.policies.sync(self.platform.functions, self.platform.listed_at, self.slots)
            self.scaler.preview = self.policies.preview
        # The tick observes what happened up to its `now`, as replay's does: taken after the events were read, so
        # that a slow read (a backlog, a loaded machine) does not fold requests that arrived or ended after it into
        # a tick dated before them.
        now = max(now, self.ts.policy(self.clock()))
        if not polled and self.reachability.gateway_ok and now >= self.slots.next_tick():
            # The tick observes the replicas the platform runs at its `now`, as replay's observes its engine. The
            # periodic read can be several ticks old under a compressed clock (a load test at 30x: 150 policy
            # seconds, where the policy had asked for 14 instances and still saw 5). A platform that is down is
            # probed by the periodic read alone.
            await self.platform.read(now)
        await self.decider.decide(now, self.ts.seconds(self.opts.interval_s))
        await self.scaler.apply()
        if self.policies is not None:
            self.policies.report(self.slots, self.opts.replica_id)
        if real - self.last_checkpoint >= self.opts.checkpoint_interval_s:
            await self.checkpoint()
            self.last_checkpoint = real
        self.reachability.publish()

    # Single steps, for tests that drive the loop step by step.
    async def _own_shards(self, now: float) -> bool:
        return await self.ownership.rebalance(self._epoch())

    def _epoch(self) -> float:
        return self.ts.t0 if self.opts.clock_epoch_s is None else self.opts.clock_epoch_s

    async def _read_lag(self) -> None:
        await self.intake.read_lag()

    # ------------------------------------------------------------------ checkpoints
    async def checkpoint(self) -> None:
        """Store every shard's state and acknowledge its events in one transaction per shard."""
        await self.ownership.checkpoint()

    async def shutdown(self) -> None:
        if self.reachability.redis_ok:
            await self.checkpoint()
            await self.ownership.release_leases()
        if self.reachability.redis_ok:  # the checkpoint may just have found Redis gone
            await self.budget_seats.leave_all()
        if self.recorder:
            self.recorder.close()
        log(logger, "sidecar stopped", replica=self.opts.replica_id, events=self.slots.events())

    # ------------------------------------------------------------------ probes
    def health(self) -> tuple[bool, str]:
        stale = self.clock() - self.last_loop
        if self.fatal:
            return False, self.fatal
        limit = max(10 * self.opts.interval_s, 30.0)
        return (stale < limit, f"last loop {stale:.1f}s ago")

    def ready(self) -> tuple[bool, str]:
        """Ready once running: until the policy is warmed up (seconds for `marl`), its clock adopted and its first
        iteration done, the sidecar acts on nothing, so a load test that started on an earlier 200 measured the
        platform alone for those seconds while its replay counted the policy in from the first request."""
        if not self.started:
            return False, "starting (warming the policy up)"
        if not self.reachability.redis_ok:
            return False, "redis unavailable"
        return True, f"{len(self.slots)} shards"
