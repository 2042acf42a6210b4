"""One shard's agents: its functions, their policy, observer and warm fleet, checkpointed as one unit.

Replicas own whole shards (see `prewarmer.stream.shards`), so everything a shard's functions have
learned travels with the shard: a replica that takes a shard over loads its checkpoint and goes on
where the previous owner stopped.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable

import numpy as np

from prewarmer.actions import Actions
from prewarmer.observation import Observation
from prewarmer.platform import Allocator, Decision, tick
from prewarmer.policies.base import Policy
from prewarmer.sidecar.fleet import WarmFleet
from prewarmer.sidecar.observer import LiveObserver
from prewarmer.stream.events import PHASE_DONE, PHASE_END, PHASE_START
from prewarmer.workloads.base import FunctionTable

# v5: the engine's due expiry per instance and its second heap; v4: requests in flight (reported started, not
# ended) and the engine's warm floor column; v3 had only one of them; v2: the warm fleet is the simulator's
# engine; v1: rules of its own. Older checkpoints cannot be read.
CHECKPOINT_MAGIC = b"prewarmer-shard-v5\n"
DEFAULT_MEMORY_MB = 128.0


class LivePlatform:
    """The live side of `prewarmer.platform.Platform` for one shard: observations from the shard's events
    and the platform's replica counts (`replicas`, `ready`: what the actuator last read), actions into
    the warm fleet, whose `desired` counts the sidecar then asks the actuator for."""

    def __init__(self, observer: LiveObserver, fleet: WarmFleet, replicas: np.ndarray, ready: np.ndarray) -> None:
        self.observer, self.fleet = observer, fleet
        self.replicas, self.ready = replicas, ready

    def observe(self, now: float) -> Observation:
        return self.observer.observe(now, self.replicas, self.ready, self.fleet.inflight)

    def apply(self, now: float, actions: Actions) -> None:
        self.fleet.apply(now, actions)


class ShardAgent:
    def __init__(self, shard: int, make_policy: Callable[[], Policy], epoch_s: float,
                 max_replicas: int | None = None) -> None:
        self.shard = shard
        self.make_policy = make_policy
        self.epoch_s = epoch_s
        self.names: list[str] = []
        self.namespaces: list[str] = []
        self.labels: list[dict[str, str]] = []  # as the platform lists them (what warm-floor rules select by)
        self.index: dict[str, int] = {}
        self.memory_mb = np.zeros(0)
        self.policy: Policy | None = None
        self.observer = LiveObserver(self.memory_mb, epoch_s)
        self.fleet = WarmFleet(0, max_instances=max_replicas)
        self.next_tick = -np.inf
        self.events = 0  # events folded into this state (what a checkpoint vouches for)
        self.function_events = np.zeros(0, np.int64)  # the same, by function

    # ---------------------------------------------------------------- functions
    def add_functions(self, now: float, names: list[str], namespaces: list[str],
                      memory_mb: list[float | None], labels: list[dict[str, str]] | None = None) -> bool:
        """Register functions not seen before (the policy takes them on, keeping what it learned about the
        others: `Policy.grow`); returns True if there were any."""
        labels = labels if labels is not None else [{} for _ in names]
        new = [(n, ns, m, lab) for n, ns, m, lab in zip(names, namespaces, memory_mb, labels, strict=True)
               if n not in self.index]
        if not new:
            return False
        for name, ns, mem, lab in new:
            self.index[name] = len(self.names)
            self.names.append(name)
            self.namespaces.append(ns)
            self.labels.append(dict(lab))
            self.memory_mb = np.append(self.memory_mb, float(mem or DEFAULT_MEMORY_MB))
        self.function_events = np.concatenate([self.function_events, np.zeros(len(new), np.int64)])
        self.observer.grow(self.memory_mb)
        self.fleet.grow(self.memory_mb)
        if self.policy is None:
            self.policy = self.make_policy()
            self.fleet.apply(now, self.policy.reset(self.table(), now))
        else:
            self.fleet.apply(now, self.policy.grow(self.table(), now))  # the tick schedule goes on
        return True

    def table(self) -> FunctionTable:
        n = len(self.names)
        return FunctionTable(names=list(self.names), apps=np.arange(n, dtype=np.int32), app_names=list(self.names),
                             memory_mb=self.memory_mb.copy(), cold_start_s=np.full(n, np.nan),
                             labels=[dict(x) for x in self.labels])

    # ---------------------------------------------------------------- data path
    def ingest(self, func: np.ndarray, arrival: np.ndarray, duration: np.ndarray, startup: np.ndarray,
               cold: np.ndarray, status: np.ndarray, phase: np.ndarray | None = None,
               wait: np.ndarray | None = None) -> None:
        """Events (function indices into this shard, policy seconds) into the observer and the fleet.

        `wait`: arrival to the start of execution (the event's `wait_ms`; default `startup`, the start-up only).
        A request queued at the platform's instance bound waited longer than its start-up: it ends at arrival +
        wait + duration, and was in the system, in flight, all that time.

        `phase` (`prewarmer.stream.events.PHASE_*`, default all `done`): a `start` counts the request as it
        arrives, in the observer and in the fleet's model; its `end` brings the outcome. An `end` whose `start`
        was never seen is taken as a `done` (the whole request, reported when it completed)."""
        self.events += len(func)
        wait = startup if wait is None else np.maximum(wait, startup)
        self.function_events += np.bincount(func, minlength=len(self.function_events))
        if phase is None or not (phase != PHASE_DONE).any():
            self.observer.ingest(func, arrival, duration, startup, cold, status, wait=wait)
            self.fleet.reported(func, arrival, duration)
            return
        start = phase == PHASE_START
        if start.any():
            self.fleet.started(func[start], arrival[start])
            self.observer.arrived(func[start])
        end = np.flatnonzero(phase == PHASE_END)
        found, fed, counted = self.fleet.inflight.take(func[end], arrival[end])
        paired = end[found]
        if len(paired):
            self.observer.ingest(func[paired], arrival[paired], duration[paired], startup[paired], cold[paired],
                                 status[paired], counted=counted[found], wait=wait[paired])
            self.fleet.ended(func[paired], arrival[paired], wait[paired], duration[paired], fed[found])
        whole = np.flatnonzero(phase == PHASE_DONE)
        if (~found).any():
            whole = np.sort(np.concatenate([whole, end[~found]]))
        if len(whole):
            self.observer.ingest(func[whole], arrival[whole], duration[whole], startup[whole], cold[whole],
                                 status[whole], wait=wait[whole])
            self.fleet.reported(func[whole], arrival[whole], duration[whole])

    def tick(self, now: float, replicas: np.ndarray, ready: np.ndarray,
             allocator: Allocator | None = None) -> Decision | None:
        """Run the policy's tick (`prewarmer.platform.tick`) if its control period has come; None otherwise."""
        if self.policy is None or now < self.next_tick:
            return None
        self.fleet.set_startup(self.startup_s())
        decision = tick(self.policy, LivePlatform(self.observer, self.fleet, replicas, ready), now, allocator)
        period = self.policy.tick_s
        # Ticks on multiples of the period of policy time, as in replay: a loop that wakes a little late does not
        # push every later tick back.
        self.next_tick = np.inf if period is None else (np.floor(now / period) + 1.0) * period
        return decision

    def desired(self, now: float, lead: np.ndarray | float, replicas: np.ndarray | None = None) -> np.ndarray:
        """Replicas to ask the platform for. While a function's model is behind (requests reported late are
        still being replayed), no fewer than the platform runs (`replicas`): releasing idle workers on a
        model that has not seen their requests would cause the cold starts it is there to avoid."""
        desired = self.fleet.desired(now, lead)
        if replicas is None:
            return desired
        return np.where(self.fleet.behind(), np.maximum(desired, replicas), desired)

    def startup_s(self) -> np.ndarray:
        return self.observer.startup()

    # ---------------------------------------------------------------- checkpoints
    def dumps(self) -> bytes:
        state = dict(self.__dict__)
        state.pop("make_policy")
        return CHECKPOINT_MAGIC + zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1)

    @classmethod
    def loads(cls, blob: bytes, make_policy: Callable[[], Policy]) -> ShardAgent:
        """Restore a checkpoint written by `dumps` (the policy object and all it learned included)."""
        if blob.startswith((b"prewarmer-shard-v1\n", b"prewarmer-shard-v2\n", b"prewarmer-shard-v3\n",
                          b"prewarmer-shard-v4\n")):
            raise ValueError("a shard checkpoint of an older prewarmer (before v5): its warm fleet cannot be read")
        if not blob.startswith(CHECKPOINT_MAGIC):
            raise ValueError("not a prewarmer shard checkpoint (bad header)")
        try:
            state = pickle.loads(zlib.decompress(blob[len(CHECKPOINT_MAGIC):]))
        except Exception as e:  # noqa: BLE001 - any decoding failure means the same thing here
            raise ValueError(f"corrupt shard checkpoint: {e}") from None
        agent = cls.__new__(cls)
        state.setdefault("function_events", np.zeros(len(state["names"]), np.int64))  # counted from now on
        agent.__dict__.update(state)
        agent.make_policy = make_policy
        return agent
