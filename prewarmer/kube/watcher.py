"""Keeps the PrewarmPolicies of one namespace in memory through the official client: list, then watch from the
list's resourceVersion; a watch that ends is resumed from the last resourceVersion seen, and one refused with
410 Gone (the history it asks for was compacted) starts over with a fresh list.

The client blocks, so the watch runs in a daemon thread; the sidecar's loop reads `snapshot()` (a version number
that moves when a spec, a generation or the set of policies changes, and the objects). Status writes come back
as MODIFIED events too: they update the objects (the status writer compares against them) without moving the
version, so they never re-resolve the rules.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from prewarmer.kube.resolve import GROUP, PLURAL, VERSION
from prewarmer.sidecar.logs import log

logger = logging.getLogger("prewarmer.kube")

GONE = 410


class PolicyWatcher:
    """List + watch PrewarmPolicies in `namespace`; `start()` runs it in a thread, `stop()` ends it."""

    def __init__(self, namespace: str, api_client: Any, *, watch_timeout_s: int = 60, retry_s: float = 5.0,
                 request_timeout_s: float = 10.0) -> None:
        self.namespace = namespace
        self.api_client = api_client
        self.watch_timeout_s = int(watch_timeout_s)  # the server ends each watch after this; we resume it
        self.retry_s = retry_s  # after an error other than 410
        self.request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}  # name -> object
        self._version = 0  # moves with specs, generations and membership (not with status)
        self._synced = threading.Event()  # set once the first list has arrived
        self._settled = threading.Event()  # set once the first list has arrived or the API refused us
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.resource_version: str | None = None
        self.lists = 0  # full lists made (1 + relists after 410 Gone or errors)
        self.errors = 0
        self.last_error: str | None = None
        self.refused: str | None = None  # set when the API refused our credentials: the watch has stopped

    # ------------------------------------------------------------------ the sidecar's side
    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """(version, the policies as last seen); the objects are copies."""
        with self._lock:
            return self._version, [copy.deepcopy(o) for o in self._objects.values()]

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get(name)
            return copy.deepcopy(obj) if obj is not None else None

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout_s: float) -> bool:
        """Block until the first list has arrived (True), or the API refused us or `timeout_s` passed (False)."""
        self._settled.wait(timeout_s)
        return self.synced

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"prewarmpolicy-watch-{self.namespace}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()  # shuts the socket down, so the blocked read returns now
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    # ------------------------------------------------------------------ the thread
    def _api(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch_once()
            except ApiException as exc:
                if exc.status == GONE:
                    log(logger, "policy watch expired, listing again", resource_version=self.resource_version)
                    need_list = True
                    continue
                if exc.status in (401, 403):  # retrying cannot help: the sidecar stops and says why
                    self.refused = (f"Kubernetes API refused to list/watch {PLURAL}.{GROUP} in {self.namespace} "
                                    f"(HTTP {exc.status}); check the service account token and the Role "
                                    "prewarmer-policies")
                    self.last_error = self.refused
                    self._settled.set()
                    return
                self._failed(f"HTTP {exc.status}: {exc.reason}", on=self._stop.wait)
                need_list = True
            except Exception as exc:  # noqa: BLE001 - connection errors of urllib3 and friends: retry after a pause
                if self._stop.is_set():
                    break
                self._failed(f"{type(exc).__name__}: {exc}", on=self._stop.wait)
                need_list = True

    def _failed(self, why: str, on: Callable[[float], bool]) -> None:
        self.errors += 1
        self.last_error = why
        log(logger, "policy watch failed, retrying", logging.WARNING, namespace=self.namespace, error=why,
            retry_s=self.retry_s)
        on(self.retry_s)

    def _list(self) -> None:
        result = self._api().list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                           _request_timeout=self.request_timeout_s)
        items = {o["metadata"]["name"]: o for o in result.get("items") or []}
        with self._lock:
            changed = {n: _spec_key(o) for n, o in items.items()} != {n: _spec_key(o) for n, o in
                                                                      self._objects.items()}
            self._objects = items
            if changed or not self._synced.is_set():
                self._version += 1
        self.resource_version = (result.get("metadata") or {}).get("resourceVersion")
        self.lists += 1
        self._synced.set()
        self._settled.set()

    def _watch_once(self) -> None:
        from kubernetes import watch

        self._watch = watch.Watch()
        try:
            # timeout_seconds also turns off the client's own silent retry after 410, which is ours to handle.
            stream = self._watch.stream(
                self._api().list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                resource_version=self.resource_version, timeout_seconds=self.watch_timeout_s,
                allow_watch_bookmarks=True,
                _request_timeout=(self.request_timeout_s, self.watch_timeout_s + self.request_timeout_s))
            for event in stream:
                self._apply(event["type"], event["raw_object"])
                if self._stop.is_set():
                    break
        finally:
            self._watch = None

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        name = meta.get("name")
        with self._lock:
            old = self._objects.get(name)
            if kind == "DELETED":
                if self._objects.pop(name, None) is not None:
                    self._version += 1
            elif kind in ("ADDED", "MODIFIED"):
                self._objects[name] = obj
                if old is None or _spec_key(old) != _spec_key(obj):
                    self._version += 1
        if rv:
            self.resource_version = rv
        log(logger, "policy event", level=logging.DEBUG, type=kind, name=name, resource_version=rv)


def _spec_key(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What the rules depend on: the spec, its generation, and when the object was made (it orders policies)."""
    meta = obj.get("metadata") or {}
    return (meta.get("uid"), meta.get("generation"), meta.get("creationTimestamp"),
            json.dumps(obj.get("spec"), sort_keys=True))
