"""Gateway configuration: options merged from the command line over the environment over defaults,
basic-auth secrets, and the functions (`stack.yml`, OpenFaaS stack format) the gateway serves.

`OPTIONS` is the single table of options: the CLI builds its flags from it and errors name both
the flag and the environment variable, plus where the bad value came from. `load_config(cli, env)`
returns a validated `GatewayConfig` or raises `ConfigError` (a ValueError, one line).

Basic auth follows OpenFaaS: a user name and a password *file*. Without `--basic-auth-user` /
`--basic-auth-password-file`, the files `basic-auth-user` and `basic-auth-password` under the secret
mount path (`/var/secrets`) are used when they exist. Auth is off only when neither a user nor a
password is configured anywhere; configuring only one of them is an error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator

from prewarmer.stream.keys import DEFAULT_PREFIX, DEFAULT_SHARDS
from prewarmer.units import parse_duration

DEFAULT_NAMESPACE = "openfaas-fn"
DEFAULT_MEMORY = "128Mi"


class ConfigError(ValueError):
    """Bad configuration; the message names the option (flag and environment variable) or the file."""


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    env: str
    help: str
    metavar: str = "VALUE"

    def name(self) -> str:
        return f"{self.flag} ({self.env})"


OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", "PREWARMER_GATEWAY_HOST", "address to listen on (127.0.0.1)", "HOST"),
    Option("port", "--port", "PREWARMER_GATEWAY_PORT", "port to listen on (8080; 0 picks a free one)", "PORT"),
    Option("redis_url", "--redis", "PREWARMER_REDIS_URL",
           "emit invocation events to this Redis (redis://host:6379/0); default: no events", "URL"),
    Option("functions_dir", "--functions", "PREWARMER_FUNCTIONS_DIR",
           "directory with stack.yml and one folder per function (./functions)", "DIR"),
    Option("keep_alive_s", "--keep-alive", "PREWARMER_GATEWAY_KEEP_ALIVE",
           "release an idle worker after this long while no replica target is set (60s; inf = never)", "TIME"),
    Option("max_workers", "--max-workers", "PREWARMER_GATEWAY_MAX_WORKERS",
           "worker processes per function at most; more requests queue (20)", "N"),
    Option("exec_timeout_s", "--exec-timeout", "PREWARMER_GATEWAY_EXEC_TIMEOUT",
           "an invocation running longer gets 504 and its worker is killed (60s)", "TIME"),
    Option("startup_timeout_s", "--startup-timeout", "PREWARMER_GATEWAY_STARTUP_TIMEOUT",
           "a worker not ready after this long is killed (120s)", "TIME"),
    Option("shutdown_timeout_s", "--shutdown-timeout", "PREWARMER_GATEWAY_SHUTDOWN_TIMEOUT",
           "on SIGTERM/SIGINT, wait this long for in-flight requests (10s)", "TIME"),
    Option("namespace", "--namespace", "PREWARMER_GATEWAY_NAMESPACE", "namespace of the functions (openfaas-fn)",
           "NS"),
    Option("basic_auth_user", "--basic-auth-user", "PREWARMER_GATEWAY_BASIC_AUTH_USER",
           "user name for /system/* (default: <secret-mount-path>/basic-auth-user if it exists)", "USER"),
    Option("basic_auth_password_file", "--basic-auth-password-file", "PREWARMER_GATEWAY_BASIC_AUTH_PASSWORD_FILE",
           "file holding the /system/* password (default: <secret-mount-path>/basic-auth-password if it exists)",
           "FILE"),
    Option("secret_mount_path", "--secret-mount-path", "PREWARMER_GATEWAY_SECRET_MOUNT_PATH",
           "where OpenFaaS-style secrets are mounted (/var/secrets)", "DIR"),
    Option("stream_prefix", "--stream-prefix", "PREWARMER_STREAM_PREFIX",
           f"key prefix of the event streams ({DEFAULT_PREFIX})", "PREFIX"),
    Option("stream_shards", "--stream-shards", "PREWARMER_STREAM_SHARDS",
           f"number of event shard streams ({DEFAULT_SHARDS}); must match the sidecar", "N"),
    Option("max_body_bytes", "--max-body-size", "PREWARMER_GATEWAY_MAX_BODY_SIZE",
           "largest request body accepted; a larger one gets 413 before it is read (1Mi; e.g. 512Ki, 10Mi, "
           "or bytes)", "SIZE"),
)
OPTION_BY_FIELD = {o.field: o for o in OPTIONS}


def _duration(v: Any) -> Any:
    return parse_duration(v) if isinstance(v, str) else v


def _size(v: Any) -> Any:
    # Kubernetes-style quantities as for memory limits: 1Mi, 512Ki, 10M, or plain bytes.
    return parse_memory(v) if isinstance(v, str) else v


def _optional_str(v: Any) -> Any:
    # An empty environment variable means "not set" (a common way to blank a variable in compose files).
    return None if isinstance(v, str) and not v.strip() else v


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]

#: Default request body limit. The OpenFaaS gateway itself sets none (faas gateway/types/readconfig.go has
#: no such option): what an OpenFaaS installation refuses by default is the ingress in front of it, NGINX's
#: `client_max_body_size` / ingress-nginx `proxy-body-size` of 1 MiB, raised per function when needed. 1 MiB
#: is also aiohttp's own `client_max_size` default. Larger bodies get 413 before they are read.
DEFAULT_MAX_BODY_BYTES = 1 << 20


class GatewayConfig(BaseModel):
    """Validated gateway settings (durations in seconds)."""

    model_config = {"frozen": True, "extra": "forbid"}

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    redis_url: Annotated[str | None, BeforeValidator(_optional_str)] = None
    functions_dir: Path = Path("functions")
    keep_alive_s: Duration = Field(default=60.0, ge=0)
    max_workers: int = Field(default=20, ge=1, le=10_000)
    exec_timeout_s: Duration = Field(default=60.0, gt=0)
    startup_timeout_s: Duration = Field(default=120.0, gt=0)
    shutdown_timeout_s: Duration = Field(default=10.0, ge=0, allow_inf_nan=False)
    namespace: str = Field(default=DEFAULT_NAMESPACE, min_length=1, max_length=253)
    basic_auth_user: Annotated[str | None, BeforeValidator(_optional_str)] = None
    basic_auth_password_file: Annotated[Path | None, BeforeValidator(_optional_str)] = None
    secret_mount_path: Path = Path("/var/secrets")
    stream_prefix: str = Field(default=DEFAULT_PREFIX, min_length=1)
    stream_shards: int = Field(default=DEFAULT_SHARDS, ge=1, le=65536)
    max_body_bytes: Size = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1, le=1 << 31)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return v


@dataclass(frozen=True)
class BasicAuth:
    user: str
    password: str = field(repr=False)
    source: str  # where they came from, for the startup log (never the password itself)


def load_config(cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Merge `cli` (option field -> value; None = not given) over `env` over the defaults and validate."""
    cli = cli or {}
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        if cli.get(opt.field) is not None:
            values[opt.field], sources[opt.field] = cli[opt.field], f"command line {opt.flag}"
        elif env.get(opt.env) is not None:
            values[opt.field], sources[opt.field] = env[opt.env], f"environment {opt.env}"
    try:
        return GatewayConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        fname = str(err["loc"][0]) if err["loc"] else ""
        opt = OPTION_BY_FIELD.get(fname)
        if opt is None:
            raise ConfigError(f"gateway config: {err['msg']}") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{opt.name()}: {msg}, got {values.get(fname)!r} from {sources[fname]}") from None


