"""PrewarmPolicy: the CRD and its Role (manifests/components/prewarm-policies), the example resources, and the sidecar
watching them (prewarmer.kube) against the fake Kubernetes API of tests/k8s_fake.py, driven by the official client.

- the component renders on top of every sidecar overlay; kubernetes-validate (strict) accepts every object, the CRD
  included; the CRD's schema is structural, and the example resources (and only valid specs) pass it;
- the watcher lists, then follows creates, updates and deletes, and lists again after 410 Gone;
- Preview: the sidecar decides, the platform gets no scale request, and the predictions show in the metrics and in
  the resource's status; switched to Auto, the floor is applied; annotations work where no policy selects;
- the Roles grant exactly the calls the actuator and the watcher made (derived from the fake's request log).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis.asyncio as aioredis
import yaml
from k8s_fake import MERGE, FakeK8sAPI, deployment
from test_deploy import (
    KUBERNETES_VERSION,
    MANIFESTS,
    SIDECAR_OVERLAYS,
    container_env,
    kubectl,
    namespace_of,
    of_kind,
    one,
    parse_run,
    request_permissions,
    role_permissions,
    sidecar_parts,
)

import prewarmer.actuators.base as actuators_base
from prewarmer.kube import policy_control, with_rules
from prewarmer.kube.resolve import FunctionInfo, parse_policy, resolve
from prewarmer.kube.watcher import PolicyWatcher
from prewarmer.registry import policy_factory
from prewarmer.schedules import RuleSet
from prewarmer.sidecar.metrics import SidecarMetrics
from prewarmer.sidecar.platform import build_actuator
from prewarmer.sidecar.run import Sidecar, SidecarOptions

COMPONENT = MANIFESTS / "components" / "prewarm-policies"
EXAMPLES = MANIFESTS / "examples" / "prewarmpolicy.yaml"
NS = "fns"
POLICIES = f"/apis/prewarmer.io/v1alpha1/namespaces/{NS}/prewarmpolicies"
ALWAYS = [{"cron": "0 0 * * *", "duration": "24h", "minWarm": 2}]  # a floor of 2 at every hour of every day



# --- manifests ------------------------------------------------------------------------------------------------


def render_with_policies(overlay: str, tmp_path: Path) -> list[dict[str, Any]]:
    """`overlays/<overlay>` with the prewarm-policies component on top, as docs/kubernetes.md says to use it."""
    where = tmp_path / overlay
    where.mkdir(parents=True)
    (where / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS / "overlays" / overlay, where)],
        "components": [os.path.relpath(COMPONENT, where)],
    }))
    proc = subprocess.run([kubectl(), "kustomize", str(where)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def crd() -> dict[str, Any]:
    return yaml.safe_load((COMPONENT / "crd.yaml").read_text())


def policy_schema() -> dict[str, Any]:
    [version] = crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """What kube-apiserver's validation of the CRD schema would refuse (OpenAPI v3.0: boolean exclusiveMinimum)."""

    def draft4(node: Any) -> Any:  # OpenAPI 3.0 keeps JSON Schema draft 4's boolean exclusiveMinimum
        if isinstance(node, dict):
            return {k: draft4(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if isinstance(node, list):
            return [draft4(v) for v in node]
        return node

    validator = jsonschema.Draft4Validator(draft4(policy_schema()), format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def assert_structural(node: dict[str, Any], where: str = "") -> None:
    """Kubernetes' structural-schema rules: every node has a type; anyOf/allOf/oneOf/not only constrain values."""
    for key in ("anyOf", "allOf", "oneOf"):
        for branch in node.get(key, []):
            assert set(branch) <= {"required", "properties", "items", "pattern", "minimum", "maximum", "enum"}, (
                f"{where}: {key} may only hold value validations, got {sorted(branch)}")
            assert "type" not in branch and "description" not in branch
    assert "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"), f"{where or '/'}: no type"
    for name, child in (node.get("properties") or {}).items():
        assert_structural(child, f"{where}/{name}")
    if isinstance(node.get("additionalProperties"), dict):
        assert_structural(node["additionalProperties"], f"{where}/*")
    if "items" in node:
        assert_structural(node["items"], f"{where}[]")


def schema_at(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column's JSONPath (`.spec.mode`, `.status.conditions[?(...)].status`) reads."""
    node: dict[str, Any] | None = schema
    for part in re.sub(r"\[[^\]]*\]", "[]", json_path).strip(".").split("."):
        name, _, _filter = part.partition("[")
        if node is None:
            return None
        if name == "metadata":
            return {"type": "object"}
        node = (node.get("properties") or {}).get(name)
        if node is not None and _filter:
            node = node.get("items")
    return node


def test_crd_is_structural_with_status_subresource_and_printer_columns() -> None:
    definition = crd()
    kubernetes_validate.validate(definition, KUBERNETES_VERSION, strict=True)
    spec = definition["spec"]
    assert definition["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["scope"] == "Namespaced" and spec["names"]["kind"] == "PrewarmPolicy"
    [version] = spec["versions"]
    assert version["served"] and version["storage"] and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert_structural(schema)
    fields = schema["properties"]["spec"]["properties"]
    assert fields["mode"]["enum"] == ["Auto", "Preview"] and fields["mode"]["default"] == "Auto"
    assert schema["properties"]["spec"]["required"] == ["selector"]
    for column in version["additionalPrinterColumns"]:
        node = schema_at(schema, column["jsonPath"])
        assert node is not None, f"printer column {column['name']}: {column['jsonPath']} is not in the schema"
        assert column["type"] in ("string", "date", "integer", "number", "boolean")
    # Every field of the pydantic rule model is in the schema under the same (camelCase) name, and nothing else.
    from prewarmer.schedules import FunctionRule, WarmFloor

    assert set(fields) - {"mode"} == {f.alias or n for n, f in FunctionRule.model_fields.items()}
    window = fields["schedule"]["items"]["properties"]
    assert set(window) == {f.alias or n for n, f in WarmFloor.model_fields.items()}


@pytest.mark.parametrize("overlay", SIDECAR_OVERLAYS)
def test_component_renders_on_every_sidecar_overlay_and_validates(overlay: str, tmp_path: Path,
                                                                   clean_env: pytest.MonkeyPatch) -> None:
    objs = render_with_policies(overlay, tmp_path)
    problems = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']} {obj['metadata'].get('name')}: {str(exc).splitlines()[0]}")
    assert not problems, "\n".join(problems)
    assert one(objs, "CustomResourceDefinition")["metadata"].get("namespace") is None
    assert not of_kind(objs, "ClusterRole") and not of_kind(objs, "ClusterRoleBinding")
    dep, pod, container = sidecar_parts(objs)
    env = container_env(objs, container, namespace_of(dep))
    assert pod["automountServiceAccountToken"] is True, "the watcher needs the service-account token"
    args = parse_run(clean_env, env)
    assert args.watch_policies is True
    role, binding = one(objs, "Role", "prewarmer-policies"), one(objs, "RoleBinding", "prewarmer-policies")
    assert namespace_of(role) == namespace_of(binding) == env["PREWARMER_NAMESPACE"] == (args.namespace or "")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": namespace_of(dep)}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prewarmer-policies"}


def test_example_policies_match_the_crd_schema_and_load_as_rules() -> None:
    docs = [d for d in yaml.safe_load_all(EXAMPLES.read_text()) if d]
    assert {d["spec"]["mode"] for d in docs} == {"Auto", "Preview"}
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) == ("prewarmer.io/v1alpha1", "PrewarmPolicy")
        assert schema_errors(doc) == [], doc["metadata"]["name"]
        source = parse_policy(doc)
        assert source.error is None and source.rule is not None, source.error
    # The schema refuses what the sidecar would refuse: controls, each one mistake.
    good = docs[0]
    mistakes = {
        "mode": lambda s: s.update(mode="Manual"),
        "selector": lambda s: s.pop("selector"),
        "schedule/0": lambda s: s["schedule"][0].pop("minWarm"),
        "schedule/0/minWarm": lambda s: s["schedule"][0].update(minWarm=-1),
        "schedule/0/duration": lambda s: s["schedule"][0].update(duration="10 hours"),
        "schedule/0/cron": lambda s: s["schedule"][0].update(cron="0 8 * *"),
        "target/coldStartPct": lambda s: s["target"].update(coldStartPct=0),
        "budget/idleGbSecondsPerHour": lambda s: s["budget"].update(idleGbSecondsPerHour="lots"),
        "spec": lambda s: [s.pop(k) for k in ("schedule", "target", "budget")],  # says nothing
    }
    for where, spoil in mistakes.items():
        bad = copy.deepcopy(good)
        spoil(bad["spec"])
        errors = schema_errors(bad)
        assert errors and any(e.startswith(f"spec/{where}".rstrip("/")) or e.startswith("spec:") for e in errors), (
            where, errors)
        assert parse_policy(bad).error, f"the sidecar accepts what the CRD refuses: {where}"


def test_resolve_oldest_policy_wins_and_annotations_fill_in() -> None:
    def pwp(name: str, created: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": NS, "generation": 1, "creationTimestamp": created},
                "spec": spec}

    sources = [
        parse_policy(pwp("newer", "2026-02-01T00:00:00Z", {"selector": {"matchNames": ["fn-*"]},
                                                           "schedule": ALWAYS})),
        parse_policy(pwp("older", "2026-01-01T00:00:00Z", {"mode": "Preview", "schedule": ALWAYS,
                                                           "selector": {"matchLabels": {"team": "a"}}})),
        parse_policy(pwp("broken", "2025-01-01T00:00:00Z", {"selector": {}, "schedule": [{"cron": "61 * * * *",
                                                                                           "duration": "1h",
                                                                                           "minWarm": 1}]})),
    ]
    assert sources[2].error is not None and "schedule[0].cron" in sources[2].error.replace(".0.", "[0].")
    functions = [FunctionInfo("fn-a", {"team": "a"}), FunctionInfo("fn-b"), FunctionInfo("other"),
                 FunctionInfo("solo", annotations={"prewarmer.io/min-warm": "3", "prewarmer.io/mode": "Preview"}),
                 FunctionInfo("typo", annotations={"prewarmer.io/min-warm": "three"})]
    resolution = resolve(sources, functions)
    assert resolution.selected == {"older": ["fn-a"], "newer": ["fn-b"]}
    assert {f: (a.mode, a.source) for f, a in resolution.assignments.items()} == {
        "fn-a": ("Preview", "PrewarmPolicy/older"), "fn-b": ("Auto", "PrewarmPolicy/newer"),
        "solo": ("Preview", "annotations")}
    assert resolution.preview == {"fn-a", "solo"}
    assert resolution.annotation_errors == {"typo": "annotation prewarmer.io/min-warm: expected a whole number >= 0, "
                                                    "got 'three'"}
    # The rules handed to ScheduledPolicy select exact names: labels were matched here.
    assert [r.selector.match_names for r in resolution.rules.rules] == [["fn-a"], ["fn-b"], ["solo"]]
    assert [r.schedule[-1].min_warm for r in resolution.rules.rules] == [2, 2, 3]


# --- the watcher ----------------------------------------------------------------------------------------------


def prewarm_policy(name: str, spec: dict[str, Any], created: str = "2026-12-01T00:00:00Z",
                   namespace: str = NS) -> dict[str, Any]:
    return {"apiVersion": "prewarmer.io/v1alpha1", "kind": "PrewarmPolicy",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "creationTimestamp": created},
            "spec": spec}


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0,
                     step: Callable[[], Awaitable[Any]] | None = None) -> None:
    """Wait for `condition` (running `step` between checks, e.g. a sidecar iteration), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        if step is not None:
            await step()
        await asyncio.sleep(0.01)  # let the fake API server (this event loop) answer the watcher thread


def names(watcher: PolicyWatcher) -> dict[str, Any]:
    return {o["metadata"]["name"]: o["spec"] for o in watcher.snapshot()[1]}


async def test_watcher_follows_create_update_delete_and_ignores_status_writes() -> None:
    async with FakeK8sAPI() as api:
        api.add(prewarm_policy("a", {"selector": {"matchNames": ["fn-a"]}, "schedule": ALWAYS}))
        watcher = PolicyWatcher(NS, api.api_client(), watch_timeout_s=30)
        watcher.start()
        try:
            await eventually(lambda: watcher.synced and set(names(watcher)) == {"a"})
            version = watcher.snapshot()[0]
            b = api.add(prewarm_policy("b", {"selector": {}, "schedule": ALWAYS}))
            await eventually(lambda: set(names(watcher)) == {"a", "b"})
            api.update(b, {"spec": {"mode": "Preview"}})
            await eventually(lambda: names(watcher)["b"].get("mode") == "Preview")
            assert watcher.get("b")["metadata"]["generation"] == 2
            moved = watcher.snapshot()[0]
            assert moved > version
            # A status write comes back as an event too, but it changes no rule: the version stays.
            api.update(b, {"status": {"observedGeneration": 2}})
            await eventually(lambda: (watcher.get("b") or {}).get("status") == {"observedGeneration": 2})
            assert watcher.snapshot()[0] == moved
            api.delete(f"{POLICIES}/a")
            await eventually(lambda: set(names(watcher)) == {"b"})
        finally:
            await asyncio.to_thread(watcher.stop)
        assert watcher.lists == 1 and watcher.errors == 0
        watches = [q for q in api.queries if q.get("watch") in ("true", "1")]
        assert watches and all(q.get("resourceVersion") for q in watches), "each watch resumes from a version"


async def test_watcher_lists_again_after_410_gone() -> None:
    async with FakeK8sAPI() as api:
        api.add(prewarm_policy("a", {"selector": {}, "schedule": ALWAYS}))
        watcher = PolicyWatcher(NS, api.api_client(), watch_timeout_s=1)
        watcher.start()
        try:
            await eventually(lambda: watcher.synced)
            listed_at = watcher.resource_version
            api.compact()  # the watch's next resume, from `listed_at`, asks for history that is gone
            await eventually(lambda: watcher.lists == 2)
            api.add(prewarm_policy("b", {"selector": {}, "schedule": ALWAYS}))
            await eventually(lambda: set(names(watcher)) == {"a", "b"})
        finally:
            await asyncio.to_thread(watcher.stop)
        resumed = [q for q in api.queries if q.get("watch") == "true" and q.get("resourceVersion") == listed_at]
        assert resumed, "the watch resumed from the list's version (and was refused: history compacted)"
        assert watcher.errors == 0, "410 is no error: it is answered with a fresh list"


# --- the sidecar with --watch-policies ------------------------------------------------------------------------


def gauge(metrics: SidecarMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def scale_patches(api: FakeK8sAPI, function: str) -> list[int]:
    return [r.json_body["spec"]["replicas"] for r in api.requests_to("PATCH", f"/deployments/{function}/scale")]


async def run_sidecar(api: FakeK8sAPI, redis_url: str, actuator: Any, namespace: str = NS,
                      sync_timeout_s: float = 10.0, base_rules: RuleSet | None = None) -> tuple[Sidecar, Any]:
    """A sidecar as `prewarmer run --policy hybrid --watch-policies [--schedule-file]` builds it."""
    metrics = SidecarMetrics()
    control = policy_control(namespace, "r1", metrics, api.api_client(), watch_timeout_s=30, status_interval_s=0.0,
                             base_rules=base_rules)
    control.watcher.retry_s = 0.2
    opts = SidecarOptions(replica_id="r1", n_shards=2, status_interval_s=0.0, checkpoint_interval_s=3600,
                          namespace=namespace, policy_spec="hybrid", lease_ttl_ms=5000)
    redis = aioredis.Redis.from_url(redis_url)
    sidecar = Sidecar(opts, with_rules(policy_factory("hybrid", rules=base_rules)), actuator, redis, metrics,
                      policies=control)
    await control.start(sync_timeout_s)
    await sidecar.start()
    return sidecar, redis


async def stop_sidecar(sidecar: Sidecar, redis: Any) -> None:
    await sidecar.shutdown()
    await sidecar.policies.close()
    await redis.aclose()


async def test_preview_acts_on_nothing_while_metrics_and_status_show_the_predictions(redis_server) -> None:
    from prewarmer.actuators import DeploymentActuator

    async with FakeK8sAPI() as api:
        api.add(deployment("fn-a", NS, replicas=0, labels={"team": "a"}))
        api.add(deployment("fn-b", NS, replicas=0))
        policy = api.add(prewarm_policy("office", {"mode": "Preview", "selector": {"matchLabels": {"team": "a"}},
                                                   "schedule": ALWAYS}))
        actuator = DeploymentActuator(NS, api_client=api.api_client())
        sidecar, redis = await run_sidecar(api, redis_server.url, actuator)
        metrics = sidecar.metrics
        try:
            def shown() -> dict[str, Any]:
                return ((api.get(policy).get("status") or {}).get("functions") or {}).get("fn-a") or {}

            await eventually(lambda: shown().get("desiredReplicas") == 2, step=sidecar.iterate)
            assert shown() == {"predictedReplicas": 2, "desiredReplicas": 2, "applied": False, "replica": "r1"}
            assert gauge(metrics, "prewarmer_policy_desired_replicas", function="fn-a", mode="Preview") == 2
            assert gauge(metrics, "prewarmer_policy_predicted_replicas", function="fn-a", mode="Preview") == 2
            for _ in range(3):
                await sidecar.iterate()
            assert scale_patches(api, "fn-a") == [], "Preview sent a scale request"
            assert api.get(f"/apis/apps/v1/namespaces/{NS}/deployments/fn-a")["spec"]["replicas"] == 0
            status = api.get(policy)["status"]
            [ready] = status["conditions"]
            assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Previewing")
            assert status["observedGeneration"] == 1 and status["lastDecision"].endswith("Z")
            assert schema_errors(api.get(policy)) == [], "the status the sidecar writes fits the CRD"
            # fn-b is governed by nothing: no gauge for it.
            assert gauge(metrics, "prewarmer_policy_desired_replicas", function="fn-b", mode="Auto") is None
            patches = api.requests_to("PATCH", "/prewarmpolicies/")
            assert patches and all(r.path.endswith("/status") and r.content_type == MERGE for r in patches)
            writes = len(patches)
            for _ in range(3):
                await sidecar.iterate()
            assert len(api.requests_to("PATCH", "/prewarmpolicies/")) == writes, "status rewritten without change"

            # Switched to Auto: the floor reaches the platform, the gauge changes mode, status says applied.
            api.update(policy, {"spec": {"mode": "Auto"}})
            await eventually(lambda: scale_patches(api, "fn-a") == [2] and shown().get("applied") is True,
                             step=sidecar.iterate)
            assert gauge(metrics, "prewarmer_policy_desired_replicas", function="fn-a", mode="Auto") == 2
            assert gauge(metrics, "prewarmer_policy_desired_replicas", function="fn-a", mode="Preview") is None
            status = api.get(policy)["status"]
            assert status["observedGeneration"] == 2 and status["conditions"][0]["reason"] == "Applied"
            assert scale_patches(api, "fn-b") == [], "a function no rule selects is left to the policy"

            # Deleted: the rule goes, and so do its gauges.
            api.delete(policy)
            await eventually(lambda: gauge(metrics, "prewarmer_policy_desired_replicas", function="fn-a",
                                           mode="Auto") is None, step=sidecar.iterate)
        finally:
            await stop_sidecar(sidecar, redis)
            await actuator.close()


async def test_annotations_are_the_fallback_and_bad_ones_are_named(redis_server, caplog) -> None:
    from prewarmer.actuators import DeploymentActuator

    async with FakeK8sAPI() as api:
        for name, notes in (("fn-c", {"prewarmer.io/min-warm": "1"}),
                            ("fn-d", {"prewarmer.io/schedule": '[{"cron": "0 0 * * *", "duration": "24h", '
                                                               '"minWarm": 3}]', "prewarmer.io/mode": "Preview"}),
                            ("fn-e", {"prewarmer.io/min-warm": "many"})):
            obj = deployment(name, NS, replicas=0)
            obj["metadata"]["annotations"] = {**notes, "deployment.kubernetes.io/revision": "1"}
            api.add(obj)
        actuator = DeploymentActuator(NS, api_client=api.api_client())
        sidecar, redis = await run_sidecar(api, redis_server.url, actuator)
        try:
            await eventually(lambda: scale_patches(api, "fn-c") == [1] and gauge(
                sidecar.metrics, "prewarmer_policy_desired_replicas", function="fn-d", mode="Preview") == 3,
                step=sidecar.iterate)
            assert scale_patches(api, "fn-d") == []
        finally:
            await stop_sidecar(sidecar, redis)
            await actuator.close()
    refused = [r for r in caplog.records if r.getMessage() == "policy ignored"]
    assert [r.fields["source"] for r in refused] == ["annotations of fn-e"]
    assert "prewarmer.io/min-warm" in refused[0].fields["error"]


async def test_nothing_is_scaled_before_the_policies_are_known(redis_server) -> None:
    """A policy not read yet may be a Preview one: until the first list arrives, the sidecar sends nothing, even
    where rules of its own (a schedule file) want a floor."""
    from prewarmer.actuators import DeploymentActuator

    async with FakeK8sAPI() as api:
        api.add(deployment("fn-c", NS, replicas=0))
        policy = api.add(prewarm_policy("look-first", {"mode": "Preview", "selector": {"matchNames": ["fn-c"]},
                                                       "schedule": ALWAYS}))
        api.fail_next(503, times=10_000, path_contains="/prewarmpolicies")  # the list fails until cleared
        file_rules = RuleSet.model_validate({"rules": [{"selector": {"matchNames": ["fn-c"]},
                                                        "schedule": [{**ALWAYS[0], "minWarm": 1}]}]})
        actuator = DeploymentActuator(NS, api_client=api.api_client())
        sidecar, redis = await run_sidecar(api, redis_server.url, actuator, sync_timeout_s=0.0, base_rules=file_rules)
        try:
            await eventually(lambda: sidecar.policies.watcher.errors >= 2, step=sidecar.iterate)
            for _ in range(3):
                await sidecar.iterate()
            [slot] = [s for s in sidecar.slots.values() if "fn-c" in s.agent.index]
            assert slot.desired[slot.agent.index["fn-c"]] == 1, "the file's floor is decided"
            assert not sidecar.policies.watcher.synced
            assert scale_patches(api, "fn-c") == [], "scaled before the policies were known"
            api.clear_faults()
            await eventually(lambda: ((api.get(policy).get("status") or {}).get("functions") or {}).get(
                "fn-c", {}).get("desiredReplicas") == 2, step=sidecar.iterate)
            assert scale_patches(api, "fn-c") == [], "the Preview policy found later governs fn-c"
        finally:
            await stop_sidecar(sidecar, redis)
            await actuator.close()


async def test_refused_credentials_stop_the_sidecar_with_one_line(redis_server) -> None:
    from prewarmer.actuators import DeploymentActuator

    async with FakeK8sAPI() as api:
        api.add(deployment("fn-a", NS, replicas=0))
        api.fail_next(403, path_contains="/prewarmpolicies")  # no Role prewarmer-policies: once is enough
        actuator = DeploymentActuator(NS, api_client=api.api_client())
        sidecar, redis = await run_sidecar(api, redis_server.url, actuator)
        try:
            await asyncio.wait_for(sidecar.run(asyncio.Event()), timeout=30)  # returns by itself
        finally:
            await sidecar.policies.close()
            await redis.aclose()
            await actuator.close()
        assert sidecar.fatal and "HTTP 403" in sidecar.fatal and "prewarmer-policies" in sidecar.fatal
        assert "\n" not in sidecar.fatal
        assert len(api.requests_to("GET", "/prewarmpolicies")) == 1, "no retry against refused credentials"
        assert api.requests_to("PATCH") == []


# --- RBAC -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", SIDECAR_OVERLAYS)
async def test_roles_grant_exactly_the_calls_of_actuator_and_watcher(overlay: str, tmp_path: Path, redis_server,
                                                                     clean_env: pytest.MonkeyPatch) -> None:
    from k8s_fake import knative_podautoscaler, knative_revision, knative_service

    from prewarmer.actuators import DryRunActuator, FunctionStatus

    objs = render_with_policies(overlay, tmp_path)
    dep, _, container = sidecar_parts(objs)
    args = parse_run(clean_env, container_env(objs, container, namespace_of(dep)))
    assert args.watch_policies
    ns = args.namespace
    async with FakeK8sAPI() as api:
        if overlay == "deployment":
            key, _, value = args.label_selector.partition("=")
            api.add(deployment("fn-a", ns, replicas=0, labels={key: value}))
        elif overlay.startswith("knative"):
            api.add(knative_service("fn-a", ns, latest_ready="fn-a-00001"))
            api.add(knative_revision("fn-a-00001", ns, "fn-a"))
            api.add(knative_podautoscaler("fn-a-00001", ns))
        path = api.add(prewarm_policy("p", {"selector": {"matchNames": ["fn-*"]}, "schedule": ALWAYS}, namespace=ns))
        clean_env.setattr(actuators_base, "load_kube_api_client", api.api_client)
        if overlay == "openfaas":
            # The gateway's REST API, not the Kubernetes API: only the watcher's calls reach the fake here.
            actuator = DryRunActuator()
            actuator.set_functions([FunctionStatus("fn-a", ns, 0, 0, 0.0, 128.0)])
        else:
            actuator = build_actuator(args)  # as `prewarmer run` builds it from the rendered configuration
        async with actuator:
            sidecar, redis = await run_sidecar(api, redis_server.url, actuator, namespace=ns)
            try:
                await eventually(lambda: ((api.get(path).get("status") or {}).get("functions") or {}).get(
                    "fn-a", {}).get("applied") is True, step=sidecar.iterate)
            finally:
                await stop_sidecar(sidecar, redis)
        calls = request_permissions(api)
    assert {n for n, *_ in calls} == {ns}, "every request lands in the functions' namespace, where the Roles are"
    needed = {(group, resource, verb) for _, group, resource, verb in calls}
    granted = set().union(*(role_permissions(role) for role in of_kind(objs, "Role")))
    assert needed - granted == set(), f"requests no Role allows (403 in a cluster): {needed - granted}"
    assert granted - needed == set(), f"rights granted but never used: {granted - needed}"
    assert role_permissions(one(objs, "Role", "prewarmer-policies")) == {
        ("prewarmer.io", "prewarmpolicies", "list"), ("prewarmer.io", "prewarmpolicies", "watch"),
        ("prewarmer.io", "prewarmpolicies/status", "patch")}


async def test_prewarmer_run_watch_policies_as_a_process(tmp_path: Path, redis_server) -> None:
    """The command line end to end: `prewarmer run --kind deployment --watch-policies` with a kubeconfig that
    points at the fake API (the process is real, the API server is the loopback fake of this event loop)."""
    async with FakeK8sAPI() as api:
        api.add(deployment("fn-auto", NS, replicas=0))
        api.add(deployment("fn-preview", NS, replicas=0))
        auto = api.add(prewarm_policy("auto", {"selector": {"matchNames": ["fn-auto"]}, "schedule": ALWAYS}))
        preview = api.add(prewarm_policy("preview", {"mode": "Preview", "selector": {"matchNames": ["fn-preview"]},
                                                     "schedule": ALWAYS}))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({  # JSON is YAML
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
            "users": [{"name": "bot", "user": {"token": "t0ken"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "bot", "namespace": NS}}]}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREWARMER_", "KUBERNETES_"))}
        env["KUBECONFIG"] = str(kubeconfig)
        log = tmp_path / "sidecar.log"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prewarmer", "run", "--kind", "deployment", "--namespace", NS, "--watch-policies",
            "--redis", redis_server.url, "--metrics-port", "0", "--interval", "0.2s", "--shards", "2",
            "--replica-id", "proc", env=env, stdout=log.open("w"), stderr=asyncio.subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1])

        def functions(path: str) -> dict[str, Any]:
            return (api.get(path).get("status") or {}).get("functions") or {}

        try:
            await eventually(lambda: functions(auto).get("fn-auto", {}).get("applied") is True
                             and functions(preview).get("fn-preview", {}).get("desiredReplicas") == 2,
                             timeout_s=90)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 60)
        output = log.read_text()
        assert code == 0, output
        assert "Traceback" not in output
    assert scale_patches(api, "fn-auto") == [2]
    assert scale_patches(api, "fn-preview") == [], "Preview sent a scale request"
    assert functions(preview)["fn-preview"]["applied"] is False
