"""Actuators against loopback servers: an OpenFaaS gateway played by aiohttp, and the Kubernetes API played by
k8s_fake.FakeK8sAPI, driven by the real `kubernetes` client. Time (backoff sleeps, breaker clock) is faked."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import serve_on_loopback
from k8s_fake import (
    MERGE,
    FakeK8sAPI,
    deployment,
    knative_podautoscaler,
    knative_revision,
    knative_service,
)

from prewarmer.actuators import (
    ActuatorAuthError,
    ActuatorError,
    ActuatorNotFound,
    ActuatorRejected,
    CircuitOpenError,
    DeploymentActuator,
    DryRunActuator,
    FunctionStatus,
    KnativeActuator,
    OpenFaaSActuator,
    ResilientActuator,
    ScaleOutcome,
    make_actuator,
    parse_memory_mb,
)
from prewarmer.actuators.knative import split_by_traffic

# --- fakes for time --------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    """Records requested delays and returns at once: tests never wait on real time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def resilient(inner: Any, max_replicas: Any = 100, **kw: Any) -> tuple[ResilientActuator, FakeClock, FakeSleep]:
    clock, sleep = FakeClock(), FakeSleep()
    kw.setdefault("rng", random.Random(7))
    return ResilientActuator(inner, max_replicas, clock=clock, sleep=sleep, **kw), clock, sleep


# --- OpenFaaS gateway fake -------------------------------------------------------------------------------------


class FakeGateway:
    """An OpenFaaS gateway with basic auth; `scale_statuses` is a queue of HTTP statuses for the next scale calls."""

    def __init__(self, functions: list[dict[str, Any]] | None = None, user: str = "admin", password: str = "s3cret"):
        self.functions = functions or []
        self.expected_auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.scale_statuses: list[int] = []
        self.default_scale_status = 202
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeGateway:
        app = web.Application()
        app.router.add_get("/system/functions", self._functions)
        app.router.add_post("/system/scale-function/{name}", self._scale)
        self._runner, self.url = await serve_on_loopback(app, access_log=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _record(self, request: web.Request) -> web.Response | None:
        raw = await request.read()
        self.requests.append({
            "method": request.method, "path": request.path, "query": dict(request.query),
            "content_type": request.content_type, "body": json.loads(raw) if raw else None,
        })
        if request.headers.get("Authorization") != self.expected_auth:
            return web.Response(status=401, text="invalid credentials", headers={"WWW-Authenticate": "Basic"})
        return None

    async def _functions(self, request: web.Request) -> web.Response:
        return await self._record(request) or web.json_response(self.functions)

    async def _scale(self, request: web.Request) -> web.Response:
        denied = await self._record(request)
        if denied:
            return denied
        status = self.scale_statuses.pop(0) if self.scale_statuses else self.default_scale_status
        if status == 429:
            return web.Response(status=429, text="slow down", headers={"Retry-After": "2"})
        if status == 404:
            return web.Response(status=404, text=f"deployment not found: {request.match_info['name']}")
        return web.Response(status=status, text="" if status < 300 else "upstream unavailable")

    @property
    def scale_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith("/system/scale-function/")]


# Entries as the Go gateway encodes them: zero-valued numbers and empty limits are simply absent.
GATEWAY_FUNCTIONS = [
    {"name": "figlet", "image": "ghcr.io/openfaas/figlet:latest", "namespace": "openfaas-fn",
     "replicas": 2, "availableReplicas": 1, "invocationCount": 1234.0,
     "labels": {"faas_function": "figlet"}, "annotations": {}, "limits": {"memory": "128Mi"},
     "createdAt": "2025-01-01T00:00:00Z"},
    {"name": "idle", "image": "ghcr.io/openfaas/idle:latest", "namespace": "openfaas-fn",
     "createdAt": "2025-01-01T00:00:00Z"},
    {"name": "big", "image": "big:1", "replicas": 1, "limits": {"memory": "1Gi", "cpu": "1"},
     "invocationCount": 7},
]


