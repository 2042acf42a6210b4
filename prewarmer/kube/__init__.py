"""PrewarmPolicy custom resources for the sidecar (`prewarmer run --watch-policies`), through the official
`kubernetes` client: `watcher` (list + watch), `resolve` (policies and function annotations into rules and modes),
`status` (merge patches of the status subresource), `control` (all of it bound to the sidecar's loop).
The CRD, its Role and an example are in manifests/ (components/prewarm-policies, examples); docs/kubernetes.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prewarmer.kube.control import PolicyControl, scheduled_part
from prewarmer.kube.status import StatusWriter
from prewarmer.kube.watcher import PolicyWatcher

if TYPE_CHECKING:
    from prewarmer.policies.base import Policy
    from prewarmer.schedules import RuleSet
    from prewarmer.sidecar.metrics import SidecarMetrics


def policy_control(namespace: str, replica: str, metrics: SidecarMetrics, api_client: Any = None, *,
                   clock: Callable[[], float] = time.time, watch_timeout_s: int = 60,
                   status_interval_s: float = 10.0, base_rules: RuleSet | None = None) -> PolicyControl:
    """A PolicyControl for the PrewarmPolicies of `namespace` (on top of `base_rules`, e.g. a schedule file);
    without `api_client`, the in-cluster service account or else the kubeconfig (ValueError, one line, when
    there is neither)."""
    if api_client is None:
        from prewarmer.actuators.base import ActuatorAuthError, load_kube_api_client

        try:
            api_client = load_kube_api_client()
        except ActuatorAuthError as exc:
            raise ValueError(f"--watch-policies: {exc}") from None
    watcher = PolicyWatcher(namespace, api_client, watch_timeout_s=watch_timeout_s)
    writer = StatusWriter(namespace, api_client, replica, min_interval_s=status_interval_s, clock=clock)
    return PolicyControl(watcher, writer, metrics, clock, base_rules)


def with_rules(make_policy: Callable[[], Policy]) -> Callable[[], Policy]:
    """The policy factory, each policy wrapped in a ScheduledPolicy (no rules until the watch delivers some) unless
    it has one already (`--schedule-file`)."""
    from prewarmer.policies.scheduled import ScheduledPolicy
    from prewarmer.schedules import RuleSet

    def build() -> Policy:
        policy = make_policy()
        return policy if scheduled_part(policy) is not None else ScheduledPolicy(policy, RuleSet(rules=[]))

    return build


__all__ = ["PolicyControl", "PolicyWatcher", "StatusWriter", "policy_control", "with_rules"]