def resolve_basic_auth(cfg: GatewayConfig) -> BasicAuth | None:
    """The /system/* credentials, or None when auth is off (neither a user nor a password configured)."""
    user_opt, pw_opt = OPTION_BY_FIELD["basic_auth_user"], OPTION_BY_FIELD["basic_auth_password_file"]
    user, user_src = cfg.basic_auth_user, user_opt.flag
    if user is None:
        default_user = cfg.secret_mount_path / "basic-auth-user"
        if default_user.is_file():
            user, user_src = _read_secret(default_user, user_opt), str(default_user)
    pw_file = cfg.basic_auth_password_file
    if pw_file is None:
        default_pw = cfg.secret_mount_path / "basic-auth-password"
        if default_pw.is_file():
            pw_file = default_pw
    if user is None and pw_file is None:
        return None
    if user is None:
        raise ConfigError(f"{user_opt.name()}: a password file is configured ({pw_file}) but no user name; give "
                          f"{user_opt.flag} or mount {cfg.secret_mount_path / 'basic-auth-user'}")
    if pw_file is None:
        raise ConfigError(f"{pw_opt.name()}: a user name is configured but no password file; give {pw_opt.flag} "
                          f"or mount {cfg.secret_mount_path / 'basic-auth-password'}")
    if not user:
        raise ConfigError(f"{user_opt.name()}: the user name is empty (from {user_src})")
    password = _read_secret(pw_file, pw_opt)
    if not password:
        raise ConfigError(f"{pw_opt.name()}: the password file {pw_file} is empty")
    return BasicAuth(user=user, password=password, source=f"user from {user_src}, password from {pw_file}")


