"""The gateway's HTTP API (aiohttp), OpenFaaS-compatible where OpenFaaS has an equivalent.

- `ANY /function/{name}[/{path}]` invokes a function on a worker (404 if unknown). The response is the
  handler's status, headers and body plus `X-Cold-Start: 1|0`, `X-Duration-Seconds` (time at the
  gateway, as OpenFaaS reports it), `X-Prewarmer-Worker`, `X-Prewarmer-Startup-Ms` and `X-Prewarmer-Wait-Ms`
  (arrival to the start of execution: the start-up waited for, or the queue at max_workers).
  `{name}` may carry the namespace, `echo.openfaas-fn`, as with OpenFaaS.
- `POST /system/scale-function/{name}` `{"serviceName", "namespace", "replicas"}` sets the replica
  target (see `workers` for what a target means); 202 when accepted, 400 naming the bad field.
- `GET /system/functions`, `GET /system/function/{name}`: OpenFaaS FunctionStatus objects.
- `GET /system/info`, `GET /healthz`, `GET /metrics` (Prometheus text, the gateway's own registry).

HTTP Basic auth (constant-time comparison) guards `/system/*` only, as in OpenFaaS.

Bad input is refused, not absorbed: a body larger than `--max-body-size` (`GatewayConfig.max_body_bytes`,
1 MiB by default, see `config.DEFAULT_MAX_BODY_BYTES`) gets 413 before it is read (from its
Content-Length, from `Expect: 100-continue`, or as soon as a chunked body passes the limit). A handler
that raises, or whose worker dies, answers a short message with a reference; the exception text is only
in the gateway log (`event=invocation_failed ref=...`). Malformed HTTP (an oversized request line or
header, a bad method) gets aiohttp's 400 and one WARNING log line, not an ERROR with a traceback.
Each invocation is reported to the Redis event producer (when `--redis` is set) by two `InvocationEvent`s: a
`start` when it arrives (so a long request is seen, and its worker counted busy, while it runs) and an `end`
with its outcome (a caller that disconnects ends it with status 499). `emit` only appends to the producer's
buffer, so Redis being slow or down never delays a response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import platform
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

import prewarmer
from prewarmer.gateway import log_event
from prewarmer.gateway.config import BasicAuth, FunctionSpec, GatewayConfig, load_functions, resolve_basic_auth
from prewarmer.gateway.metrics import GatewayMetrics
from prewarmer.gateway.workers import Invocation, WorkerPool
from prewarmer.stream.events import InvocationEvent

# Hop-by-hop and framing headers are the gateway's business, not the handler's.
_DROP_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                           "proxy-connection", "te", "trailer"))


class Gateway:
    """State of one gateway: config, worker pool, metrics, credentials and the event producer."""

    def __init__(self, cfg: GatewayConfig, functions: dict[str, FunctionSpec] | None = None) -> None:
        self.cfg = cfg
        self.functions = functions if functions is not None else load_functions(cfg.functions_dir)
        self.auth: BasicAuth | None = resolve_basic_auth(cfg)
        self.metrics = GatewayMetrics()
        self.pool = WorkerPool(self.functions, namespace=cfg.namespace, max_workers=cfg.max_workers,
                               keep_alive_s=cfg.keep_alive_s, exec_timeout_s=cfg.exec_timeout_s,
                               startup_timeout_s=cfg.startup_timeout_s, metrics=self.metrics)
        self.producer = None  # RedisEventProducer once started, when cfg.redis_url is set
        self.started_at = time.time()
        self._emit_failures = 0

    # ---- lifecycle --------------------------------------------------------------------------------

    async def lifecycle(self, app: web.Application):
        """aiohttp cleanup context: start the producer; at the end stop the workers, then flush events."""
        if self.cfg.redis_url:
            from prewarmer.stream.producer import RedisEventProducer

            self.producer = RedisEventProducer(self.cfg.redis_url, prefix=self.cfg.stream_prefix,
                                               n_shards=self.cfg.stream_shards)
        log_event("gateway_config", functions=",".join(self.functions), namespace=self.cfg.namespace,
                  auth=self.auth_description(), events=_redact(self.cfg.redis_url) if self.cfg.redis_url else
                  "disabled (no --redis)", keep_alive_s=self.cfg.keep_alive_s, max_workers=self.cfg.max_workers)
        yield
        # aiohttp runs this after in-flight requests finished (or the shutdown timeout cancelled them).
        await self.pool.shutdown()
        if self.producer is not None:
            buffered = self.producer.buffered
            try:
                await asyncio.wait_for(self.producer.close(), timeout=max(self.cfg.shutdown_timeout_s, 1.0))
            except (TimeoutError, OSError) as e:
                log_event("events_flush_failed", error=str(e) or type(e).__name__)
            log_event("events_flushed", buffered=buffered, sent=self.producer.sent, dropped=self.producer.dropped)
        log_event("gateway_stopped", workers_started=self.pool.workers_started)

    def auth_description(self) -> str:
        if self.auth is None:
            return (f"disabled (no --basic-auth-user / --basic-auth-password-file and no basic-auth-user / "
                    f"basic-auth-password under {self.cfg.secret_mount_path}): /system/* is open")
        return f"enabled on /system/* ({self.auth.source})"

    # ---- middleware -------------------------------------------------------------------------------

    def _too_large(self, size: int | None) -> web.Response:
        limit = self.cfg.max_body_bytes
        got = f"{size} bytes, the limit is" if size is not None else "more than the limit of"
        return web.Response(status=413, text=f"request body too large: {got} {limit} bytes "
                                             f"(gateway option --max-body-size)\n")

    def _declared_too_large(self, request: web.Request) -> web.Response | None:
        size = request.content_length
        if size is not None and size > self.cfg.max_body_bytes:
            return self._too_large(size)
        return None

    @web.middleware
    async def limits_middleware(self, request: web.Request, handler):
        """413 for a declared body over the limit before anything is read; a chunked body that grows past
        the limit while being read (aiohttp's `client_max_size`) gets the same answer."""
        refused = self._declared_too_large(request)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)

    async def expect_handler(self, request: web.Request) -> web.Response | None:
        """`Expect: 100-continue`: refuse an oversized body before the client sends it."""
        refused = self._declared_too_large(request)
        if refused is not None:
            return refused
        # What aiohttp's default expect handler does: send "100 Continue", then the body may come.
        if request.version == (1, 1):
            if request.headers.get("Expect", "").lower() != "100-continue":
                return web.Response(status=417, text="Expect: only 100-continue is supported\n")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the response proper has not started
        return None

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler):
        if self.auth is not None and _is_system(request) and not _check_basic(request, self.auth):
            return web.Response(status=401, text="Unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="OpenFaaS API"'})
        return await handler(request)

    # ---- functions --------------------------------------------------------------------------------

    def _function_name(self, raw: str) -> str | None:
        """`echo` or `echo.openfaas-fn` -> `echo`; None for another namespace or an unknown function."""
        name = raw
        if name not in self.functions and "." in name:
            name, _, ns = name.partition(".")
            if ns != self.cfg.namespace:
                return None
        return name if name in self.functions else None

    async def invoke(self, request: web.Request) -> web.Response:
        ts = time.time()
        t0 = time.perf_counter()
        name = self._function_name(request.match_info["name"])
        if name is None:
            return web.Response(status=404, text=f"function not found: {request.match_info['name']}\n")
        body = await request.read()
        meta = {"method": request.method, "path": "/" + request.match_info.get("path", ""),
                "query": request.query_string, "headers": _headers(request)}
        await self._emit(InvocationEvent.start(name, self.cfg.namespace, ts))
        try:
            inv = await self.pool.invoke(name, meta, body)
        except asyncio.CancelledError:
            # The caller went away: the request ends here (499, as nginx logs it), so that its start is closed.
            await self._emit_end(Invocation(name, 499, b"", {}, False, 0.0, (time.perf_counter() - t0) * 1000), ts)
            raise
        elapsed = time.perf_counter() - t0
        self.metrics.observe_invocation(self.pool.functions[name].label, inv.status, elapsed, inv.cold,
                                        execution_s=inv.duration_ms / 1000.0)
        await self._emit_end(inv, ts)
        headers = {k: v for k, v in inv.headers.items()
                   if k.lower() not in _DROP_HEADERS and "\n" not in v and "\r" not in v and "\n" not in k}
        body = inv.body
        if inv.error is not None and inv.status >= 500:
            ref = secrets.token_hex(4)
            log_event("invocation_failed", logging.WARNING, function=name, status=inv.status, worker=inv.worker,
                      ref=ref, error=inv.error)
            if inv.status in (500, 502):
                # The handler's exception or its worker's last words: the caller gets a short message and
                # the reference, the text stays in the log. (503 / 504 carry the gateway's own message.)
                body = _failure_text(name, inv, ref).encode()
                headers = {"Content-Type": "text/plain; charset=utf-8"}
        else:
            log_event("invocation", logging.DEBUG, function=name, status=inv.status, cold=int(inv.cold),
                      worker=inv.worker, startup_ms=inv.startup_ms, duration_ms=inv.duration_ms, seconds=elapsed)
        headers.update({"X-Cold-Start": "1" if inv.cold else "0", "X-Duration-Seconds": f"{elapsed:.6f}",
                        "X-Prewarmer-Worker": inv.worker, "X-Prewarmer-Startup-Ms": f"{inv.startup_ms:.3f}",
                        "X-Prewarmer-Wait-Ms": f"{inv.wait_ms:.3f}"})
        return web.Response(status=inv.status, body=body, headers=headers)

    async def _emit_end(self, inv: Invocation, ts: float) -> None:
        try:
            # The event's execution is how long the worker was held (what replay runs a request for, and what keeps
            # an instance busy), and its wait includes a queue at max_workers: consumers end the request where it
            # ended, ts + wait + execution, not earlier by its queue or the exchange with the worker.
            startup = max(inv.startup_ms, 0.0)
            execution = inv.duration_ms if inv.held_ms is None else max(inv.held_ms, inv.duration_ms)
            event = InvocationEvent(phase="end", function=inv.function, namespace=self.cfg.namespace, ts=ts,
                                    duration_ms=max(execution, 0.0), startup_ms=startup,
                                    wait_ms=max(inv.wait_ms, startup), cold=inv.cold, status=inv.status,
                                    instance=inv.worker)
        except (ValidationError, ValueError) as e:
            self._dropped(inv.function, e)
            return
        await self._emit(event)

    async def _emit(self, event: InvocationEvent) -> None:
        """Queue an event for Redis (when `--redis` is set); never fails a request because of its event."""
        if self.producer is None:
            return
        try:
            await self.producer.emit(event)  # only appends to a buffer: never suspends
        except (ValueError, RuntimeError) as e:
            self._dropped(event.function, e)

    def _dropped(self, function: str, e: Exception) -> None:
        # The log says why the event was lost.
        self._emit_failures += 1
        log_event("event_dropped", function=function, error=str(e).splitlines()[0])

    # ---- system API -------------------------------------------------------------------------------

    def _namespace_ok(self, request: web.Request) -> bool:
        ns = request.query.get("namespace")
        return not ns or ns == self.cfg.namespace

    def function_status(self, name: str) -> dict:
        spec, st = self.functions[name], self.pool.status(name)
        return {"name": name, "image": spec.image, "namespace": self.cfg.namespace, "labels": spec.labels,
                "annotations": spec.annotations, "limits": {"memory": spec.memory}, "replicas": st["replicas"],
                "availableReplicas": st["availableReplicas"], "invocationCount": st["invocationCount"],
                "createdAt": _rfc3339(self.started_at)}

    async def list_functions(self, request: web.Request) -> web.Response:
        if not self._namespace_ok(request):
            return web.json_response([])
        return web.json_response([self.function_status(n) for n in self.functions])

    async def get_function(self, request: web.Request) -> web.Response:
        name = self._function_name(request.match_info["name"])
        if name is None or not self._namespace_ok(request):
            return web.Response(status=404, text=f"function not found: {request.match_info['name']}\n")
        return web.json_response(self.function_status(name))

    async def scale_function(self, request: web.Request) -> web.Response:
        path_name = request.match_info["name"]
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return _bad(f"body: not valid JSON ({e})")
        if not isinstance(body, dict):
            return _bad("body: expected a JSON object with serviceName and replicas")
        service = body.get("serviceName")
        if service is None:
            return _bad("serviceName: required")
        if not isinstance(service, str) or not service:
            return _bad(f"serviceName: must be a non-empty string, got {service!r}")
        if service != path_name:
            return _bad(f"serviceName: {service!r} does not match the function in the path ({path_name!r})")
        ns = body.get("namespace") or request.query.get("namespace") or self.cfg.namespace
        if not isinstance(ns, str):
            return _bad(f"namespace: must be a string, got {ns!r}")
        if ns != self.cfg.namespace:
            return _bad(f"namespace: {ns!r} is not served by this gateway (only {self.cfg.namespace!r})")
        if "replicas" not in body:
            return _bad("replicas: required")
        replicas = body["replicas"]
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            return _bad(f"replicas: must be a non-negative integer, got {replicas!r}")
        name = self._function_name(service)
        if name is None:
            return web.Response(status=404, text=f"function not found: {service}\n")
        self.pool.scale(name, replicas)
        return web.Response(status=202)

    async def info(self, request: web.Request) -> web.Response:
        version = {"release": prewarmer.__version__, "sha": "", "commit_message": ""}
        return web.json_response({"provider": {"provider": "prewarmer-gateway", "orchestration": "process",
                                               "version": version},
                                  "version": version, "arch": platform.machine()})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def metrics_handler(self, request: web.Request) -> web.Response:
        self.pool.account()
        if self.producer is not None:
            self.metrics.set_events_dropped(self.producer.dropped + self._emit_failures)
        else:
            self.metrics.set_events_dropped(self._emit_failures)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type})


