"""`--schedule-file` live: keeps every owned shard's policy under the file's current warm-floor rules.

Each loop iteration `sync`: reloads the file when it changed (a bad edit is logged and the last good rules
stay), gives the rules to every shard's `ScheduledPolicy` that does not hold them yet (a shard restored from a
checkpoint carries the rules it was saved with; one saved without rules gets wrapped, keeping what its policy
learned), and, after a new platform list, updates the functions' labels and matches them to the rules again.
(With `--watch-policies` the Kubernetes control does all of this instead, on top of the same file.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prewarmer.schedules import RuleSet, ScheduleError, load_rules
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.shards import OwnedShards

logger = logging.getLogger("prewarmer.sidecar")


def scheduled_part(policy: object) -> object | None:
    """The `ScheduledPolicy` a shard's policy is or wraps, if any."""
    from prewarmer.policies.scheduled import ScheduledPolicy

    while policy is not None:
        if isinstance(policy, ScheduledPolicy):
            return policy
        policy = getattr(policy, "inner", None)
    return None


class RulesFile:
    def __init__(self, path: str | Path, rules: RuleSet | None = None, check_every_s: float = 5.0) -> None:
        self.path = Path(path)
        self.mtime = self._mtime()
        self.rules = rules if rules is not None else load_rules(self.path)
        self.check_every_s = check_every_s
        self.checked_at = -float("inf")
        self.listed_at = -float("inf")

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def reload(self, real_now: float) -> bool:
        """Load the file again if it changed since it was last read; True if the rules changed."""
        if real_now - self.checked_at < self.check_every_s:
            return False
        self.checked_at = real_now
        mtime = self._mtime()
        if mtime == self.mtime:
            return False
        self.mtime = mtime
        try:
            rules = load_rules(self.path)
        except ScheduleError as e:
            log(logger, "schedule file not reloaded, keeping the last good rules", logging.WARNING, error=str(e))
            return False
        changed = rules != self.rules
        if changed:
            self.rules = rules
            log(logger, "schedule file reloaded", rules=len(rules.rules))
        return changed

    def sync(self, slots: OwnedShards, real_now: float, functions: dict, listed_at: float) -> None:
        """Every owned shard's policy under the current rules; labels from the platform list `functions` (by
        name, `FunctionStatus`) when it was read at a new `listed_at`."""
        from prewarmer.policies.scheduled import ScheduledPolicy

        self.reload(real_now)
        relabel = listed_at != self.listed_at
        self.listed_at = listed_at
        for slot in slots.values():
            agent = slot.agent
            if agent.policy is None:
                continue
            changed_labels = False
            if relabel:
                for i, name in enumerate(agent.names):
                    st = functions.get(name)
                    if st is not None and st.labels != agent.labels[i]:
                        agent.labels[i] = dict(st.labels)
                        changed_labels = True
            scheduled = scheduled_part(agent.policy)
            if scheduled is None:
                scheduled = ScheduledPolicy(agent.policy, self.rules)
                scheduled.attach(agent.table())
                agent.policy = scheduled
                agent.next_tick = -float("inf")  # a policy that acted only at reset (fixed) never ticked again
                continue
            if scheduled.rules is not self.rules:
                scheduled.set_rules(self.rules)
            if changed_labels:
                scheduled.bind_functions(agent.table())
