"""What every actuator promises: list the functions of a platform and set how many warm instances each one holds.

Also holds the error classes the resilience layer relies on to decide what is worth retrying, the parser for
memory quantities ("128Mi", "1Gi", "512M") that OpenFaaS and Kubernetes both report, and the Kubernetes client
plumbing (credentials, threads, error mapping) shared by the Knative and Deployment actuators.
"""

from __future__ import annotations

import asyncio
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FunctionStatus:
    """One function as the platform reports it right now."""

    name: str
    namespace: str
    replicas: int
    available_replicas: int
    invocation_count: float
    memory_mb: float | None  # memory limit in MiB; None when the platform does not say
    # The function's labels (what warm-floor rules select by, `prewarmer.schedules`); not part of its identity.
    labels: dict[str, str] = field(default_factory=dict, compare=False)
    # Its `prewarmer.io/*` annotations only: the rule fallback of `--watch-policies` (prewarmer.kube.resolve).
    annotations: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ScaleOutcome:
    """What came of one scale request. `applied` is None when nothing was done; `note` then says why."""

    function: str
    namespace: str
    requested: int
    applied: int | None
    note: str = ""


class ActuatorError(Exception):
    """The platform could not be reached or answered with a transient failure (timeout, 5xx, 429): worth retrying."""

    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        # A server that says when to come back (429/503 Retry-After) knows better than our backoff schedule.
        self.retry_after_s = retry_after_s


class ActuatorAuthError(ActuatorError):
    """The platform refused our credentials (401/403). Retrying cannot help: the caller must stop and report."""

    retryable = False


class ActuatorNotFound(ActuatorError):
    """The function (or what it routes to) does not exist (404). Not retried."""

    retryable = False


class ActuatorRejected(ActuatorError):
    """The platform answered but will not do this for this function (400, 422, no ready revision). Not retried."""

    retryable = False


class Actuator(ABC):
    """Sets warm-instance counts on one platform. Implementations raise the errors above, never library errors."""

    kind: str = "abstract"

    async def start(self) -> None:  # noqa: B027 - optional hook, most actuators need no setup
        """Open connections / load credentials. Calling other methods first starts the actuator lazily."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Safe to call more than once."""

    @abstractmethod
    async def list_functions(self) -> list[FunctionStatus]:
        """Every function the actuator is responsible for, with its current replica counts."""

    @abstractmethod
    async def scale(self, function: str, namespace: str, replicas: int) -> ScaleOutcome:
        """Hold `replicas` warm instances of `function`."""

    async def __aenter__(self) -> Actuator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"m": 1e-3, "": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_QUANTITY = re.compile(r"^\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([KMGTPE]i|[mkKMGTPE]?)\s*$")


def parse_memory_mb(quantity: str | float | None) -> float | None:
    """A Kubernetes memory quantity in MiB: "128Mi" -> 128.0, "1Gi" -> 1024.0, "134217728" -> 128.0.

    Decimal suffixes are powers of ten ("512M" is 512e6 bytes, about 488.3 MiB). Returns None for
    empty or unparseable input, since a missing limit is common and must not break listing.
    """
    if quantity is None or isinstance(quantity, bool):
        return None
    if isinstance(quantity, int | float):
        return float(quantity) / 2**20
    m = _QUANTITY.match(quantity)
    if not m:
        return None
    number, suffix = float(m.group(1)), m.group(2)
    factor = _BINARY.get(suffix) or _DECIMAL[suffix]
    return number * factor / 2**20


def as_int(value: object) -> int:
    """A replica count from decoded JSON, where Go's omitempty turns 0 into an absent field."""
    if value is None or isinstance(value, bool):
        return 0
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def as_float(value: object) -> float:
    """A float counter from decoded JSON; absent means 0."""
    if value is None or isinstance(value, bool):
        return 0.0
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def prewarmer_annotations(value: object) -> dict[str, str]:
    """The `prewarmer.io/*` entries of an annotations map (the rest is none of ours and can be large)."""
    return {k: v for k, v in string_map(value).items() if k.startswith("prewarmer.io/")}


def string_map(value: object) -> dict[str, str]:
    """Labels from decoded JSON or a client model: a dict of strings; anything else means none."""
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