GATEWAY = web.AppKey("gateway", Gateway)


def create_app(cfg: GatewayConfig, functions: dict[str, FunctionSpec] | None = None) -> web.Application:
    """The gateway application; `app[GATEWAY]` is its state. Raises ConfigError for bad config or secrets."""
    gw = Gateway(cfg, functions)
    # handler_args: the connection handler logs malformed HTTP (a client's error) as one line, no traceback.
    app = web.Application(middlewares=[gw.limits_middleware, gw.auth_middleware],
                          client_max_size=cfg.max_body_bytes,
                          handler_args={"logger": ClientErrorLogger(logging.getLogger("aiohttp.server"))})
    app[GATEWAY] = gw
    app.cleanup_ctx.append(gw.lifecycle)
    app.router.add_route("*", "/function/{name}", gw.invoke, expect_handler=gw.expect_handler)
    app.router.add_route("*", "/function/{name}/{path:.*}", gw.invoke, expect_handler=gw.expect_handler)
    app.router.add_get("/system/functions", gw.list_functions)
    app.router.add_get("/system/function/{name}", gw.get_function)
    app.router.add_post("/system/scale-function/{name}", gw.scale_function, expect_handler=gw.expect_handler)
    app.router.add_get("/system/info", gw.info)
    app.router.add_get("/healthz", gw.healthz)
    app.router.add_get("/metrics", gw.metrics_handler)
    return app


