"""The services a load-test run talks to, started (or checked) for it: Redis (a fresh `redis-server` on a
free port, or a given URL, whose run keys are deleted afterwards), the local gateway and the sidecar,
each a `Proc` of the run, ready once it logged its listening line and answers its health endpoint.
Also the small HTTP and polling helpers those checks use.
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prewarmer.load.errors import LoadTestError
from prewarmer.load.processes import Proc, Processes
from prewarmer.stream.keys import clock_key

USER = "admin"
LISTEN_RE = re.compile(r"event=gateway_listening address=(\S+)")
SIDECAR_PORT_RE = re.compile(r'"event": "metrics listening".*"port": (\d+)')
REDIS_READY_RE = re.compile(r"Ready to accept connections")
#: The sidecar's shards in a load test (given explicitly, not left to PREWARMER_SHARDS). Each shard runs a policy of
#: its own over its functions, so `--simulate` replays the functions in the same groups (`simulate.predict`).
SIDECAR_SHARDS = 16


def check_redis(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping()
    except (redis.RedisError, ValueError) as e:
        raise LoadTestError(f"cannot reach Redis at {url}: {e}") from None


def sidecar_clock_start(url: str, prefix: str, group: str = "prewarmer") -> float | None:
    """The Unix time the sidecar's policy clock counts from (its shared epoch key in Redis), None if unknown."""
    import redis

    with contextlib.suppress(redis.RedisError, ValueError, TypeError):
        r = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        return float(r.get(clock_key(prefix, group)))
    return None


def forget_streams(url: str, prefix: str) -> None:
    """Delete a run's keys (event streams, sidecar state) from a Redis that outlives the run."""
    import redis

    with contextlib.suppress(redis.RedisError, ValueError):
        r = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, auth: tuple[str, str] | None = None, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def poll_until(check: Callable[[], bool], timeout: float, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not proc.running():
            raise proc.failure(what)
        if time.monotonic() > deadline:
            raise proc.failure(what)
        time.sleep(0.1)


def start_redis(procs: Processes, logdir: Path) -> str:
    if shutil.which("redis-server") is None:
        raise LoadTestError("redis-server not found on PATH: install Redis or pass --redis URL")
    for attempt in range(3):
        port = free_port()
        rdir = logdir / "redis"
        rdir.mkdir(exist_ok=True)
        proc = procs.start(f"redis-{attempt}" if attempt else "redis",
                           ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(rdir), "--protected-mode", "no"],
                           patterns=(REDIS_READY_RE,))
        try:
            proc.wait_for(REDIS_READY_RE, 20, "did not start")
            return f"redis://127.0.0.1:{port}/0"
        except LoadTestError:
            if any("Address already in use" in ln for ln in proc.tail):
                continue  # another process took the port between our probe and the bind: pick another
            raise
    raise LoadTestError(f"redis-server: port {port} taken, three times in a row")


def format_duration(s: float) -> str:
    return "inf" if math.isinf(s) else f"{s:g}s"


#: The load test's gateway: most workers per function (the gateway's own default), given to replay as its
#: `max_instances` so that the replay queues requests beyond it as the gateway does. Without that bound replay
#: started a new instance for every request of a 123-request burst that found none free, where the gateway queued
#: them behind its 20 workers: 35 / 73 predicted against 22 / 32 measured on the default warm-up run (issue 13).
#: Unbounded, the gateway itself starts 250 worker processes at once for that burst on a 2-core machine.
DEFAULT_MAX_WORKERS = 20


def start_gateway(procs: Processes, redis_url: str, prefix: str, *, functions_dir: Path, keep_alive_s: float,
                  password_file: Path, max_workers: int = DEFAULT_MAX_WORKERS) -> str:
    proc = procs.start("gateway", [sys.executable, "-m", "prewarmer.gateway", "--host", "127.0.0.1", "--port", "0",
                                   "--redis", redis_url, "--functions", str(functions_dir),
                                   "--keep-alive", format_duration(keep_alive_s), "--max-workers", str(max_workers),
                                   "--basic-auth-user", USER, "--basic-auth-password-file", str(password_file),
                                   "--stream-prefix", prefix], patterns=(LISTEN_RE,))
    address = proc.wait_for(LISTEN_RE, 60, "did not start listening").group(1)
    url = f"http://{address}"
    poll_until(lambda: http_get(f"{url}/healthz")[0] == 200, 30, proc, "never answered /healthz with 200")
    return url


def start_sidecar(procs: Processes, gateway: str, redis_url: str, prefix: str, policy: str, *, time_scale: float,
                  password_file: Path, replica_id: str, record: Path, clock_epoch_s: float,
                  max_replicas: int = DEFAULT_MAX_WORKERS) -> None:
    """The sidecar for one run; its decisions and scale requests go to `record` (JSON lines) for the report."""
    proc = procs.start("sidecar", [sys.executable, "-m", "prewarmer", "run", "--gateway", gateway, "--kind", "openfaas",
                                   "--redis", redis_url, "--policy", policy, "--time-scale", f"{time_scale:g}",
                                   "--interval", "0.25s", "--metrics-host", "127.0.0.1", "--metrics-port", "0",
                                   "--basic-auth-user", USER, "--basic-auth-password-file", str(password_file),
                                   "--checkpoint-interval", "2s", "--prefix", prefix,
                                   "--replica-id", replica_id, "--record", str(record),
                                   "--clock-epoch", f"{clock_epoch_s:g}", "--max-replicas", str(max_replicas),
                                   "--shards", str(SIDECAR_SHARDS)],
                         patterns=(SIDECAR_PORT_RE,))
    port = proc.wait_for(SIDECAR_PORT_RE, 90, "did not start its metrics server").group(1)
    poll_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, proc, "never became ready")