@pytest.fixture
async def gateway():
    async with FakeGateway(GATEWAY_FUNCTIONS) as gw:
        yield gw


def openfaas(gw: FakeGateway, **kw: Any) -> OpenFaaSActuator:
    kw.setdefault("password", "s3cret")
    return OpenFaaSActuator(gw.url, "admin", **kw)


@pytest.mark.parametrize(
    ("quantity", "mib"),
    [("128Mi", 128.0), ("1Gi", 1024.0), ("512M", 512e6 / 2**20), ("134217728", 128.0), ("1.5Gi", 1536.0),
     ("256Ki", 0.25), ("1e9", 1e9 / 2**20), (134217728, 128.0), ("", None), (None, None), ("lots", None)],
)
def test_parse_memory_mb(quantity: Any, mib: float | None) -> None:
    assert parse_memory_mb(quantity) == (pytest.approx(mib) if mib is not None else None)


async def test_openfaas_lists_functions_with_omitted_fields(gateway: FakeGateway) -> None:
    async with openfaas(gateway, namespace="openfaas-fn") as act:
        functions = await act.list_functions()
    assert functions == [
        FunctionStatus("figlet", "openfaas-fn", 2, 1, 1234.0, 128.0),
        FunctionStatus("idle", "openfaas-fn", 0, 0, 0.0, None),
        FunctionStatus("big", "openfaas-fn", 1, 0, 7.0, 1024.0),  # namespace absent: the one we asked for
    ]
    assert gateway.requests[0]["query"] == {"namespace": "openfaas-fn"}


async def test_openfaas_null_function_list_is_empty(gateway: FakeGateway) -> None:
    gateway.functions = None  # type: ignore[assignment]  # json null, as an empty Go slice may encode
    async with openfaas(gateway) as act:
        assert await act.list_functions() == []


async def test_openfaas_scale_request_shape(gateway: FakeGateway) -> None:
    async with openfaas(gateway, namespace="team-a") as act:
        outcome = await act.scale("figlet", "team-a", 4)
    assert outcome == ScaleOutcome("figlet", "team-a", 4, 4, "")
    [req] = gateway.scale_requests
    assert req["method"] == "POST"
    assert req["path"] == "/system/scale-function/figlet"
    assert req["content_type"] == "application/json"
    assert req["body"] == {"serviceName": "figlet", "namespace": "team-a", "replicas": 4}


@pytest.mark.parametrize(
    ("requested", "sent", "note"),
    [(0, 1, "requested 0, CE minimum is 1"), (9, 5, "requested 9, CE maximum is 5"), (3, 3, "")],
)
async def test_openfaas_ce_clamps_and_says_so(gateway: FakeGateway, requested: int, sent: int, note: str) -> None:
    async with openfaas(gateway, edition="ce") as act:
        outcome = await act.scale("figlet", "openfaas-fn", requested)
    assert (outcome.requested, outcome.applied, outcome.note) == (requested, sent, note)
    assert gateway.scale_requests[0]["body"]["replicas"] == sent


async def test_openfaas_wrong_credentials_fail_once_with_clear_message(gateway: FakeGateway) -> None:
    act, _, sleep = resilient(openfaas(gateway, password="wrong"), retries=5)
    async with act:
        with pytest.raises(ActuatorAuthError) as info:
            await act.scale("figlet", "openfaas-fn", 2)
    message = str(info.value)
    assert "refused the credentials" in message and gateway.url in message and "admin" in message
    assert "wrong" not in message  # the password never ends up in logs
    assert len(gateway.requests) == 1 and sleep.delays == []
    assert act.state()["breaker"] == "closed"


async def test_openfaas_wrong_credentials_on_listing(gateway: FakeGateway) -> None:
    async with openfaas(gateway, password="nope") as act:
        with pytest.raises(ActuatorAuthError, match="refused the credentials"):
            await act.list_functions()