def _read_secret(path: Path, opt: Option) -> str:
    try:
        # Secret files usually end with a newline; OpenFaaS trims whitespace too.
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{opt.name()}: cannot read {path}: {e}") from None


# ---------------------------------------------------------------------------------------------------
# Functions: stack.yml


@dataclass(frozen=True)
class FunctionSpec:
    """One function the gateway serves."""

    name: str
    handler_dir: Path
    image: str = ""
    memory: str = DEFAULT_MEMORY
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def memory_gb(self) -> float:
        """GB for GB-s accounting: binary GB, so 128Mi is 0.125 GB as cloud providers bill it."""
        return self.memory_bytes / 2**30


_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?\s*$")
_MULT = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "K": 10**3, "M": 10**6,
         "G": 10**9, "T": 10**12}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def parse_memory(text: str) -> int:
    """Bytes in a Kubernetes memory quantity: `128Mi`, `1Gi`, `512M`, `1000000`."""
    m = _QUANTITY.match(str(text))
    if not m:
        raise ValueError(f"not a memory quantity: {text!r} (examples: 128Mi, 1Gi, 512M)")
    n = float(m.group(1)) * _MULT[m.group(2)]
    if not math.isfinite(n) or n <= 0:
        raise ValueError(f"memory must be > 0: {text!r}")
    return int(n)


def load_functions(functions_dir: Path | str) -> dict[str, FunctionSpec]:
    """Functions of `functions_dir/stack.yml`, or, without a stack file, every sub-folder with a handler.py."""
    import yaml

    root = Path(functions_dir)
    fopt = OPTION_BY_FIELD["functions_dir"]
    if not root.is_dir():
        raise ConfigError(f"{fopt.name()}: {root} is not a directory")
    stack = root / "stack.yml"
    if not stack.exists():
        specs = {d.name: FunctionSpec(d.name, d.resolve()) for d in sorted(root.iterdir())
                 if (d / "handler.py").is_file()}
        if not specs:
            raise ConfigError(f"{fopt.name()}: {root} has neither a stack.yml nor function folders with a handler.py")
        return specs
    try:
        doc = yaml.safe_load(stack.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{stack}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("functions"), dict) or not doc["functions"]:
        raise ConfigError(f"{stack}: expected a mapping with a non-empty 'functions' mapping")
    specs: dict[str, FunctionSpec] = {}
    for name, fn in doc["functions"].items():
        where = f"{stack}: functions.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: function names are lower-case DNS labels (a-z, 0-9, -)")
        if not isinstance(fn, dict):
            raise ConfigError(f"{where}: expected a mapping")
        handler = fn.get("handler", f"./{name}")
        if not isinstance(handler, str):
            raise ConfigError(f"{where}.handler: expected a path")
        handler_dir = (root / handler).resolve()
        if not (handler_dir / "handler.py").is_file():
            raise ConfigError(f"{where}.handler: {handler_dir / 'handler.py'} does not exist")
        limits = fn.get("limits") or {}
        memory = str(limits.get("memory", DEFAULT_MEMORY)) if isinstance(limits, dict) else DEFAULT_MEMORY
        try:
            parse_memory(memory)
        except ValueError as e:
            raise ConfigError(f"{where}.limits.memory: {e}") from None
        maps = {}
        for key in ("labels", "annotations", "environment"):
            value = fn.get(key) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping")
            maps[key] = {str(k): str(v) for k, v in value.items()}
        specs[name] = FunctionSpec(name=name, handler_dir=handler_dir, image=str(fn.get("image", "")), memory=memory,
                                   **maps)
    return specs
