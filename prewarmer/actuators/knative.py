"""Actuator for Knative Serving: holds warm pods by setting `autoscaling.knative.dev/min-scale` on routed Revisions.

The Service template is never touched, because any change there stamps out a new Revision (a rollout) instead of
warming the running one. Serving >= 1.21 honours min-scale edited on the Revision itself; older Serving only reads
it from the PodAutoscaler (same name as the revision), which `target="podautoscaler"` patches instead.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from .base import (
    MERGE_PATCH,
    ActuatorRejected,
    FunctionStatus,
    KubeActuator,
    ScaleOutcome,
    as_int,
    parse_memory_mb,
    prewarmer_annotations,
    string_map,
)

SERVING_GROUP, SERVING_VERSION = "serving.knative.dev", "v1"
PA_GROUP, PA_VERSION = "autoscaling.internal.knative.dev", "v1alpha1"
MIN_SCALE = "autoscaling.knative.dev/min-scale"


def routed_revisions(service: dict[str, Any]) -> dict[str, int]:
    """Revision name -> percent of traffic, for the revisions that actually receive traffic.

    `status.traffic` has revisionName resolved even for `latestRevision: true` targets; entries at 0% (e.g. tagged
    previews) receive no regular traffic and are left alone. Without a traffic block, the latest ready revision
    gets everything.
    """
    status = service.get("status") or {}
    traffic = status.get("traffic")
    if traffic:
        routed: dict[str, int] = {}
        for target in traffic:
            name, percent = target.get("revisionName"), as_int(target.get("percent"))
            if name and percent > 0:
                routed[name] = routed.get(name, 0) + percent  # one revision may appear under several tags
        return routed
    latest = status.get("latestReadyRevisionName")
    return {latest: 100} if latest else {}


def split_by_traffic(replicas: int, routed: dict[str, int]) -> dict[str, int]:
    """Share `replicas` among revisions in proportion to traffic, summing exactly to `replicas`.

    Largest-remainder rounding keeps the total equal to what was asked (and to any per-function cap upstream)
    rather than rounding every share up.
    """
    total = sum(routed.values())
    quotas = {name: replicas * pct / total for name, pct in routed.items()}
    shares = {name: math.floor(q) for name, q in quotas.items()}
    left = replicas - sum(shares.values())
    for name in sorted(routed, key=lambda n: (-(quotas[n] - shares[n]), -routed[n], n))[:left]:
        shares[name] += 1
    return shares


def _memory_of(template_spec: dict[str, Any]) -> float | None:
    containers = template_spec.get("containers") or []
    if not containers:
        return None
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    return parse_memory_mb(limits.get("memory"))


class KnativeActuator(KubeActuator):
    """Sets min-scale on the Revision(s) a Knative Service routes traffic to."""

    kind = "knative"

    def __init__(
        self,
        namespace: str,
        target: Literal["revision", "podautoscaler"] = "revision",
        api_client: Any = None,
        timeout_s: float = 10.0,
    ) -> None:
        if target not in ("revision", "podautoscaler"):
            raise ValueError(f"target must be 'revision' or 'podautoscaler', not {target!r}")
        super().__init__(namespace, api_client, timeout_s)
        self.target = target

    @staticmethod
    def _custom(api_client: Any) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(api_client)

    async def _get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(
            f"GET services.{SERVING_GROUP} {namespace}/{name}",
            self._custom, "get_namespaced_custom_object",
            SERVING_GROUP, SERVING_VERSION, namespace, "services", name,
        )

    async def _list(self, namespace: str, plural: str) -> list[dict[str, Any]]:
        result = await self._call(
            f"LIST {plural}.{SERVING_GROUP} in {namespace}",
            self._custom, "list_namespaced_custom_object",
            SERVING_GROUP, SERVING_VERSION, namespace, plural,
        )
        return list((result or {}).get("items") or [])

    async def _patch_min_scale(self, namespace: str, revision: str, replicas: int) -> None:
        group, version, plural = (
            (SERVING_GROUP, SERVING_VERSION, "revisions")
            if self.target == "revision"
            else (PA_GROUP, PA_VERSION, "podautoscalers")
        )
        body = {"metadata": {"annotations": {MIN_SCALE: str(replicas)}}}
        await self._call(
            f"PATCH {plural}.{group} {namespace}/{revision}",
            self._custom, "patch_namespaced_custom_object",
            group, version, namespace, plural, revision, body,
            # Forced: custom resources accept neither strategic merge patch (415) nor a JSON Patch built from a dict,
            # and the content type the client picks by default has changed between client versions.
            _content_type=MERGE_PATCH,
        )

    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        namespace = namespace or self.namespace
        target, note = replicas, ""
        if replicas < 0:
            target, note = 0, f"requested {replicas}, minimum is 0"
        service = await self._get_service(namespace, function)
        routed = routed_revisions(service)
        if not routed:
            raise ActuatorRejected(
                f"Knative service {namespace}/{function} routes no traffic to a ready revision yet; "
                "nothing to keep warm"
            )
        # Revisions that lost all traffic keep their old annotation, which is harmless: Knative marks them
        # unreachable and scales them to zero regardless of min-scale.
        shares = split_by_traffic(target, routed)
        for revision, share in sorted(shares.items()):
            await self._patch_min_scale(namespace, revision, share)
        if len(shares) > 1:
            split = ", ".join(f"{rev}={n}" for rev, n in sorted(shares.items()))
            note = "; ".join(filter(None, [note, f"split by traffic over {split}"]))
        return ScaleOutcome(function=function, namespace=namespace, requested=replicas, applied=target, note=note)

    async def list_functions(self) -> list[FunctionStatus]:
        services = await self._list(self.namespace, "services")
        # One list of revisions instead of one GET per service: fewer round trips and a single RBAC verb (list).
        revisions = {
            (r.get("metadata") or {}).get("name"): r for r in await self._list(self.namespace, "revisions")
        }
        out = []
        for service in services:
            meta = service.get("metadata") or {}
            routed = routed_revisions(service)
            actual = sum(
                as_int(((revisions.get(name) or {}).get("status") or {}).get("actualReplicas")) for name in routed
            )
            template_spec = (((service.get("spec") or {}).get("template") or {}).get("spec")) or {}
            out.append(
                FunctionStatus(
                    name=str(meta.get("name")),
                    namespace=str(meta.get("namespace") or self.namespace),
                    replicas=actual,
                    available_replicas=actual,
                    invocation_count=0.0,  # Knative keeps no invocation counter in its API objects
                    memory_mb=_memory_of(template_spec),
                    labels=string_map(meta.get("labels")),
                    annotations=prewarmer_annotations(meta.get("annotations")),
                )
            )
        return out