async def test_transient_503_is_retried_then_succeeds(gateway: FakeGateway) -> None:
    gateway.scale_statuses = [503, 200]
    act, _, sleep = resilient(openfaas(gateway), retries=3, backoff_s=0.2)
    async with act:
        outcome = await act.scale("figlet", "openfaas-fn", 3)
    assert outcome.applied == 3
    assert len(gateway.scale_requests) == 2
    assert len(sleep.delays) == 1 and 0.1 <= sleep.delays[0] <= 0.2  # first backoff, with jitter
    assert act.last_applied[("openfaas-fn", "figlet")] == 3
    assert act.state()["consecutive_failures"] == 0


async def test_retry_after_is_honoured(gateway: FakeGateway) -> None:
    gateway.scale_statuses = [429]
    act, _, sleep = resilient(openfaas(gateway), backoff_s=0.2, backoff_max_s=5)
    async with act:
        assert (await act.scale("figlet", "openfaas-fn", 3)).applied == 3
    assert sleep.delays == [2.0]


async def test_backoff_grows_and_is_capped(gateway: FakeGateway) -> None:
    gateway.default_scale_status = 500
    act, _, sleep = resilient(openfaas(gateway), retries=4, backoff_s=1.0, backoff_max_s=3.0, breaker_failures=10)
    async with act:
        outcome = await act.scale("figlet", "openfaas-fn", 3)
    assert outcome.applied is None and outcome.note.startswith("failed after retries")
    assert "no setting applied yet" in outcome.note
    assert len(gateway.scale_requests) == 5
    bounds = [(0.5, 1.0), (1.0, 2.0), (1.5, 3.0), (1.5, 3.0)]
    assert all(lo <= d <= hi for d, (lo, hi) in zip(sleep.delays, bounds, strict=True))


async def test_breaker_opens_stops_calling_and_half_opens(gateway: FakeGateway) -> None:
    act, clock, _ = resilient(openfaas(gateway), retries=2, breaker_failures=3, breaker_reset_s=30)
    async with act:
        assert (await act.scale("figlet", "openfaas-fn", 2)).applied == 2
        gateway.default_scale_status = 503
        failed = await act.scale("figlet", "openfaas-fn", 4)
        assert failed.applied is None
        assert failed.note.startswith("circuit opened after 3 consecutive failures")
        assert failed.note.endswith("keeping last setting 2")
        assert len(gateway.scale_requests) == 4  # 1 success + 3 failed attempts

        refused = await act.scale("figlet", "openfaas-fn", 4)
        assert refused == ScaleOutcome("figlet", "openfaas-fn", 4, None, "circuit open: keeping last setting 2")
        other = await act.scale("big", "openfaas-fn", 1)
        assert other.note == "circuit open: no setting applied yet"
        with pytest.raises(CircuitOpenError):
            await act.list_functions()
        assert len(gateway.requests) == 4  # nothing reached the gateway while open
        state = act.state()
        assert state["breaker"] == "open" and state["consecutive_failures"] == 3
        assert "503" in state["last_error"] and state["last_applied"] == {("openfaas-fn", "figlet"): 2}

        clock.now += 29.9
        assert (await act.scale("figlet", "openfaas-fn", 4)).note.startswith("circuit open")
        assert len(gateway.requests) == 4

        # Half-open: exactly one trial; it fails, so the breaker opens again without retrying.
        clock.now += 0.2
        trial = await act.scale("figlet", "openfaas-fn", 4)
        assert trial.applied is None and len(gateway.requests) == 5
        assert act.breaker_state == "open"
        assert (await act.scale("figlet", "openfaas-fn", 4)).note.startswith("circuit open")
        assert len(gateway.requests) == 5

        # Next half-open trial succeeds and closes the breaker.
        clock.now += 30
        gateway.default_scale_status = 200
        ok = await act.scale("figlet", "openfaas-fn", 4)
        assert ok.applied == 4 and len(gateway.requests) == 6
        assert act.state()["breaker"] == "closed" and act.state()["consecutive_failures"] == 0
        assert act.last_applied[("openfaas-fn", "figlet")] == 4