# --- Kubernetes plumbing shared by knative.py and deployment.py ------------------------------------------------
# The official client is imported lazily so that OpenFaaS and dry-run users do not pay for loading its models.

MERGE_PATCH = "application/merge-patch+json"


def load_kube_api_client() -> Any:
    """An ApiClient from the in-cluster service account, else from ~/.kube/config (or $KUBECONFIG)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    # One immediate reconnect covers a stale pooled keep-alive socket; real retries (with backoff) belong to
    # ResilientActuator, and urllib3's default of 3 would multiply every attempt against a down API server.
    configuration.retries = 1
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as in_cluster_error:
        try:
            config.load_kube_config(client_configuration=configuration)
        except (config.ConfigException, OSError) as exc:
            raise ActuatorAuthError(
                f"no Kubernetes credentials: not running in a cluster ({in_cluster_error}) "
                f"and no usable kubeconfig ({exc})"
            ) from exc
    return client.ApiClient(configuration)


def _api_status_message(body: object) -> str:
    """The human part of a Kubernetes Status object (the API's error body), or the raw body shortened."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        decoded = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(decoded, dict) and decoded.get("message"):
        return str(decoded["message"])
    return text.strip()[:200]


def map_kube_error(exc: BaseException, what: str, host: str) -> ActuatorError:
    """Turn an ApiException / urllib3 error raised by the kubernetes client into one of our error classes."""
    status = getattr(exc, "status", None)
    if status is None or not isinstance(status, int):
        # urllib3 connection refused, DNS failure, read timeout, or MaxRetryError wrapping one of them.
        return ActuatorError(f"Kubernetes API {host}: {what} failed: {type(exc).__name__}: {exc}")
    detail = _api_status_message(getattr(exc, "body", None)) or str(getattr(exc, "reason", "") or "")
    message = f"Kubernetes API {host}: {what} answered HTTP {status}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return ActuatorAuthError(
            f"Kubernetes API {host} refused the credentials for {what} (HTTP {status})"
            + (f": {detail}" if detail else "")
            + "; check the service account token and its RBAC role",
            status=status,
        )
    if status == 404:
        return ActuatorNotFound(message, status=status)
    if status == 0 or status in (408, 409, 429) or status >= 500:
        # 0 is the client's own "could not send" (e.g. TLS failure); 409 is an optimistic-lock conflict.
        headers = getattr(exc, "headers", None) or {}
        retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
        try:
            retry_after_s = float(retry_after) if retry_after is not None else None
        except ValueError:
            retry_after_s = None
        return ActuatorError(message, status=status, retry_after_s=retry_after_s)
    return ActuatorRejected(message, status=status)


class KubeActuator(Actuator):
    """Common part of the Kubernetes actuators: owns (or borrows) an ApiClient, runs its blocking calls in threads."""

    def __init__(self, namespace: str, api_client: Any = None, timeout_s: float = 10.0) -> None:
        self.namespace = namespace
        self.timeout_s = float(timeout_s)
        self._api_client = api_client
        self._owns_client = api_client is None

    @property
    def host(self) -> str:
        config = getattr(self._api_client, "configuration", None)
        return str(getattr(config, "host", "?"))

    async def start(self) -> None:
        if self._api_client is None:
            self._api_client = await asyncio.to_thread(load_kube_api_client)

    async def close(self) -> None:
        # Only close what we created: a borrowed client may be shared with other code.
        if self._owns_client and self._api_client is not None:
            client, self._api_client = self._api_client, None
            await asyncio.to_thread(client.close)

    async def _call(self, what: str, api: Callable[[Any], Any], method: str, *args: Any, **kwargs: Any) -> Any:
        """Run `api(client).method(*args, **kwargs)` off the event loop with our timeout, mapping errors to ours.

        The API object is built only after start(): built earlier it would silently bind to the client library's
        default configuration (host "http://localhost") instead of ours.
        """
        import urllib3
        from kubernetes.client.exceptions import ApiException

        await self.start()
        fn = getattr(api(self._api_client), method)
        kwargs.setdefault("_request_timeout", self.timeout_s)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise map_kube_error(exc, what, self.host) from exc
