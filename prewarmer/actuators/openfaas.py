"""Actuator for an OpenFaaS gateway: reads /system/functions and posts /system/scale-function/{name}.

Community Edition only accepts 1..5 replicas, so with edition="ce" the actuator clamps itself and says so in the
outcome instead of letting the gateway reject or silently clamp the request.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import aiohttp

from .base import (
    Actuator,
    ActuatorAuthError,
    ActuatorError,
    ActuatorNotFound,
    ActuatorRejected,
    FunctionStatus,
    ScaleOutcome,
    as_float,
    as_int,
    parse_memory_mb,
    prewarmer_annotations,
    string_map,
)

CE_MIN_REPLICAS = 1
CE_MAX_REPLICAS = 5


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from a gateway, fall back to our own backoff


def _basic_auth(username: str, password: str) -> str:
    """The Authorization header value; aiohttp 3.14 deprecates BasicAuth objects in favour of encode_basic_auth."""
    encode = getattr(aiohttp, "encode_basic_auth", None)
    if encode is not None:
        return str(encode(username, password))
    return aiohttp.BasicAuth(username, password).encode()


class OpenFaaSActuator(Actuator):
    """Scales OpenFaaS functions through the gateway's REST API with basic auth."""

    kind = "openfaas"

    def __init__(
        self,
        gateway_url: str,
        username: str,
        password: str,
        namespace: str = "openfaas-fn",
        edition: Literal["pro", "ce"] = "pro",
        timeout_s: float = 10.0,
    ) -> None:
        if edition not in ("pro", "ce"):
            raise ValueError(f"edition must be 'pro' or 'ce', not {edition!r}")
        self.gateway_url = gateway_url.rstrip("/")
        self.username = username
        self._authorization = _basic_auth(username, password)
        self.namespace = namespace
        self.edition = edition
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            # One session for the actuator's life: it keeps the connection pool warm between control ticks.
            self._session = aiohttp.ClientSession(
                headers={"Authorization": self._authorization},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                       body: dict[str, Any] | None = None, function: str | None = None) -> tuple[int, bytes]:
        await self.start()
        assert self._session is not None
        url = self.gateway_url + path
        try:
            # No redirects: the credentials ride on every request and must not follow one to another host.
            async with self._session.request(method, url, params=params, json=body, allow_redirects=False) as resp:
                data = await resp.read()
                status, headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise ActuatorError(f"OpenFaaS gateway {url}: no answer within {self.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ActuatorError(f"OpenFaaS gateway {url}: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return status, data
        detail = data[:200].decode("utf-8", "replace").strip()
        message = f"OpenFaaS gateway {method} {url} answered HTTP {status}" + (f": {detail}" if detail else "")
        if status in (401, 403):
            raise ActuatorAuthError(
                f"OpenFaaS gateway {self.gateway_url} refused the credentials of user {self.username!r} "
                f"(HTTP {status} on {method} {url}); check the gateway basic-auth secret",
                status=status,
            )
        if status == 404:
            what = f"function {function!r}" if function else "resource"
            raise ActuatorNotFound(f"{what} not found: {message}", status=status)
        if status == 429 or status >= 500 or status == 408:
            raise ActuatorError(message, status=status, retry_after_s=_retry_after(headers))
        raise ActuatorRejected(message, status=status)

    async def list_functions(self) -> list[FunctionStatus]:
        params = {"namespace": self.namespace} if self.namespace else None
        _, data = await self._request("GET", "/system/functions", params=params)
        try:
            entries = json.loads(data) if data.strip() else []
        except ValueError as exc:
            # A 200 with HTML usually means a proxy or login page stands in front of the gateway.
            raise ActuatorError(f"OpenFaaS gateway {self.gateway_url}/system/functions did not return JSON") from exc
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise ActuatorError(
                f"OpenFaaS gateway {self.gateway_url}/system/functions returned {type(entries).__name__}, "
                "expected a list"
            )
        return [self._parse_status(e) for e in entries if isinstance(e, dict) and e.get("name")]

    def _parse_status(self, entry: dict[str, Any]) -> FunctionStatus:
        # The gateway is written in Go with omitempty: every number (and limits itself) vanishes when zero/unset.
        limits = entry.get("limits") or {}
        return FunctionStatus(
            name=str(entry["name"]),
            namespace=str(entry.get("namespace") or self.namespace),
            replicas=as_int(entry.get("replicas")),
            available_replicas=as_int(entry.get("availableReplicas")),
            invocation_count=as_float(entry.get("invocationCount")),
            memory_mb=parse_memory_mb(limits.get("memory") or None) if isinstance(limits, dict) else None,
            labels=string_map(entry.get("labels")),
            annotations=prewarmer_annotations(entry.get("annotations")),
        )

    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        namespace = namespace or self.namespace
        target, note = replicas, ""
        if self.edition == "ce":
            # CE rejects 0 and caps at 5; clamping here keeps the outcome honest about what was applied.
            if replicas < CE_MIN_REPLICAS:
                target, note = CE_MIN_REPLICAS, f"requested {replicas}, CE minimum is {CE_MIN_REPLICAS}"
            elif replicas > CE_MAX_REPLICAS:
                target, note = CE_MAX_REPLICAS, f"requested {replicas}, CE maximum is {CE_MAX_REPLICAS}"
        elif replicas < 0:
            target, note = 0, f"requested {replicas}, minimum is 0"
        body = {"serviceName": function, "namespace": namespace, "replicas": target}
        await self._request("POST", f"/system/scale-function/{function}", body=body, function=function)
        return ScaleOutcome(function=function, namespace=namespace, requested=replicas, applied=target, note=note)
