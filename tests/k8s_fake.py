"""A loopback stand-in for the Kubernetes API server, for tests of code that uses the official `kubernetes` client.

It serves objects it was given (`add`), answers GET item / GET collection / PATCH like the real API (paths,
Status error bodies, 415 for patch types a resource does not accept, merge-patch semantics, the deployments
`scale` subresource, the `status` subresource of custom resources that enable it), streams watches
(`?watch=true` from a resourceVersion, one JSON event per line; an expired resourceVersion gets the ERROR event
with a 410 Status, as kube-apiserver sends it; `update`, `delete` and `compact` drive them), and records every
request as (method, path, content_type, json_body) so tests can assert exactly what was sent — and an RBAC test
can derive the (apiGroup, resource, verb) triples a Role must grant from `rbac_needs()`.

    async with FakeK8sAPI() as api:
        api.add(deployment("fn", "ns", replicas=1))
        client = api.api_client()  # a kubernetes.client.ApiClient pointed at the fake
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any, NamedTuple

from aiohttp import web
from helpers import serve_on_loopback

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# Groups served by kube-apiserver itself (strategic merge patch allowed); everything else is a custom resource.
BUILTIN_GROUPS = {"", "apps", "autoscaling", "batch", "rbac.authorization.k8s.io"}

KIND_TO_PLURAL = {
    ("serving.knative.dev", "Service"): "services",
    ("serving.knative.dev", "Revision"): "revisions",
    ("serving.knative.dev", "Route"): "routes",
    ("serving.knative.dev", "Configuration"): "configurations",
    ("autoscaling.internal.knative.dev", "PodAutoscaler"): "podautoscalers",
    ("apps", "Deployment"): "deployments",
    ("", "Pod"): "pods",
    ("prewarmer.io", "PrewarmPolicy"): "prewarmpolicies",
}
PLURAL_TO_KIND = {(g, p): k for (g, k), p in KIND_TO_PLURAL.items()}
# Custom resources whose CRD enables the status subresource: a PATCH of the object leaves `status` alone, a PATCH of
# `.../status` changes nothing but `status`, and neither of the latter bumps metadata.generation.
STATUS_SUBRESOURCE = {("prewarmer.io", "prewarmpolicies")}


class RecordedRequest(NamedTuple):
    method: str
    path: str
    content_type: str | None
    json_body: Any

    def rbac(self) -> tuple[str, str, str]:
        """(apiGroup, resource[/subresource], verb) an RBAC Role needs to allow this request."""
        parsed = parse_path(self.path)
        if parsed is None:
            return ("", self.path, self.method.lower())
        group, _version, _ns, plural, name, sub = parsed
        resource = f"{plural}/{sub}" if sub else plural
        verb = {
            "GET": "get" if name else "list",
            "PATCH": "patch",
            "PUT": "update",
            "POST": "create",
            "DELETE": "delete" if name else "deletecollection",
        }.get(self.method, self.method.lower())
        return (group, resource, verb)


def parse_path(path: str) -> tuple[str, str, str, str, str | None, str | None] | None:
    """(group, version, namespace, plural, name, subresource) of a namespaced resource path, else None."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if len(rest) < 3 or rest[0] != "namespaces" or len(rest) > 5:
        return None
    ns, plural = rest[1], rest[2]
    name = rest[3] if len(rest) >= 4 else None
    sub = rest[4] if len(rest) == 5 else None
    return group, version, ns, plural, name, sub


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeK8sAPI:
    """Minimal, strict Kubernetes API server on 127.0.0.1 (random port). See the module docstring."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # item path -> object
        self.requests: list[RecordedRequest] = []
        self.queries: list[dict[str, str]] = []  # query parameters of requests[i]
        self._faults: list[tuple[int, str | None, str | None]] = []  # (status, method, path substring)
        self._runner: web.AppRunner | None = None
        self._rv = 1000
        self.url = ""
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (resourceVersion, type, item path, object)
        self._compacted_rv = 0  # watches from a resourceVersion below this get 410 Gone
        self._changed = asyncio.Event()
        self._closing = False

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.url = await serve_on_loopback(app, access_log=None)
        return self.url

    async def stop(self) -> None:
        self._closing = True
        self._notify()  # open watches end their streams, so that cleanup does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeK8sAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def api_client(self) -> Any:
        """A kubernetes ApiClient talking to this fake (no retries, so tests see every failure once)."""
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        configuration.retries = False  # urllib3 would otherwise retry connection errors behind our back
        return client.ApiClient(configuration)

    # --- test setup and inspection ---------------------------------------------------------------------------

    def add(self, obj: dict[str, Any]) -> str:
        """Store an object (apiVersion, kind, metadata.name/namespace required); returns its item path."""
        api_version = obj["apiVersion"]
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        plural = KIND_TO_PLURAL[(group, obj["kind"])]
        meta = obj["metadata"]
        prefix = f"/apis/{api_version}" if group else f"/api/{api_version}"
        path = f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("resourceVersion", str(self._next_rv()))
        stored["metadata"].setdefault("generation", 1)
        self._changed_object("MODIFIED" if path in self.objects else "ADDED", path, stored)
        return path

    def update(self, path: str, change: dict[str, Any]) -> dict[str, Any]:
        """Merge `change` into a stored object as a client's update would (generation follows the spec)."""
        obj = self.objects[path]
        updated = merge_patch(obj, change)
        if updated.get("spec") != obj.get("spec"):
            updated["metadata"]["generation"] = obj["metadata"]["generation"] + 1
        updated["metadata"]["resourceVersion"] = str(self._next_rv())
        self._changed_object("MODIFIED", path, updated)
        return updated

    def delete(self, path: str) -> None:
        obj = self.objects.pop(path)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._next_rv())
        self.events.append((int(gone["metadata"]["resourceVersion"]), "DELETED", path, gone))
        self._notify()

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: a watch from an older resourceVersion gets 410 Gone."""
        self._compacted_rv = self._next_rv()
        self.events.clear()

    def _changed_object(self, kind: str, path: str, obj: dict[str, Any]) -> None:
        self.objects[path] = obj
        self.events.append((int(obj["metadata"]["resourceVersion"]), kind, path, copy.deepcopy(obj)))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def get(self, path: str) -> dict[str, Any]:
        return self.objects[path]

    def fail_next(
        self, status: int, *, times: int = 1, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Answer the next `times` matching requests with `status` (a Status body) instead of serving them."""
        self._faults.extend([(status, method, path_contains)] * times)

    def clear_faults(self) -> None:
        """Serve normally again (faults from `fail_next` not used yet are dropped)."""
        self._faults.clear()

    def requests_to(self, method: str | None = None, path_contains: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if (method is None or r.method == method) and path_contains in r.path]

    def rbac_needs(self) -> set[tuple[str, str, str]]:
        return {r.rbac() for r in self.requests}

    # --- serving ---------------------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ctype = request.headers.get("Content-Type")
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        self.requests.append(RecordedRequest(request.method, request.path, ctype.split(";")[0] if ctype else None,
                                             body))
        self.queries.append(dict(request.query))
        for i, (status, method, part) in enumerate(self._faults):
            if (method is None or method == request.method) and (part is None or part in request.path):
                del self._faults[i]
                return self._error(status, {401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests",
                                            404: "NotFound"}.get(status, "InternalError"), f"injected {status}")
        if bad_json:
            return self._error(400, "BadRequest", "request body is not JSON")
        parsed = parse_path(request.path)
        if parsed is None:
            return self._error(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        group, _version, ns, plural, name, sub = parsed
        if request.method == "GET":
            if name is None and request.query.get("watch") in ("1", "true"):
                return await self._watch(request)
            if name is None:
                return self._list(request, group, ns, plural)
            return self._get(request.path, plural, name, sub)
        if request.method == "PATCH" and name is not None:
            return self._patch(request.path, group, plural, name, sub, ctype, body)
        return self._error(405, "MethodNotAllowed", f"the fake does not serve {request.method} {request.path}")

    def _error(self, code: int, reason: str, message: str) -> web.Response:
        return web.json_response(status_body(code, reason, message), status=code)

    def _item_path(self, path: str, sub: str | None) -> str:
        return path.rsplit("/", 1)[0] if sub else path

    def _not_found(self, plural: str, group: str, name: str) -> web.Response:
        resource = f"{plural}.{group}" if group else plural
        return self._error(404, "NotFound", f'{resource} "{name}" not found')

    def _get(self, path: str, plural: str, name: str, sub: str | None) -> web.Response:
        item_path = self._item_path(path, sub)
        group = parse_path(path)[0]  # type: ignore[index]
        obj = self.objects.get(item_path)
        if obj is None:
            return self._not_found(plural, group, name)
        if sub == "scale" and plural == "deployments":
            return web.json_response(self._scale_view(obj))
        if sub is not None:
            return self._error(404, "NotFound", f"subresource {sub} not served")
        return web.json_response(obj)

    @staticmethod
    def _selects(request: web.Request, path: str, obj: dict[str, Any]) -> bool:
        """Whether the collection (and labelSelector, equality terms) of `request` includes the object at `path`."""
        prefix = request.path.rstrip("/") + "/"
        if not path.startswith(prefix) or "/" in path[len(prefix):]:
            return False
        wanted = {}
        selector = request.query.get("labelSelector")
        if selector:
            for term in selector.split(","):
                key, _, value = term.partition("=")
                wanted[key.strip()] = value.strip().lstrip("=")
        labels = obj["metadata"].get("labels") or {}
        return all(labels.get(k) == v for k, v in wanted.items())

    def _list(self, request: web.Request, group: str, ns: str, plural: str) -> web.Response:
        items = [obj for path, obj in sorted(self.objects.items()) if self._selects(request, path, obj)]
        api_version = request.path.split("/namespaces/")[0].removeprefix("/apis/").removeprefix("/api/")
        kind = PLURAL_TO_KIND.get((group, plural), plural.capitalize()) + "List"
        return web.json_response({"apiVersion": api_version, "kind": kind,
                                  "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._stream_events(request)
        except ConnectionResetError:  # the client hung up (a watch being stopped): nothing more to send
            return web.StreamResponse()

    async def _stream_events(self, request: web.Request) -> web.StreamResponse:
        """A watch: the events after `resourceVersion` (unset or "0": ADDED for every object first), one JSON object
        per line, until `timeoutSeconds` pass or the server stops. A resourceVersion older than the last compaction
        gets one ERROR event holding a 410 Status, and the stream ends, as kube-apiserver does."""
        rv = request.query.get("resourceVersion", "")
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if rv in ("", "0"):
            since = self._rv
            for path, obj in sorted(self.objects.items()):
                if self._selects(request, path, obj):
                    await send("ADDED", obj)
        elif int(rv) < self._compacted_rv:
            await send("ERROR", status_body(410, "Expired", f"too old resource version: {rv} ({self._compacted_rv})"))
            await response.write_eof()
            return response
        else:
            since = int(rv)
        while not self._closing:
            for event_rv, kind, path, obj in list(self.events):
                if event_rv > since and self._selects(request, path, obj):
                    await send(kind, obj)
            since = max([since, *(e[0] for e in self.events)])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        await response.write_eof()
        return response

    def _patch(self, path: str, group: str, plural: str, name: str, sub: str | None, ctype: str | None,
               body: Any) -> web.Response:
        media = (ctype or "").split(";")[0].strip()
        accepted = [JSON_PATCH, MERGE, "application/apply-patch+yaml"]
        if group in BUILTIN_GROUPS:
            accepted.insert(2, STRATEGIC)
        if media not in accepted:
            # What kube-apiserver says for e.g. strategic merge patch on a custom resource.
            return self._error(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted media types include: "
                               f"{', '.join(accepted)}")
        if media != MERGE and media != STRATEGIC:
            return self._error(500, "InternalError", f"the fake does not implement {media}")
        if not isinstance(body, dict):
            return self._error(400, "BadRequest", "a merge patch must be a JSON object")
        item_path = self._item_path(path, sub)
        obj = self.objects.get(item_path)
        if obj is None:
            return self._not_found(plural, group, name)
        if plural == "revisions" and "spec" in body:
            # Knative's webhook: a Revision's spec is immutable once created.
            return self._error(422, "Invalid", f'admission webhook denied the request: Immutable fields changed: '
                                               f'revisions "{name}" spec')
        if sub == "scale" and plural == "deployments":
            scale = merge_patch(self._scale_view(obj), body)
            replicas = (scale.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or replicas < 0:
                return self._error(422, "Invalid", f"Scale.autoscaling \"{name}\" is invalid: spec.replicas")
            obj["spec"]["replicas"] = replicas
            obj["metadata"]["resourceVersion"] = str(self._next_rv())
            obj["metadata"]["generation"] += 1
            self._changed_object("MODIFIED", item_path, obj)
            return web.json_response(self._scale_view(obj))
        has_status = (group, plural) in STATUS_SUBRESOURCE
        if sub == "status" and has_status:
            # Only status changes through the status subresource; the rest of the body is ignored.
            updated = copy.deepcopy(obj)
            if "status" in body:
                updated["status"] = merge_patch(obj.get("status") or {}, body["status"])
        elif sub is not None:
            return self._error(404, "NotFound", f"subresource {sub} not served")
        else:
            updated = merge_patch(obj, {k: v for k, v in body.items() if k != "status" or not has_status})
        if updated.get("spec") != obj.get("spec"):
            updated["metadata"]["generation"] = obj["metadata"]["generation"] + 1
        updated["metadata"]["resourceVersion"] = str(self._next_rv())
        self._changed_object("MODIFIED", item_path, updated)
        return web.json_response(updated)

    @staticmethod
    def _scale_view(dep: dict[str, Any]) -> dict[str, Any]:
        meta = dep["metadata"]
        labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", ""),
                         "resourceVersion": meta["resourceVersion"]},
            "spec": {"replicas": (dep.get("spec") or {}).get("replicas", 0)},
            "status": {"replicas": (dep.get("status") or {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))},
        }


# --- realistic objects -----------------------------------------------------------------------------------------


def knative_service(name: str, namespace: str, *, traffic: list[dict[str, Any]] | None = None,
                    latest_ready: str | None = None, memory: str | None = "256Mi") -> dict[str, Any]:
    """A serving.knative.dev/v1 Service as the API returns it, with `status.traffic` when given."""
    resources = {"limits": {"memory": memory, "cpu": "500m"}} if memory else {}
    status: dict[str, Any] = {
        "observedGeneration": 2,
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
                       for t in ("ConfigurationsReady", "Ready", "RoutesReady")],
        "url": f"http://{name}.{namespace}.example.com",
        "address": {"url": f"http://{name}.{namespace}.svc.cluster.local"},
    }
    if latest_ready:
        status["latestReadyRevisionName"] = latest_ready
        status["latestCreatedRevisionName"] = latest_ready
    if traffic is not None:
        status["traffic"] = traffic
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 2,
                     "annotations": {"serving.knative.dev/creator": "admin"}},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/target": "10"}},
                "spec": {"containerConcurrency": 0, "timeoutSeconds": 300,
                         "containers": [{"name": "user-container", "image": f"registry.example/{name}:v2",
                                         "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                         "resources": resources}]},
            },
            "traffic": [{"latestRevision": True, "percent": 100}],
        },
        "status": status,
    }