class GatedActuator(DryRunActuator):
    """Fails while `failing`; otherwise each scale waits for `gate`, so a test can hold a call in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0

    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        self.calls += 1
        if self.failing:
            raise ActuatorError("connection refused")
        self.entered.set()
        await self.gate.wait()
        return ScaleOutcome(function, namespace, replicas, replicas)


async def test_half_open_lets_exactly_one_trial_through() -> None:
    inner = GatedActuator()
    act, clock, _ = resilient(inner, retries=0, breaker_failures=2, breaker_reset_s=10)
    for _ in range(2):
        assert (await act.scale("f", "ns", 1)).applied is None
    assert act.breaker_state == "open" and inner.calls == 2
    clock.now += 10
    inner.failing = False
    trial = asyncio.create_task(act.scale("f", "ns", 1))
    await inner.entered.wait()
    assert act.breaker_state == "half_open"
    concurrent = await act.scale("g", "ns", 1)
    assert concurrent.note == "circuit open: no setting applied yet" and inner.calls == 3
    inner.gate.set()
    assert (await trial).applied == 1
    assert act.breaker_state == "closed"
    assert (await act.scale("g", "ns", 1)).applied == 1 and inner.calls == 4


async def test_cancelled_trial_does_not_wedge_the_breaker() -> None:
    inner = GatedActuator()
    act, clock, _ = resilient(inner, retries=0, breaker_failures=1, breaker_reset_s=10)
    await act.scale("f", "ns", 1)
    clock.now += 10
    inner.failing = False
    trial = asyncio.create_task(act.scale("f", "ns", 1))
    await inner.entered.wait()
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    inner.gate.set()
    assert (await act.scale("f", "ns", 1)).applied == 1  # a new trial was allowed


async def test_max_replicas_per_function_and_unchanged_skip(gateway: FakeGateway) -> None:
    act, _, _ = resilient(openfaas(gateway), max_replicas={"figlet": 3, "team/big": 1, "*": 10})
    async with act:
        capped = await act.scale("figlet", "openfaas-fn", 7)
        assert capped == ScaleOutcome("figlet", "openfaas-fn", 7, 3, "requested 7, max for figlet is 3")
        assert gateway.scale_requests[-1]["body"]["replicas"] == 3
        assert (await act.scale("big", "team", 4)).applied == 1
        assert (await act.scale("other", "openfaas-fn", 40)).applied == 10
        sent = len(gateway.scale_requests)
        # 7 clamps to 3 again and 3 is what is applied already: no request at all.
        assert (await act.scale("figlet", "openfaas-fn", 7)) == ScaleOutcome("figlet", "openfaas-fn", 7, None,
                                                                               "unchanged")
        assert (await act.scale("figlet", "openfaas-fn", 3)).note == "unchanged"
        assert len(gateway.scale_requests) == sent
        assert (await act.scale("figlet", "openfaas-fn", 2)).applied == 2
        assert len(gateway.scale_requests) == sent + 1


async def test_ce_clamp_combined_with_unchanged_skip(gateway: FakeGateway) -> None:
    act, _, _ = resilient(openfaas(gateway, edition="ce"), max_replicas=20)
    async with act:
        first = await act.scale("figlet", "openfaas-fn", 0)
        assert (first.applied, first.note) == (1, "requested 0, CE minimum is 1")
        # Asking 0 again would apply 1 again: skipped.
        assert (await act.scale("figlet", "openfaas-fn", 0)).note == "unchanged"
        assert len(gateway.scale_requests) == 1


async def test_not_found_is_not_retried(gateway: FakeGateway) -> None:
    gateway.scale_statuses = [404]
    act, _, sleep = resilient(openfaas(gateway))
    async with act:
        outcome = await act.scale("ghost", "openfaas-fn", 2)
    assert outcome.applied is None and outcome.note.startswith("not found")
    assert "ghost" in outcome.note
    assert len(gateway.scale_requests) == 1 and sleep.delays == []


async def test_openfaas_error_classes(gateway: FakeGateway) -> None:
    async with openfaas(gateway) as act:
        gateway.scale_statuses = [404, 400, 502]
        with pytest.raises(ActuatorNotFound):
            await act.scale("ghost", "openfaas-fn", 1)
        with pytest.raises(ActuatorRejected) as rejected:
            await act.scale("figlet", "openfaas-fn", 1)
        assert not rejected.value.retryable
        with pytest.raises(ActuatorError) as transient:
            await act.scale("figlet", "openfaas-fn", 1)
        assert transient.value.retryable and transient.value.status == 502


async def test_openfaas_connection_refused_is_transient() -> None:
    async with FakeGateway() as gw:
        url = gw.url
    act = OpenFaaSActuator(url, "admin", "x", timeout_s=2)
    async with act:
        with pytest.raises(ActuatorError) as info:
            await act.scale("figlet", "openfaas-fn", 1)
    assert info.value.retryable and url in str(info.value)


# --- dry run and factory ---------------------------------------------------------------------------------------


async def test_dry_run_records_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "out" / "dry.jsonl"
    t = [50.0]
    act = DryRunActuator(path, clock=lambda: t[0])
    assert await act.list_functions() == []
    fs = [FunctionStatus("f", "ns", 1, 1, 3.0, 128.0)]
    act.set_functions(fs)
    assert await act.list_functions() == fs
    outcome = await act.scale("f", "ns", 3)
    assert outcome == ScaleOutcome("f", "ns", 3, None, "dry run: would set 3")
    t[0] = 60.0
    await act.scale("g", "ns", 0)
    assert [(r.t, r.function, r.replicas) for r in act.records] == [(50.0, "f", 3), (60.0, "g", 0)]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"t": 50.0, "function": "f", "namespace": "ns", "replicas": 3},
                     {"t": 60.0, "function": "g", "namespace": "ns", "replicas": 0}]


async def test_dry_run_in_memory_only() -> None:
    act = DryRunActuator()
    await act.scale("f", "ns", 2)
    assert len(act.records) == 1 and act.records[0].replicas == 2


def test_make_actuator() -> None:
    assert isinstance(make_actuator("dryrun"), DryRunActuator)
    wrapped = make_actuator("openfaas", gateway_url="http://gw:8080", username="u", password="p", edition="ce",
                            max_replicas=5, resilience={"retries": 1})
    assert isinstance(wrapped, ResilientActuator) and isinstance(wrapped.inner, OpenFaaSActuator)
    assert wrapped.kind == "openfaas" and wrapped.retries == 1
    assert isinstance(make_actuator("deployment", namespace="ns", api_client=object()), DeploymentActuator)
    with pytest.raises(ValueError, match="unknown actuator kind"):
        make_actuator("lambda")
    with pytest.raises(ValueError, match="bad options"):
        make_actuator("knative", gateway_url="x")
    with pytest.raises(ValueError):
        make_actuator("knative", namespace="ns", target="service")


# --- Knative against the fake Kubernetes API ------------------------------------------------------------------

SERVING = "/apis/serving.knative.dev/v1/namespaces/ns"


@pytest.fixture
async def k8s():
    async with FakeK8sAPI() as api:
        yield api


def test_split_by_traffic_sums_to_request() -> None:
    assert split_by_traffic(5, {"a": 80, "b": 20}) == {"a": 4, "b": 1}
    assert split_by_traffic(1, {"a": 50, "b": 50}) == {"a": 1, "b": 0}
    assert split_by_traffic(0, {"a": 100}) == {"a": 0}
    shares = split_by_traffic(7, {"a": 33, "b": 33, "c": 34})
    assert sum(shares.values()) == 7 and shares["c"] == 3


async def test_knative_patches_routed_revision_with_merge_patch(k8s: FakeK8sAPI) -> None:
    k8s.add(knative_service("hello", "ns", latest_ready="hello-00002",
                            traffic=[{"revisionName": "hello-00002", "latestRevision": True, "percent": 100}]))
    k8s.add(knative_revision("hello-00001", "ns", "hello"))
    k8s.add(knative_revision("hello-00002", "ns", "hello", actual_replicas=1))
    service_before = json.dumps(k8s.get(f"{SERVING}/services/hello"), sort_keys=True)
    async with KnativeActuator("ns", api_client=k8s.api_client()) as act:
        outcome = await act.scale("hello", "ns", 3)
    assert outcome == ScaleOutcome("hello", "ns", 3, 3, "")
    assert [(r.method, r.path) for r in k8s.requests] == [
        ("GET", f"{SERVING}/services/hello"),
        ("PATCH", f"{SERVING}/revisions/hello-00002"),
    ]
    patch = k8s.requests[1]
    assert patch.content_type == MERGE
    assert patch.json_body == {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "3"}}}
    rev = k8s.get(f"{SERVING}/revisions/hello-00002")
    assert rev["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "3"
    assert rev["metadata"]["annotations"]["serving.knative.dev/creator"] == "admin"  # merged, not replaced
    assert "autoscaling.knative.dev/min-scale" not in k8s.get(f"{SERVING}/revisions/hello-00001")["metadata"][
        "annotations"]
    assert json.dumps(k8s.get(f"{SERVING}/services/hello"), sort_keys=True) == service_before
    assert k8s.rbac_needs() == {("serving.knative.dev", "services", "get"),
                                ("serving.knative.dev", "revisions", "patch")}


async def test_knative_traffic_split_only_touches_revisions_with_traffic(k8s: FakeK8sAPI) -> None:
    k8s.add(knative_service("shop", "ns", latest_ready="shop-00003", traffic=[
        {"revisionName": "shop-00001", "percent": 80},
        {"revisionName": "shop-00002", "percent": 20, "tag": "canary"},
        {"revisionName": "shop-00003", "latestRevision": True, "percent": 0, "tag": "preview"},
    ]))
    for name in ("shop-00001", "shop-00002", "shop-00003"):
        k8s.add(knative_revision(name, "ns", "shop"))
    async with KnativeActuator("ns", api_client=k8s.api_client()) as act:
        outcome = await act.scale("shop", "ns", 5)
    assert outcome.applied == 5 and "shop-00001=4" in outcome.note and "shop-00002=1" in outcome.note
    patches = {r.path.rsplit("/", 1)[1]: r.json_body["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"]
               for r in k8s.requests_to("PATCH")}
    assert patches == {"shop-00001": "4", "shop-00002": "1"}
    assert all(r.content_type == MERGE for r in k8s.requests_to("PATCH"))
    assert not k8s.requests_to("PATCH", "/services/")


async def test_knative_without_traffic_uses_latest_ready(k8s: FakeK8sAPI) -> None:
    k8s.add(knative_service("new", "ns", latest_ready="new-00001", traffic=None))
    k8s.add(knative_revision("new-00001", "ns", "new"))
    async with KnativeActuator("ns", api_client=k8s.api_client()) as act:
        assert (await act.scale("new", "ns", 0)).applied == 0
    [patch] = k8s.requests_to("PATCH")
    assert patch.path == f"{SERVING}/revisions/new-00001"
    assert patch.json_body == {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}}}


async def test_knative_podautoscaler_target(k8s: FakeK8sAPI) -> None:
    k8s.add(knative_service("old", "ns", latest_ready="old-00004",
                            traffic=[{"revisionName": "old-00004", "percent": 100}]))
    k8s.add(knative_podautoscaler("old-00004", "ns"))
    async with KnativeActuator("ns", target="podautoscaler", api_client=k8s.api_client()) as act:
        await act.scale("old", "ns", 2)
    [patch] = k8s.requests_to("PATCH")
    assert patch.path == "/apis/autoscaling.internal.knative.dev/v1alpha1/namespaces/ns/podautoscalers/old-00004"
    assert patch.content_type == MERGE
    assert patch.json_body == {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "2"}}}
    assert ("autoscaling.internal.knative.dev", "podautoscalers", "patch") in k8s.rbac_needs()


async def test_knative_list_functions(k8s: FakeK8sAPI) -> None:
    k8s.add(knative_service("a", "ns", latest_ready="a-00002", traffic=[
        {"revisionName": "a-00001", "percent": 50}, {"revisionName": "a-00002", "percent": 50}]))
    k8s.add(knative_revision("a-00001", "ns", "a", actual_replicas=2))
    k8s.add(knative_revision("a-00002", "ns", "a", actual_replicas=1))
    k8s.add(knative_service("b", "ns", latest_ready="b-00001", memory=None,
                            traffic=[{"revisionName": "b-00001", "percent": 100}]))
    k8s.add(knative_revision("b-00001", "ns", "b"))  # scaled to zero: actualReplicas absent
    k8s.add(knative_service("elsewhere", "other", latest_ready="e-1"))
    async with KnativeActuator("ns", api_client=k8s.api_client()) as act:
        functions = await act.list_functions()
    assert functions == [FunctionStatus("a", "ns", 3, 3, 0.0, 256.0), FunctionStatus("b", "ns", 0, 0, 0.0, None)]
    assert [(r.method, r.path) for r in k8s.requests] == [("GET", f"{SERVING}/services"),
                                                          ("GET", f"{SERVING}/revisions")]
    assert k8s.rbac_needs() == {("serving.knative.dev", "services", "list"),
                                ("serving.knative.dev", "revisions", "list")}


async def test_knative_errors_map_to_actuator_errors(k8s: FakeK8sAPI) -> None:
    k8s.add(knative_service("hello", "ns", latest_ready="hello-00001"))
    k8s.add(knative_revision("hello-00001", "ns", "hello"))
    k8s.add(knative_service("pending", "ns"))  # no ready revision yet
    async with KnativeActuator("ns", api_client=k8s.api_client()) as act:
        with pytest.raises(ActuatorNotFound, match="ghost"):
            await act.scale("ghost", "ns", 1)
        k8s.fail_next(403, method="PATCH")
        with pytest.raises(ActuatorAuthError) as auth:
            await act.scale("hello", "ns", 1)
        assert k8s.url in str(auth.value) and "refused the credentials" in str(auth.value)
        k8s.fail_next(503)
        with pytest.raises(ActuatorError) as transient:
            await act.scale("hello", "ns", 1)
        assert transient.value.retryable and transient.value.status == 503
        with pytest.raises(ActuatorRejected, match="no traffic"):
            await act.scale("pending", "ns", 1)


async def test_fake_refuses_strategic_merge_on_custom_resources(k8s: FakeK8sAPI) -> None:
    """Why the content type matters: the API server answers 415 to strategic merge patch on a CRD."""
    from kubernetes import client

    k8s.add(knative_revision("hello-00001", "ns", "hello"))
    api = client.CustomObjectsApi(k8s.api_client())
    with pytest.raises(client.ApiException) as info:
        # In a thread: the fake server runs on this event loop and must keep serving while the client blocks.
        await asyncio.to_thread(
            api.patch_namespaced_custom_object, "serving.knative.dev", "v1", "ns", "revisions", "hello-00001",
            {"metadata": {}}, _content_type="application/strategic-merge-patch+json",
        )
    assert info.value.status == 415


async def test_resilient_knative_retries_server_errors(k8s: FakeK8sAPI) -> None:
    k8s.add(knative_service("hello", "ns", latest_ready="hello-00001",
                            traffic=[{"revisionName": "hello-00001", "percent": 100}]))
    k8s.add(knative_revision("hello-00001", "ns", "hello"))
    k8s.fail_next(500, method="PATCH")
    act, _, sleep = resilient(KnativeActuator("ns", api_client=k8s.api_client()))
    async with act:
        assert (await act.scale("hello", "ns", 2)).applied == 2
    assert len(k8s.requests_to("PATCH")) == 2 and len(sleep.delays) == 1


async def test_kubernetes_connection_refused_is_transient() -> None:
    async with FakeK8sAPI() as api:
        client = api.api_client()
    async with DeploymentActuator("ns", api_client=client, timeout_s=2) as act:
        with pytest.raises(ActuatorError) as info:
            await act.scale("x", "ns", 1)
    assert info.value.retryable and api.url in str(info.value)


# --- Deployments against the fake Kubernetes API --------------------------------------------------------------


async def test_deployment_scale_uses_scale_subresource(k8s: FakeK8sAPI) -> None:
    path = k8s.add(deployment("fn-x", "ns", replicas=1, available=1))
    async with DeploymentActuator("ns", api_client=k8s.api_client()) as act:
        outcome = await act.scale("fn-x", "ns", 3)
    assert outcome == ScaleOutcome("fn-x", "ns", 3, 3, "")
    [req] = k8s.requests
    assert (req.method, req.path) == ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/fn-x/scale")
    assert req.content_type == MERGE
    assert req.json_body == {"spec": {"replicas": 3}}
    assert k8s.get(path)["spec"]["replicas"] == 3
    assert k8s.rbac_needs() == {("apps", "deployments/scale", "patch")}


async def test_deployment_list_with_selector(k8s: FakeK8sAPI) -> None:
    k8s.add(deployment("fn-a", "ns", replicas=2, available=2, memory="1Gi", labels={"prewarm": "yes"}))
    k8s.add(deployment("fn-b", "ns", replicas=0, memory=None, labels={"prewarm": "yes"}))
    k8s.add(deployment("db", "ns", replicas=1, available=1))
    async with DeploymentActuator("ns", label_selector="prewarm=yes", api_client=k8s.api_client()) as act:
        functions = await act.list_functions()
    assert functions == [FunctionStatus("fn-a", "ns", 2, 2, 0.0, 1024.0), FunctionStatus("fn-b", "ns", 0, 0, 0.0, None)]
    assert [(r.method, r.path) for r in k8s.requests] == [("GET", "/apis/apps/v1/namespaces/ns/deployments")]
    assert k8s.queries[0]["labelSelector"] == "prewarm=yes"
    assert k8s.rbac_needs() == {("apps", "deployments", "list")}


async def test_deployment_missing_is_not_found(k8s: FakeK8sAPI) -> None:
    async with DeploymentActuator("ns", api_client=k8s.api_client()) as act:
        with pytest.raises(ActuatorNotFound, match="nope"):
            await act.scale("nope", "ns", 1)
        k8s.fail_next(401)
        with pytest.raises(ActuatorAuthError):
            await act.list_functions()


async def test_kubeconfig_is_loaded_when_no_client_is_given(k8s: FakeK8sAPI, tmp_path: Path, monkeypatch) -> None:
    from kubernetes.config import kube_config

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": k8s.url}}],
        "users": [{"name": "bot", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "bot", "namespace": "ns"}}],
    }))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    k8s.add(deployment("fn-x", "ns"))
    act = DeploymentActuator("ns")
    assert [f.name for f in await act.list_functions()] == ["fn-x"]  # started lazily
    await act.close()
    await act.close()  # idempotent


async def test_missing_kubernetes_credentials_are_an_auth_error(tmp_path: Path, monkeypatch) -> None:
    from kubernetes.config import kube_config

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))
    with pytest.raises(ActuatorAuthError, match="no Kubernetes credentials"):
        await KnativeActuator("ns").start()
