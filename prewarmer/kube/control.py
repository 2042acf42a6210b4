"""`prewarmer run --watch-policies`: PrewarmPolicies (and function annotations) steer the sidecar.

Each loop iteration the sidecar calls `sync` (rules into every shard's `ScheduledPolicy`, the Preview set into the
scaler, which then sends nothing for those functions) and `report` (per selected function: the replicas the
policy's model holds and the replicas asked for, into the metrics and, in the background, into the policies'
status). Resolution happens only when a policy or the platform's function list changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prewarmer.kube.resolve import FunctionInfo, PolicySource, Resolution, parse_policy, resolve
from prewarmer.kube.status import Condition, FunctionReport, StatusWriter
from prewarmer.kube.watcher import PolicyWatcher
from prewarmer.schedules import RuleSet
from prewarmer.sidecar.logs import log

if TYPE_CHECKING:
    from prewarmer.actuators.base import FunctionStatus
    from prewarmer.sidecar.metrics import SidecarMetrics
    from prewarmer.sidecar.shards import OwnedShards

logger = logging.getLogger("prewarmer.kube")


def scheduled_part(policy: Any) -> Any:
    """The ScheduledPolicy inside a (possibly wrapped, e.g. `+bid`) policy: the object with `set_rules`."""
    seen = 0
    while policy is not None and seen < 5:
        if hasattr(policy, "set_rules"):
            return policy
        policy = getattr(policy, "inner", None) or getattr(policy, "policy", None)
        seen += 1
    return None


def condition_for(source: PolicySource, functions: list[str]) -> Condition:
    """The Ready condition every replica writes alike (it depends on the spec and the platform's full list)."""
    if source.error:
        return Condition("False", "InvalidSpec", source.error)
    if not functions:
        return Condition("True", "NoFunctionsSelected", f"{source.mode}: no listed function matches the selector "
                                                        "(or an older policy governs it)")
    if source.mode == "Preview":
        return Condition("True", "Previewing", f"Preview: deciding for {len(functions)} function(s), sending "
                                               "nothing to the platform")
    return Condition("True", "Applied", f"Auto: the rule holds for {len(functions)} function(s)")


class PolicyControl:
    """Binds a PolicyWatcher and a StatusWriter to the sidecar's loop (see the module docstring)."""

    def __init__(self, watcher: PolicyWatcher, writer: StatusWriter | None, metrics: SidecarMetrics,
                 clock: Callable[[], float], base_rules: RuleSet | None = None) -> None:
        self.watcher = watcher
        # Rules that hold whatever the cluster says (`--schedule-file`): the resolved ones are added to them.
        self.base_rules = base_rules or RuleSet(rules=[])
        self.writer = writer
        self.metrics = metrics
        self.clock = clock
        self.resolution: Resolution | None = None
        self.sources: dict[str, PolicySource] = {}
        self.rules_version = 0
        self._key: tuple[int, float] | None = None
        self._fingerprint: str | None = None
        self._applied: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._gauged: set[tuple[str, str]] = set()
        self._writes: asyncio.Task | None = None
        self._reported_errors: dict[str, str] = {}
        self._unknown: frozenset[str] = frozenset()  # every tracked function, while no policy list has arrived
        self._rules: tuple[int, RuleSet] = (-1, RuleSet(rules=[]))  # (rules_version, base + resolved rules)
        # shard -> ((rules_version, agent, functions), [(index, name, assignment)] of its governed functions)
        self._governed: dict[int, tuple[tuple[int, int, int], list[tuple[int, str, Any]]]] = {}

    @property
    def preview(self) -> frozenset[str]:
        """Functions whose scale requests are held: those in Preview mode; before the first list of policies has
        arrived, every function (a policy not read yet may be a Preview one)."""
        if self.resolution is None:
            return self._unknown
        return self.resolution.preview

    @property
    def fatal(self) -> str | None:
        """Why the policies cannot be read at all (credentials or RBAC refused), or None."""
        return self.watcher.refused

    async def start(self, sync_timeout_s: float = 10.0) -> None:
        """Start the watch and wait (up to `sync_timeout_s`) for its first list, so that the first decisions already
        follow the policies; if the API does not answer by then the sidecar starts anyway and the watch catches up."""
        self.watcher.start()
        if not await asyncio.to_thread(self.watcher.wait_synced, sync_timeout_s):
            log(logger, "policies not listed yet, starting without them", logging.WARNING,
                namespace=self.watcher.namespace, error=self.watcher.last_error)

    async def close(self) -> None:
        if self._writes is not None:
            await asyncio.gather(self._writes, return_exceptions=True)
        await asyncio.to_thread(self.watcher.stop)

    # ------------------------------------------------------------------ rules
    def sync(self, functions: Mapping[str, FunctionStatus], listed_at: float, slots: OwnedShards) -> None:
        """Re-resolve when the policies or the function list changed; hand the rules to every shard's policy that
        has not got them yet (new shards, restored checkpoints)."""
        version, objects = self.watcher.snapshot()
        if self.watcher.synced and (version, listed_at) != self._key:
            self._key = (version, listed_at)
            infos = [FunctionInfo(s.name, dict(getattr(s, "labels", {}) or {}),
                                  dict(getattr(s, "annotations", {}) or {})) for s in functions.values()]
            fingerprint = json.dumps([version, [(i.name, sorted(i.labels.items()), sorted(i.annotations.items()))
                                                for i in sorted(infos, key=lambda i: i.name)]])
            if fingerprint != self._fingerprint:
                self._fingerprint = fingerprint
                self.sources = {o["metadata"]["name"]: parse_policy(o) for o in objects}
                self.resolution = resolve(self.sources.values(), infos)
                self.rules_version += 1
                self._log_problems()
                log(logger, "policy rules resolved", policies=len(self.sources), rules=len(self.resolution.rules.rules),
                    governed=len(self.resolution.assignments), preview=len(self.resolution.preview))
        if self.resolution is None:
            self._unknown = frozenset(name for slot in slots.values() for name in slot.agent.names)
            return
        if self._rules[0] != self.rules_version:
            self._rules = (self.rules_version, RuleSet(rules=[*self.base_rules.rules, *self.resolution.rules.rules]))
        rules = self._rules[1]
        for slot in slots.values():
            agent = slot.agent
            if agent.policy is None:
                continue
            scheduled = scheduled_part(agent.policy)
            if scheduled is None:
                # A policy restored from a checkpoint of a run without rules: put the rules around it, keeping
                # everything it learned.
                from prewarmer.policies.scheduled import ScheduledPolicy

                scheduled = ScheduledPolicy(agent.policy, rules)
                scheduled.attach(agent.table())
                agent.policy = scheduled
                self._applied[scheduled] = self.rules_version
            elif self._applied.get(scheduled) != self.rules_version:
                scheduled.set_rules(rules)
                self._applied[scheduled] = self.rules_version
            else:
                continue
            # Tick at once: a floor (or its end) takes effect now rather than at the policy's next period.
            agent.next_tick = -math.inf

    def _log_problems(self) -> None:
        assert self.resolution is not None
        problems = {f"PrewarmPolicy/{s.name}": s.error for s in self.sources.values() if s.error}
        problems.update({f"annotations of {f}": e for f, e in self.resolution.annotation_errors.items()})
        for where, error in problems.items():
            if self._reported_errors.get(where) != error:
                log(logger, "policy ignored", logging.WARNING, source=where, error=error)
        self._reported_errors = problems

    # ------------------------------------------------------------------ reporting
    def report(self, slots: OwnedShards, replica: str) -> None:
        """Metrics now; status writes in the background (one batch at a time, so a slow API never holds the loop)."""
        if self.resolution is None:
            return
        assignments = self.resolution.assignments
        by_policy: dict[str, dict[str, FunctionReport]] = {name: {} for name in self.sources}
        gauged = set()
        for shard, slot in slots.items():
            agent, desired = slot.agent, slot.desired
            if desired is None or not len(desired):
                continue
            key = (self.rules_version, id(agent), len(agent.names))  # a shard regained is another agent
            if self._governed.get(shard, (None,))[0] != key:
                self._governed[shard] = (key, [(agent.index[n], n, a) for n, a in assignments.items()
                                               if n in agent.index])
            held = agent.fleet.count()
            for i, name, assignment in self._governed[shard][1]:
                if i >= len(desired):
                    continue
                want = int(desired[i])
                report = FunctionReport(predicted=int(held[i]), desired=want,
                                        applied=assignment.mode == "Auto" and slot.last_sent.get(i) == want)
                self.metrics.policy_predicted.labels(name, assignment.mode).set(report.predicted)
                self.metrics.policy_desired.labels(name, assignment.mode).set(report.desired)
                gauged.add((name, assignment.mode))
                if assignment.policy is not None:
                    by_policy.setdefault(assignment.policy, {})[name] = report
        for labels in self._gauged - gauged:
            self.metrics.policy_predicted.remove(*labels)
            self.metrics.policy_desired.remove(*labels)
        self._gauged = gauged
        if self.writer is not None and (self._writes is None or self._writes.done()):
            self._writes = asyncio.create_task(self._write_status(by_policy))

    async def _write_status(self, by_policy: dict[str, dict[str, FunctionReport]]) -> None:
        assert self.writer is not None and self.resolution is not None
        for name, source in self.sources.items():
            obj = self.watcher.get(name)
            if obj is None:
                self.writer.forget(name)
                continue
            governed = self.resolution.selected.get(name, [])
            await self.writer.write(obj, by_policy.get(name, {}), condition_for(source, governed), set(governed))
