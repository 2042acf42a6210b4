"""Actuators: apply the sidecar's "hold n warm instances of f" decisions to a serverless platform.

- `openfaas`   OpenFaaS gateway REST API (Pro or Community Edition, which is clamped to 1..5 replicas)
- `knative`    Knative Serving: min-scale annotation on the routed Revision(s) (or their PodAutoscalers)
- `deployment` plain Kubernetes Deployments through the scale subresource
- `dryrun`     records requests, changes nothing

Wrap any of them in `ResilientActuator` for per-function caps, retries and a circuit breaker; `make_actuator`
does so when given `max_replicas`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import (
    Actuator,
    ActuatorAuthError,
    ActuatorError,
    ActuatorNotFound,
    ActuatorRejected,
    FunctionStatus,
    ScaleOutcome,
    parse_memory_mb,
)
from .deployment import DeploymentActuator
from .dryrun import DryRunActuator, DryRunRecord
from .knative import KnativeActuator
from .openfaas import OpenFaaSActuator
from .resilience import CircuitOpenError, ResilientActuator

KINDS: dict[str, type[Actuator]] = {
    "openfaas": OpenFaaSActuator,
    "knative": KnativeActuator,
    "deployment": DeploymentActuator,
    "dryrun": DryRunActuator,
}


def make_actuator(
    kind: str,
    *,
    max_replicas: int | Mapping[str, int] | None = None,
    resilience: Mapping[str, Any] | None = None,
    **options: Any,
) -> Actuator:
    """Build the actuator `kind` from its constructor `options` (e.g. gateway_url=..., namespace=...).

    With `max_replicas` the result is wrapped in a ResilientActuator, configured further by `resilience`
    (retries, backoff_s, breaker_failures, ...). Raises ValueError for an unknown kind or bad options.
    """
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown actuator kind {kind!r}; choose one of {', '.join(sorted(KINDS))}") from None
    try:
        actuator = cls(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for actuator {kind!r}: {exc}") from exc
    if max_replicas is None:
        if resilience:
            raise ValueError("resilience options need max_replicas")
        return actuator
    return ResilientActuator(actuator, max_replicas, **dict(resilience or {}))


__all__ = [
    "KINDS",
    "Actuator",
    "ActuatorAuthError",
    "ActuatorError",
    "ActuatorNotFound",
    "ActuatorRejected",
    "CircuitOpenError",
    "DeploymentActuator",
    "DryRunActuator",
    "DryRunRecord",
    "FunctionStatus",
    "KnativeActuator",
    "OpenFaaSActuator",
    "ResilientActuator",
    "ScaleOutcome",
    "make_actuator",
    "parse_memory_mb",
]
