"""The platform's side: its function list (read through the actuator), registering the functions it lists with
their shards' agents, and adopting the replicas already running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from prewarmer.actuators.base import Actuator, ActuatorAuthError, ActuatorError, FunctionStatus
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.reachability import Reachability
from prewarmer.sidecar.shards import OwnedShards
from prewarmer.stream.keys import shard_of

if TYPE_CHECKING:
    from prewarmer.sidecar.run import SidecarOptions

logger = logging.getLogger("prewarmer.sidecar")


class PlatformStatus:
    """The platform as this replica last read it: its functions, and when they were read."""

    def __init__(self, opts: SidecarOptions, actuator: Actuator, slots: OwnedShards, reachability: Reachability,
                 metrics: SidecarMetrics, clock: Callable[[], float]) -> None:
        self.opts = opts
        self.actuator = actuator
        self.slots = slots
        self.reachability = reachability
        self.metrics = metrics
        self.clock = clock
        self.functions: dict[str, FunctionStatus] = {}  # the last list read, by name (managed namespaces only)
        self.listed_at = -np.inf  # when the list was last read successfully
        self.polled_at = -np.inf  # when the loop's periodic read (every `status_interval_s`) last ran

    def manages(self, namespace: str) -> bool:
        """Whether functions of `namespace` are this sidecar's to scale (`opts.namespace` None: all)."""
        return self.opts.namespace is None or namespace == self.opts.namespace

    def memory_mb(self, name: str) -> float | None:
        st = self.functions.get(name)
        return st.memory_mb if st else None

    async def read(self, now: float) -> None:
        """Read the function list; register the listed functions not tracked yet, up to `max_functions`."""
        try:
            statuses = await self.actuator.list_functions()
        except ActuatorAuthError as e:
            self.reachability.credentials_refused(e)
            return
        except ActuatorError as e:
            self.metrics.actuator_errors.labels(type(e).__name__).inc()
            self.reachability.gateway_down(e)
            return
        self.reachability.gateway_back()
        self.listed_at = self.clock()
        self.functions = {s.name: s for s in statuses if self.manages(s.namespace)}
        by_shard: dict[int, list[FunctionStatus]] = {}
        for st in self.functions.values():
            by_shard.setdefault(shard_of(st.name, self.opts.n_shards), []).append(st)
        room = self.opts.max_functions - self.slots.functions()
        for shard, slot in self.slots.items():
            new = [st for st in by_shard.get(shard, []) if st.name not in slot.agent.index]
            if len(new) > max(room, 0):
                log(logger, "function cap reached, listed functions left untracked", logging.WARNING,
                    shard=shard, untracked=len(new) - max(room, 0), max_functions=self.opts.max_functions)
                new = new[:max(room, 0)]
            room -= len(new)
            if new:
                slot.agent.add_functions(now, [s.name for s in new], [s.namespace for s in new],
                                         [s.memory_mb for s in new], [s.labels for s in new])
                # Replicas already warm when we first see a function count as just used, so the
                # policy's keep-alive decides their fate rather than an abrupt release at start.
                idx = np.array([slot.agent.index[st.name] for st in new])
                slot.agent.fleet.adopt(idx, np.array([st.available_replicas for st in new]), now)
                slot.last_sent.update({int(i): st.replicas for i, st in zip(idx, new, strict=True)})
        self.metrics.functions.set(self.slots.functions())
