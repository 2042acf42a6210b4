"""Actuator for plain Kubernetes Deployments: one function = one Deployment, warm instances = its replicas.

Scaling goes through the `scale` subresource, so the role needs only `deployments/scale` patch rights, not the
right to rewrite the Deployment. Anything else scaling the same Deployment (an HPA, KEDA) will fight this actuator.
"""

from __future__ import annotations

from typing import Any

from .base import (
    MERGE_PATCH,
    FunctionStatus,
    KubeActuator,
    ScaleOutcome,
    parse_memory_mb,
    prewarmer_annotations,
    string_map,
)


class DeploymentActuator(KubeActuator):
    """Sets `spec.replicas` of Deployments through PATCH .../deployments/{name}/scale."""

    kind = "deployment"

    def __init__(
        self, namespace: str, label_selector: str | None = None, api_client: Any = None, timeout_s: float = 10.0
    ) -> None:
        super().__init__(namespace, api_client, timeout_s)
        self.label_selector = label_selector

    @staticmethod
    def _apps(api_client: Any) -> Any:
        from kubernetes import client

        return client.AppsV1Api(api_client)

    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        namespace = namespace or self.namespace
        target, note = replicas, ""
        if replicas < 0:
            target, note = 0, f"requested {replicas}, minimum is 0"
        result = await self._call(
            f"PATCH deployments/scale {namespace}/{function}",
            self._apps, "patch_namespaced_deployment_scale",
            function, namespace, {"spec": {"replicas": target}},
            # The client's default here is JSON Patch, which it then quietly rewrites to strategic merge for a dict
            # body; say what we send instead of depending on that.
            _content_type=MERGE_PATCH,
        )
        applied = getattr(getattr(result, "spec", None), "replicas", None)
        return ScaleOutcome(
            function=function,
            namespace=namespace,
            requested=replicas,
            applied=target if applied is None else int(applied),
            note=note,
        )

    async def list_functions(self) -> list[FunctionStatus]:
        kwargs = {"label_selector": self.label_selector} if self.label_selector else {}
        result = await self._call(
            f"LIST deployments in {self.namespace}",
            self._apps, "list_namespaced_deployment",
            self.namespace,
            **kwargs,
        )
        out = []
        for dep in result.items or []:
            status = dep.status
            out.append(
                FunctionStatus(
                    name=dep.metadata.name,
                    namespace=dep.metadata.namespace or self.namespace,
                    replicas=int((status and status.replicas) or 0),
                    available_replicas=int((status and status.available_replicas) or 0),
                    invocation_count=0.0,  # a Deployment knows nothing about invocations
                    memory_mb=_memory_of(dep),
                    labels=string_map(dep.metadata.labels),
                    annotations=prewarmer_annotations(dep.metadata.annotations),
                )
            )
        return out


def _memory_of(dep: Any) -> float | None:
    try:
        containers = dep.spec.template.spec.containers or []
    except AttributeError:
        return None
    if not containers or containers[0].resources is None:
        return None
    limits = containers[0].resources.limits or {}
    return parse_memory_mb(limits.get("memory"))