def knative_revision(name: str, namespace: str, service: str, *, actual_replicas: int | None = None,
                     min_scale: str | None = None) -> dict[str, Any]:
    """A serving.knative.dev/v1 Revision; `actual_replicas=None` leaves the field out, as Knative does for 0."""
    annotations = {"serving.knative.dev/creator": "admin"}
    if min_scale is not None:
        annotations["autoscaling.knative.dev/min-scale"] = min_scale
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "user-container", "imageDigest": "registry.example/x@sha256:00"}],
    }
    if actual_replicas is not None:
        status["actualReplicas"] = actual_replicas
        status["desiredReplicas"] = actual_replicas
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1,
                     "labels": {"serving.knative.dev/service": service, "serving.knative.dev/configuration": service},
                     "annotations": annotations},
        "spec": {"containerConcurrency": 0, "timeoutSeconds": 300,
                 "containers": [{"name": "user-container", "image": "registry.example/x@sha256:00"}]},
        "status": status,
    }


def knative_podautoscaler(name: str, namespace: str) -> dict[str, Any]:
    """An autoscaling.internal.knative.dev/v1alpha1 PodAutoscaler, named like its revision."""
    return {
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-pa-{name}", "generation": 1,
                     "annotations": {"autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev"}},
        "spec": {"protocolType": "http1", "reachability": "Reachable",
                 "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{name}-deployment"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "serviceName": name},
    }


def deployment(name: str, namespace: str, *, replicas: int = 1, available: int | None = None,
               memory: str | None = "128Mi", labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An apps/v1 Deployment; `available=None` omits status.availableReplicas, as the API does for 0."""
    labels = {"app": name, **(labels or {})}
    container: dict[str, Any] = {"name": name, "image": f"registry.example/{name}:1", "resources": {}}
    if memory:
        container["resources"] = {"limits": {"memory": memory}, "requests": {"memory": memory}}
    status: dict[str, Any] = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas}
    if available is not None:
        status["availableReplicas"] = available
        status["readyReplicas"] = available
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}},
        "status": status,
    }