class ClientErrorLogger(logging.LoggerAdapter):
    """The logger of aiohttp's connection handler. A request the HTTP parser refuses (a request line or
    header over 8190 bytes, a bad method, broken framing) is the client's error: aiohttp answers it with
    400 and would log it at ERROR with a full traceback; here it is one WARNING line. Anything else (a
    server-side failure) is logged as aiohttp logs it."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:  # noqa: D102 - see the class
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            reason = (exc.message or type(exc).__name__).splitlines()[0][:200]
            log_event("bad_request", logging.WARNING, status=exc.code, error=f"{type(exc).__name__}: {reason}")
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _failure_text(name: str, inv: Invocation, ref: str) -> str:
    if inv.status == 500:
        what = "the handler raised an exception"
    elif inv.worker:
        what = f"its worker {inv.worker} failed"
    else:
        what = "no worker could be started"
    return f"function {name}: {what} (ref {ref}; details are in the gateway log)\n"


def _bad(message: str) -> web.Response:
    return web.Response(status=400, text=message + "\n")


def _is_system(request: web.Request) -> bool:
    # Both the raw path and the matched route: no spelling of a /system path may dodge the check.
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    path = request.path
    return (path == "/system" or path.startswith("/system/") or canonical.startswith("/system/")
            or request.raw_path.lstrip("/").startswith("system"))


def _check_basic(request: web.Request, auth: BasicAuth) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    # Both comparisons always run, so the time taken does not say which part was wrong.
    ok_user = hmac.compare_digest(user.encode(), auth.user.encode())
    ok_password = hmac.compare_digest(password.encode(), auth.password.encode())
    return bool(sep) and ok_user and ok_password


def _headers(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in request.headers:
        if k not in out:
            out[k] = ", ".join(request.headers.getall(k))
    return out


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
