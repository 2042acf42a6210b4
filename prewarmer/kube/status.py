"""Writes what the sidecar decided into PrewarmPolicy status: a JSON merge patch of the `status` subresource, only
when it would change what the resource shows, and at most once per `min_interval_s` per resource.

`status.functions` is a map keyed by function name, not a list: every sidecar replica owns some shards and writes
only its own functions, and a merge patch merges map keys (a list would be replaced whole, each replica erasing
the other's). A replica deletes (null) the keys it wrote and no longer decides for, and any key of a function
the policy no longer governs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prewarmer.kube.resolve import GROUP, PLURAL, VERSION
from prewarmer.sidecar.logs import log

logger = logging.getLogger("prewarmer.kube")

MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class FunctionReport:
    """One function's line in status.functions."""

    predicted: int  # instances the policy's model holds now
    desired: int  # replicas the sidecar asks for (Preview: would ask for)
    applied: bool  # Auto, and this count was the last one sent to the platform

    def as_status(self, replica: str) -> dict[str, Any]:
        return {"predictedReplicas": self.predicted, "desiredReplicas": self.desired, "applied": self.applied,
                "replica": replica}


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False"
    reason: str
    message: str


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    """Patches PrewarmPolicy status for one sidecar replica; see the module docstring."""

    def __init__(self, namespace: str, api_client: Any, replica: str, *, min_interval_s: float = 10.0,
                 clock: Callable[[], float], request_timeout_s: float = 10.0) -> None:
        self.namespace = namespace
        self.api_client = api_client
        self.replica = replica
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.request_timeout_s = request_timeout_s
        self._written: dict[str, dict[str, Any]] = {}  # policy name -> the content last written (no timestamps)
        self._written_at: dict[str, float] = {}
        self._written_over: dict[str, str | None] = {}  # policy name -> resourceVersion our last write was made on
        self.patches = 0
        self.failures = 0

    def _api(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    async def write(self, obj: dict[str, Any], functions: dict[str, FunctionReport], condition: Condition,
                    governed: set[str] | frozenset[str] = frozenset()) -> bool:
        """Bring the status of `obj` (the policy as last watched) to these functions and condition; True if a
        patch was sent. Skipped when the resource already shows it, or was written less than min_interval_s ago.
        Entries are deleted when this replica wrote them and no longer decides for them, or when the policy no longer
        governs the function (`governed`: every function it does, on any replica)."""
        meta = obj.get("metadata") or {}
        name, generation = meta["name"], int(meta.get("generation") or 0)
        shown = obj.get("status") or {}
        shown_functions = shown.get("functions") or {}
        wanted = {f: r.as_status(self.replica) for f, r in functions.items()}
        gone = {f for f, v in shown_functions.items() if f not in wanted and (
            f not in governed or (v or {}).get("replica") == self.replica)}
        ready = next((c for c in shown.get("conditions") or [] if c.get("type") == "Ready"), None)
        same_condition = ready is not None and (ready.get("status"), ready.get("reason"), ready.get("message"),
                                                ready.get("observedGeneration")) == (
            condition.status, condition.reason, condition.message, generation)
        content = {"generation": generation, "functions": wanted, "condition": condition}
        shows_it = (not gone and same_condition and shown.get("observedGeneration") == generation
                    and all(shown_functions.get(f) == v for f, v in wanted.items()))
        if shows_it:
            return False
        if self._written.get(name) == content and self._written_over.get(name) == meta.get("resourceVersion"):
            return False  # the watch has not delivered our last write yet: the object it shows predates it

        now = self.clock()
        if now - self._written_at.get(name, -float("inf")) < self.min_interval_s:
            return False
        transition = ready.get("lastTransitionTime") if ready and ready.get("status") == condition.status else None
        body = {"status": {
            "observedGeneration": generation,
            "lastDecision": rfc3339(now),
            "functions": {**wanted, **{f: None for f in gone}},
            "conditions": [{"type": "Ready", "status": condition.status, "reason": condition.reason,
                            "message": condition.message, "observedGeneration": generation,
                            "lastTransitionTime": transition or rfc3339(now)}],
        }}
        try:
            await asyncio.to_thread(self._api().patch_namespaced_custom_object_status, GROUP, VERSION,
                                    self.namespace, PLURAL, name, body, _content_type=MERGE_PATCH,
                                    _request_timeout=self.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 - ApiException or a connection error: tried again next time
            self.failures += 1
            log(logger, "policy status not written", logging.WARNING, policy=name, error=_short(exc))
            self._written_at[name] = now  # a failing API is not hammered every iteration either
            return False
        self.patches += 1
        self._written[name] = content
        self._written_at[name] = now
        self._written_over[name] = meta.get("resourceVersion")
        return True

    def forget(self, name: str) -> None:
        """The policy is gone: nothing to write or delete there any more."""
        for table in (self._written, self._written_at, self._written_over):
            table.pop(name, None)


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}: {getattr(exc, 'reason', '')}"
    return f"{type(exc).__name__}: {exc}"
