"""Acting: ask the platform (through the actuator) for every desired count that differs from what it was last sent.

Only changes are sent, so a steady state costs no platform calls. While the platform is down the last setting
is held until the next status read says it is back; refused credentials stop the loop (see `Reachability`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from prewarmer.actuators.base import Actuator, ActuatorAuthError, ActuatorError
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.reachability import Reachability
from prewarmer.sidecar.record import DecisionRecorder
from prewarmer.sidecar.shards import OwnedShards, ShardSlot
from prewarmer.sidecar.status import PlatformStatus

if TYPE_CHECKING:
    from prewarmer.sidecar.run import SidecarOptions

logger = logging.getLogger("prewarmer.sidecar")


class PlatformScaler:
    def __init__(self, opts: SidecarOptions, actuator: Actuator, slots: OwnedShards, platform: PlatformStatus,
                 reachability: Reachability, metrics: SidecarMetrics, recorder: DecisionRecorder | None,
                 clock: Callable[[], float]) -> None:
        self.opts = opts
        self.actuator = actuator
        self.slots = slots
        self.platform = platform
        self.reachability = reachability
        self.metrics = metrics
        self.recorder = recorder
        self.clock = clock
        # Functions in Preview mode (`--watch-policies`, prewarmer.kube): decided as usual, never sent.
        self.preview: frozenset[str] = frozenset()

    async def apply(self) -> None:
        """Send the scale requests, concurrently; a failed one is sent again next iteration."""
        requests = self._requests()
        if not requests or self.reachability.fatal:
            return
        if not self.reachability.gateway_ok and \
                self.clock() - self.platform.polled_at < self.opts.status_interval_s:
            return  # platform down: hold the last setting until the next status read says it is back
        results = await asyncio.gather(*(self._scale(slot, i, n) for slot, i, n in requests))
        self.metrics.scale_requests.inc(sum(1 for r in results if r))

    def _requests(self) -> list[tuple[ShardSlot, int, int]]:
        """(slot, function index, replicas) wherever the desired count is not what was last sent."""
        out = []
        for slot in self.slots.values():
            d = slot.desired
            if d is None or not len(d):
                continue
            sent = np.array([slot.last_sent.get(j, -1) for j in range(len(d))])
            out += [(slot, int(i), int(d[i])) for i in np.flatnonzero(d != sent)
                    if slot.agent.names[i] not in self.preview]
        return out

    async def _scale(self, slot: ShardSlot, i: int, n: int) -> bool:
        agent = slot.agent
        name, ns = agent.names[i], agent.namespaces[i]
        try:
            outcome = await self.actuator.scale(name, ns, n)
        except ActuatorAuthError as e:
            self.reachability.credentials_refused(e)
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
