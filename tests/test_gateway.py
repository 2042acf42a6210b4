"""The local gateway end to end: real worker processes, real HTTP over loopback, a real redis-server.

Most tests use `echo` (a cold start of tens of milliseconds); `heavy` (PyTorch) is started once.
Waiting is always a polling loop with a deadline; after every gateway, no worker process may be left.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from helpers import alive, serve_on_loopback
from prometheus_client.parser import text_string_to_metric_families

from prewarmer.gateway.app import GATEWAY, Gateway, create_app
from prewarmer.gateway.cli import add_gateway_parser, config_from_args
from prewarmer.gateway.config import ConfigError, load_config, load_functions, parse_memory, resolve_basic_auth
from prewarmer.gateway.worker_main import encode_frame, format_response, read_frame
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.keys import shard_of, stream_key

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
NS = "openfaas-fn"


async def eventually(check: Callable[[], Awaitable], what: str, timeout: float = 15.0, interval: float = 0.02):
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def cold(self) -> bool:
        return self.headers["X-Cold-Start"] == "1"

    @property
    def worker(self) -> str:
        return self.headers["X-Prewarmer-Worker"]


@dataclass
class GW:
    url: str
    app: web.Application
    session: aiohttp.ClientSession
    auth: dict[str, str] | None = None  # Authorization header for /system/*

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]

    async def request(self, method: str, path: str, data: bytes | str | None = None, auth: dict | None = None,
                      **kw) -> Resp:
        headers = {**(auth or {}), **kw.pop("headers", {})}
        async with self.session.request(method, self.url + path, data=data, headers=headers, **kw) as r:
            return Resp(r.status, dict(r.headers), await r.read())

    async def call(self, fn: str, data: bytes | str = b"", query: str = "", **kw) -> Resp:
        return await self.request("POST", f"/function/{fn}" + (f"?{query}" if query else ""), data=data, **kw)

    async def status(self, fn: str) -> dict:
        async with self.session.get(f"{self.url}/system/function/{fn}", headers=self.auth or {}) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def scale(self, fn: str, replicas: int) -> Resp:
        return await self.request("POST", f"/system/scale-function/{fn}", auth=self.auth,
                                  json={"serviceName": fn, "namespace": NS, "replicas": replicas})

    async def metrics(self) -> dict[tuple[str, tuple], float]:
        async with self.session.get(self.url + "/metrics") as r:
            text = await r.text()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def worker_pid(self, fn: str, worker_id: str) -> int:
        return next(w.pid for w in self.gw.pool.workers(fn) if w.id == worker_id)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, auth: dict[str, str] | None = None, **options) -> AsyncIterator[GW]:
    """A gateway on a free loopback port; on exit it is shut down and every worker it started must be gone."""
    cli = {"port": 0, "functions_dir": FUNCTIONS, "secret_mount_path": tmp_path / "no-secrets", **options}
    app = create_app(load_config(cli, env={}))
    runner, url = await serve_on_loopback(app, shutdown_timeout=5.0)
    try:
        async with aiohttp.ClientSession() as session:
            yield GW(url, app, session, auth)
    finally:
        await runner.cleanup()
        pids = app[GATEWAY].pool.all_pids
        assert not [p for p in pids if alive(p)], "worker processes outlived the gateway"


# ---- invocation ---------------------------------------------------------------------------------


async def test_first_call_is_cold_the_next_warm_and_the_body_is_echoed(tmp_path):
    async with running(tmp_path) as g:
        first = await g.call("echo", b"hello \x00 world", headers={"Content-Type": "text/plain"})
        assert first.status == 200 and first.body == b"hello \x00 world"
        assert first.cold and float(first.headers["X-Prewarmer-Startup-Ms"]) > 0
        assert first.headers["Content-Type"].startswith("text/plain")
        assert float(first.headers["X-Duration-Seconds"]) > 0
        second = await g.call("echo", b"again")
        assert second.status == 200 and second.body == b"again"
        assert not second.cold and second.headers["X-Prewarmer-Startup-Ms"] == "0.000"
        assert second.worker == first.worker
        # OpenFaaS also accepts name.namespace, and a sub-path after the name.
        third = await g.call("echo.openfaas-fn/some/path", b"ns")
        assert third.status == 200 and third.body == b"ns" and not third.cold
        st = await g.status("echo")
        assert st["replicas"] == 1 and st["availableReplicas"] == 1 and st["invocationCount"] == 3


async def test_two_concurrent_calls_with_one_idle_worker_are_one_warm_one_cold(tmp_path):
    async with running(tmp_path) as g:
        assert (await g.call("io", query="ms=0")).cold
        # The first request holds the idle worker for 300 ms, so the second one needs a new worker.
        a, b = await asyncio.gather(g.call("io", query="ms=300"), g.call("io", query="ms=300"))
        assert a.status == b.status == 200
        assert sorted([a.cold, b.cold]) == [False, True]
        assert a.worker != b.worker
        assert (await g.status("io"))["replicas"] == 2


async def test_requests_beyond_max_workers_queue_fifo_for_the_first_free_worker(tmp_path):
    async with running(tmp_path, max_workers=1) as g:
        pool = g.gw.pool
        done: list[int] = []

        async def call(i: int) -> Resp:
            r = await g.call("io", query="ms=100")
            done.append(i)
            return r

        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(call(i)))
            # The next request is sent only once this one reached the pool, so arrival order is known.
            await eventually(lambda n=i + 1: _true(pool.status("io")["invocationCount"] == n), f"request {i}")
        results = await asyncio.gather(*tasks)
        assert [r.status for r in results] == [200, 200, 200]
        assert done == [0, 1, 2]
        assert len({r.worker for r in results}) == 1
        # Only the first waited for a start-up; the others waited for the one busy worker (capacity), even if they
        # arrived while it was still starting: warm, as replay counts requests queued at an instance limit.
        assert [r.cold for r in results] == [True, False, False]
        assert (await g.status("io"))["replicas"] == 1


async def _true(value: bool) -> bool:
    return value


async def test_unknown_function_is_404(tmp_path):
    async with running(tmp_path) as g:
        assert (await g.call("nope")).status == 404
        assert (await g.call("echo.other-namespace")).status == 404
        assert (await g.request("GET", "/system/function/nope")).status == 404
        assert (await g.request("GET", "/system/function/echo?namespace=other")).status == 404
        assert (await g.request("GET", "/system/functions?namespace=other")).body == b"[]"


async def test_a_handler_exception_is_500_and_the_worker_survives(tmp_path, caplog):
    caplog.set_level("INFO", logger="prewarmer.gateway")
    async with running(tmp_path) as g:
        bad = await g.call("cpu", query="n=x")
        assert bad.status == 500
        # Issue 17: the exception text is only in the log, the caller gets a short message and a reference.
        assert b"the handler raised an exception" in bad.body and b"ValueError" not in bad.body
        assert "ValueError: n must be an integer, got 'x'" in caplog.text
        good = await g.call("cpu", b"seed", query="n=1000")
        assert good.status == 200 and not good.cold and good.worker == bad.worker
        assert json.loads(good.body)["rounds"] == 1000


async def test_crashed_workers_are_removed_and_a_request_they_held_gets_502(tmp_path):
    async with running(tmp_path) as g:
        first = await g.call("io", query="ms=0")
        os.kill(g.worker_pid("io", first.worker), signal.SIGKILL)  # an idle worker dies
        await eventually(lambda: _replicas_are(g, "io", 0), "the dead idle worker to be removed")
        again = await g.call("io", query="ms=0")
        assert again.status == 200 and again.cold and again.worker != first.worker

        task = asyncio.ensure_future(g.call("io", query="ms=20000"))
        await eventually(lambda: _busy(g, "io"), "the worker to be busy")
        os.kill(g.worker_pid("io", again.worker), signal.SIGKILL)  # a busy worker dies
        crashed = await task
        assert crashed.status == 502 and again.worker.encode() in crashed.body
        assert (await g.status("io"))["replicas"] == 0


async def _replicas_are(g: GW, fn: str, n: int) -> bool:
    return (await g.status(fn))["replicas"] == n


async def _busy(g: GW, fn: str) -> bool:
    return g.gw.pool.status(fn)["busy"] == 1


async def test_heavy_cold_start_is_slow_and_a_request_during_a_prewarm_waits_for_it(tmp_path):
    async with running(tmp_path) as g:
        echo = await g.call("echo", b"x")
        assert (await g.scale("heavy", 1)).status == 202
        # The prewarming worker imports torch for a while: this request claims it and waits, so it is cold.
        cold = await g.call("heavy", b"[0.5, -1, 2]")
        warm = await g.call("heavy", b"[0.5, -1, 2]")
        assert cold.status == warm.status == 200 and cold.body == warm.body  # same model, same answer
        assert cold.cold and not warm.cold and cold.worker == warm.worker
        assert (await g.status("heavy"))["replicas"] == 1  # no extra worker was started for the request
        cold_ms, warm_ms = float(cold.headers["X-Prewarmer-Startup-Ms"]), float(warm.headers["X-Prewarmer-Startup-Ms"])
        assert cold_ms > warm_ms == 0
        # Importing torch and building the model are part of the cold start: slower than echo's.
        [heavy_worker], [echo_worker] = g.gw.pool.workers("heavy"), g.gw.pool.workers("echo")
        assert heavy_worker.startup_ms > echo_worker.startup_ms > 0
        assert heavy_worker.startup_ms >= cold_ms
        assert float(echo.headers["X-Prewarmer-Startup-Ms"]) > 0
        assert (await g.call("heavy", b'{"not": "a list"}')).status == 400


# ---- scaling ------------------------------------------------------------------------------------


async def test_scale_up_prewarms_workers_and_the_next_call_is_warm(tmp_path):
    async with running(tmp_path) as g:
        r = await g.scale("echo", 2)
        assert r.status == 202
        st = await eventually(lambda: _available(g, "echo", 2), "2 ready echo workers")
        assert st["replicas"] == 2
        call = await g.call("echo", b"x")
        assert call.status == 200 and not call.cold
        m = await g.metrics()
        assert m[("prewarmer_gateway_cold_starts_total", (("function_name", "echo.openfaas-fn"),))] == 0
        # With a target set, idle workers stay (no keep-alive) and the count holds.
        assert (await g.status("echo"))["replicas"] == 2


async def _available(g: GW, fn: str, n: int) -> dict | None:
    st = await g.status(fn)
    return st if st["availableReplicas"] == n else None


async def test_scale_to_zero_releases_idle_workers_and_scales_from_zero_on_demand(tmp_path):
    async with running(tmp_path, keep_alive_s="200ms") as g:
        first = await g.call("echo", b"x")
        pid = g.worker_pid("echo", first.worker)
        assert (await g.scale("echo", 0)).status == 202
        assert (await g.status("echo"))["replicas"] == 0  # released at once
        await eventually(lambda: _dead(pid), "the released worker to exit")
        again = await g.call("echo", b"y")
        assert again.status == 200 and again.cold and again.body == b"y"
        # Above the target of 0 it lives on the gateway's own keep-alive, as without a prewarmer.
        await eventually(lambda: _replicas_are(g, "echo", 0), "the on-demand worker to idle out")


async def test_the_target_is_a_floor_between_scale_calls(tmp_path):
    async with running(tmp_path, keep_alive_s="300ms") as g:
        await g.scale("io", 1)
        await eventually(lambda: _available(g, "io", 1), "the prewarmed worker")
        # two overlapping calls (each holds its worker 300 ms): the target's worker and one burst worker
        a, b = await asyncio.gather(g.call("io", query="ms=300"), g.call("io", query="ms=300"))
        assert sorted([a.cold, b.cold]) == [False, True]
        assert (await g.status("io"))["replicas"] == 2
        # the burst worker idles out after the keep-alive; the target's worker is never released by a timer
        await eventually(lambda: _replicas_are(g, "io", 1), "the burst worker to idle out")
        assert not (await g.call("io", query="ms=1")).cold


async def _dead(pid: int) -> bool:
    return not alive(pid)


async def test_scale_down_keeps_the_most_recently_used_workers(tmp_path):
    async with running(tmp_path) as g:
        await g.scale("echo", 3)
        await eventually(lambda: _available(g, "echo", 3), "3 ready echo workers")
        used = await g.call("echo", b"x")
        await g.scale("echo", 1)
        assert [w.id for w in g.gw.pool.workers("echo")] == [used.worker]


async def test_idle_workers_go_after_the_keep_alive_when_no_target_is_set(tmp_path):
    async with running(tmp_path, keep_alive_s="200ms") as g:
        first = await g.call("echo", b"x")
        pid = g.worker_pid("echo", first.worker)
        await eventually(lambda: _replicas_are(g, "echo", 0), "the keep-alive to release the worker")
        await eventually(lambda: _dead(pid), "the released worker to exit")
        assert (await g.call("echo", b"x")).cold


async def test_bad_scale_requests_are_400_naming_the_field(tmp_path):
    async with running(tmp_path) as g:
        async def post(body, fn="echo"):
            r = await g.request("POST", f"/system/scale-function/{fn}", data=body,
                                headers={"Content-Type": "application/json"})
            return r.status, r.body.decode()

        cases = [("{not json", "body"), ("[1, 2]", "body"), ('{"replicas": 1}', "serviceName"),
                 ('{"serviceName": "", "replicas": 1}', "serviceName"),
                 ('{"serviceName": "cpu", "replicas": 1}', "serviceName"),
                 ('{"serviceName": "echo"}', "replicas"), ('{"serviceName": "echo", "replicas": -1}', "replicas"),
                 ('{"serviceName": "echo", "replicas": "2"}', "replicas"),
                 ('{"serviceName": "echo", "replicas": 1.5}', "replicas"),
                 ('{"serviceName": "echo", "replicas": true}', "replicas"),
                 ('{"serviceName": "echo", "namespace": "other", "replicas": 1}', "namespace")]
        for body, field in cases:
            status, text = await post(body)
            assert status == 400, (body, status, text)
            assert text.startswith(f"{field}:"), (body, text)
        assert (await post('{"serviceName": "nope", "replicas": 1}', fn="nope"))[0] == 404
        assert (await g.status("echo"))["replicas"] == 0  # nothing was scaled


# ---- system API, auth, metrics --------------------------------------------------------------------


async def test_function_list_is_openfaas_function_status(tmp_path):
    async with running(tmp_path) as g:
        async with g.session.get(g.url + "/system/functions") as r:
            assert r.status == 200
            items = {f["name"]: f for f in await r.json()}
        assert set(items) == {"echo", "cpu", "io", "heavy"}
        heavy = items["heavy"]
        assert heavy["namespace"] == NS and heavy["image"] == "prewarmer/fn-heavy:latest"
        assert heavy["limits"] == {"memory": "1Gi"} and heavy["labels"]["prewarmer.io/profile"] == "model"
        assert heavy["replicas"] == heavy["availableReplicas"] == heavy["invocationCount"] == 0
        assert "description" in heavy["annotations"]
        assert (await g.request("GET", "/healthz")).body == b"OK"


async def test_basic_auth_guards_system_endpoints_only(tmp_path, caplog):
    pw = tmp_path / "password"
    pw.write_text("s3cret\n")
    good = basic("admin", "s3cret")
    async with running(tmp_path, auth=good, basic_auth_user="admin", basic_auth_password_file=pw) as g:
        for path in ("/system/functions", "/system/function/echo", "/system/info"):
            for auth in (None, basic("admin", "wrong"), basic("root", "s3cret"), basic("admin", "s3cret\n")):
                r = await g.request("GET", path, auth=auth)
                assert r.status == 401, (path, auth)
                assert r.headers["WWW-Authenticate"] == 'Basic realm="OpenFaaS API"'
            assert (await g.request("GET", path, auth=good)).status == 200
        r = await g.request("GET", "/system/functions", headers={"Authorization": "Basic !!notbase64"})
        assert r.status == 401
        scale = {"serviceName": "echo", "replicas": 0}
        assert (await g.request("POST", "/system/scale-function/echo", json=scale)).status == 401
        assert (await g.scale("echo", 0)).status == 202
        # Invocations, health and metrics stay open.
        assert (await g.call("echo", b"x")).status == 200
        assert (await g.request("GET", "/healthz")).status == 200
        assert (await g.request("GET", "/metrics")).status == 200


async def test_auth_disabled_is_logged_when_nothing_is_configured(tmp_path, caplog):
    caplog.set_level("INFO", logger="prewarmer.gateway")
    async with running(tmp_path) as g:
        assert (await g.request("GET", "/system/functions")).status == 200
    assert any("event=gateway_config" in m and 'auth="disabled' in m for m in caplog.messages)


async def test_metrics_count_invocations_cold_starts_and_gb_seconds(tmp_path):
    async with running(tmp_path) as g:
        await g.call("echo", b"a")
        await g.call("echo", b"b")
        await g.call("cpu", query="n=x")
        label = (("function_name", "echo.openfaas-fn"),)

        async def idle_counted():
            m = await g.metrics()
            return m if m[("prewarmer_gateway_idle_gb_seconds_total", label)] > 0 else None

        m = await eventually(idle_counted, "idle GB-s to accumulate")
        assert m[("gateway_function_invocation_total", (("code", "200"), ("function_name", "echo.openfaas-fn")))] == 2
        assert m[("gateway_function_invocation_total", (("code", "500"), ("function_name", "cpu.openfaas-fn")))] == 1
        assert m[("gateway_functions_seconds_count", (("code", "200"), ("function_name", "echo.openfaas-fn")))] == 2
        assert m[("prewarmer_gateway_cold_starts_total", label)] == 1
        assert m[("prewarmer_gateway_busy_gb_seconds_total", label)] > 0
        assert m[("gateway_service_count", label)] == 1
        assert m[("prewarmer_gateway_workers", label + (("state", "idle"),))] == 1
        assert m[("prewarmer_gateway_workers", label + (("state", "busy"),))] == 0
        assert m[("prewarmer_gateway_events_dropped_total", ())] == 0
        # Exact, not sampled: two scrapes in a row never lose idle time (the counter only grows).
        later = await g.metrics()
        assert later[("prewarmer_gateway_idle_gb_seconds_total", label)] > m[("prewarmer_gateway_idle_gb_seconds_total",
                                                                               label)]


# ---- events -------------------------------------------------------------------------------------


async def _stream_events(url: str, prefix: str, fn: str, n: int, timeout: float = 15.0,
                         phase: str | None = "end") -> list[InvocationEvent]:
    """The first `n` events of `fn` in its stream (of one `phase`, or all with None), in stream order."""
    r = aioredis.Redis.from_url(url)
    key = stream_key(shard_of(fn, 4), prefix)
    try:
        async def read():
            entries = await r.xrange(key)
            events = [InvocationEvent.from_fields(f) for _, f in entries]
            events = [e for e in events if e.function == fn and phase in (None, e.phase)]
            return events if len(events) >= n else None

        return await eventually(read, f"{n} {fn} events in {key}", timeout=timeout)
    finally:
        await r.aclose()


async def test_every_invocation_is_an_event_in_its_shard_stream(tmp_path, redis_server):
    t0 = time.time()
    async with running(tmp_path, redis_url=redis_server.url, stream_prefix="gwtest", stream_shards=4) as g:
        calls = [await g.call("echo", b"1"), await g.call("echo", b"2"), await g.call("cpu", query="n=x")]
        echo_events = await _stream_events(redis_server.url, "gwtest", "echo", 2)
        cpu_events = await _stream_events(redis_server.url, "gwtest", "cpu", 1)
    for resp, ev in zip(calls, echo_events + cpu_events, strict=True):
        assert ev.namespace == NS and t0 <= ev.ts <= time.time()
        assert ev.status == resp.status and ev.cold == resp.cold and ev.instance == resp.worker
        assert ev.duration_ms >= 0
        assert (ev.startup_ms > 0) if ev.cold else (ev.startup_ms == 0)
    assert [e.cold for e in echo_events] == [True, False]
    assert cpu_events[0].status == 500 and cpu_events[0].cold
    # Each invocation was reported when it arrived too, before its end, with the same arrival time.
    both = await _stream_events(redis_server.url, "gwtest", "echo", 4, phase=None)
    assert [e.phase for e in both] == ["start", "end", "start", "end"]
    assert [e.ts for e in both[0::2]] == [e.ts for e in echo_events]
    assert both[0].duration_ms is None and both[0].status is None


async def test_an_end_event_carries_the_wait_of_a_request_queued_at_max_workers(tmp_path, redis_server):
    """One worker, three requests of 300 ms at once: the second and third queue for it. Their `end` events say so
    (`wait_ms`, arrival to the start of execution: about 300 and 600 ms, though warm, `startup_ms` 0), and their
    execution is how long the worker was held (at least the handler's 300 ms), so that a consumer ends each one
    where it ended, at `ts + wait_ms + duration_ms`, and counts it in flight while it queued (issue 13, fix 8)."""
    async with running(tmp_path, redis_url=redis_server.url, stream_prefix="gwwait", stream_shards=4,
                       max_workers=1) as g:
        pool = g.gw.pool
        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(g.call("io", query="ms=300")))
            await eventually(lambda n=i + 1: _true(pool.status("io")["invocationCount"] == n), f"request {i}")
        results = await asyncio.gather(*tasks)
        events = sorted(await _stream_events(redis_server.url, "gwwait", "io", 3), key=lambda e: e.ts)
    assert [r.cold for r in results] == [True, False, False]
    first, second, third = events
    assert first.cold and first.wait_ms == pytest.approx(first.startup_ms, abs=5.0)
    for ev, queued_behind in ((second, 1), (third, 2)):
        assert not ev.cold and ev.startup_ms == 0
        assert ev.wait_ms >= 300 * queued_behind - 50, ev  # queued behind one or two 300-ms requests
        assert ev.duration_ms >= 300
    # Replayed from the events alone, the three run one after another on the one worker.
    ends = [e.ts + (e.wait_ms + e.duration_ms) / 1000 for e in events]
    assert ends[0] <= events[1].ts + events[1].wait_ms / 1000 + 0.05
    assert ends[1] <= events[2].ts + events[2].wait_ms / 1000 + 0.05


async def test_events_wait_in_the_buffer_while_redis_is_down(tmp_path, redis_server):
    async with running(tmp_path, redis_url=redis_server.url, stream_prefix="gwdown", stream_shards=4) as g:
        await g.call("echo", b"warm-up")
        await _stream_events(redis_server.url, "gwdown", "echo", 1)
        redis_server.kill()
        r = await g.call("echo", b"while redis is down")  # answered regardless
        assert r.status == 200 and not r.cold
        redis_server.start()
        events = await _stream_events(redis_server.url, "gwdown", "echo", 2, timeout=30.0)
        assert events[1].instance == r.worker and not events[1].cold


# ---- shutdown, CLI, config ------------------------------------------------------------------------


async def test_shutdown_lets_in_flight_requests_finish_and_leaves_no_worker(tmp_path):
    cfg = load_config({"port": 0, "functions_dir": FUNCTIONS, "secret_mount_path": tmp_path / "none"}, env={})
    app = create_app(cfg)
    runner, url = await serve_on_loopback(app, shutdown_timeout=10.0)
    pool = app[GATEWAY].pool
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/system/scale-function/echo", json={"serviceName": "echo", "replicas": 2}) as r:
                assert r.status == 202

            async def slow_call():
                async with s.post(url + "/function/io?ms=500") as r:
                    return r.status, await r.read()

            task = asyncio.ensure_future(slow_call())
            await eventually(lambda: _pool_busy(pool, "io"), "the io worker to be busy")
            await runner.cleanup()  # meanwhile the request is in flight
            status, body = await task
            assert status == 200 and b"waited_ms" in body
    finally:
        await runner.cleanup()
    assert len(pool.all_pids) >= 2
    assert not [p for p in pool.all_pids if alive(p)]


async def _pool_busy(pool, fn: str) -> bool:
    return pool.status(fn)["busy"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_python_m_gateway_serves_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    log = tmp_path / "gateway.log"
    env = {**os.environ, "PREWARMER_GATEWAY_PORT": str(port), "PREWARMER_FUNCTIONS_DIR": str(FUNCTIONS),
           "PREWARMER_GATEWAY_SECRET_MOUNT_PATH": str(tmp_path / "none")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prewarmer.gateway", "--keep-alive", "1m"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as s:
            async def healthy():
                try:
                    async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    assert proc.poll() is None, log.read_text()
                    return False

            await eventually(healthy, "the gateway to listen")
            async with s.post(f"http://127.0.0.1:{port}/function/echo", data=b"hi") as r:
                assert r.status == 200 and await r.read() == b"hi"
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: _exited(proc), "the gateway to exit")
        assert proc.returncode == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    pids = [int(p) for p in re.findall(r"event=worker_ready function=echo worker=echo-1 pid=(\d+)", text)]
    assert pids and not alive(pids[0])
    assert "event=signal signal=SIGTERM" in text and "event=gateway_stopped" in text
    assert 'auth="disabled' in text and "keep_alive_s=60.000" in text


async def _exited(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


def test_config_merges_command_line_over_environment_over_defaults(tmp_path):
    parser = argparse.ArgumentParser()
    add_gateway_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["gateway", "--port", "9000", "--keep-alive", "90s"])
    env = {"PREWARMER_GATEWAY_PORT": "7000", "PREWARMER_GATEWAY_HOST": "0.0.0.0", "PREWARMER_REDIS_URL": "",
           "PREWARMER_GATEWAY_MAX_WORKERS": "5"}
    cfg = config_from_args(args, env)
    assert (cfg.port, cfg.host, cfg.keep_alive_s, cfg.max_workers) == (9000, "0.0.0.0", 90.0, 5)
    assert cfg.redis_url is None and cfg.namespace == NS and cfg.functions_dir == Path("functions")
    assert args.func.__name__ == "cmd_gateway"

    with pytest.raises(ConfigError, match=r"--port \(PREWARMER_GATEWAY_PORT\).*'http' from environment"):
        load_config({}, {"PREWARMER_GATEWAY_PORT": "http"})
    with pytest.raises(ConfigError, match=r"--keep-alive \(PREWARMER_GATEWAY_KEEP_ALIVE\): not a duration.*"
                                          r"command line"):
        load_config({"keep_alive_s": "soon"}, {})
    with pytest.raises(ConfigError, match=r"--max-workers .*greater than or equal to 1"):
        load_config({"max_workers": "0"}, {})
    with pytest.raises(ConfigError, match=r"--redis \(PREWARMER_REDIS_URL\): expected a redis://"):
        load_config({}, {"PREWARMER_REDIS_URL": "http://localhost:6379"})


def test_basic_auth_comes_from_options_or_openfaas_secret_files(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    assert resolve_basic_auth(load_config({"secret_mount_path": secrets}, {})) is None
    (secrets / "basic-auth-user").write_text("admin\n")
    with pytest.raises(ConfigError, match="--basic-auth-password-file"):
        resolve_basic_auth(load_config({"secret_mount_path": secrets}, {}))
    (secrets / "basic-auth-password").write_text("pw\n")
    auth = resolve_basic_auth(load_config({"secret_mount_path": secrets}, {}))
    assert (auth.user, auth.password) == ("admin", "pw") and "pw" not in repr(auth)
    other = tmp_path / "other-password"
    other.write_text("other")
    env = {"PREWARMER_GATEWAY_BASIC_AUTH_USER": "ops", "PREWARMER_GATEWAY_BASIC_AUTH_PASSWORD_FILE": str(other),
           "PREWARMER_GATEWAY_SECRET_MOUNT_PATH": str(secrets)}
    auth = resolve_basic_auth(load_config({}, env))
    assert (auth.user, auth.password) == ("ops", "other")
    with pytest.raises(ConfigError, match=r"--basic-auth-password-file .*cannot read"):
        resolve_basic_auth(load_config({"basic_auth_user": "u", "basic_auth_password_file": tmp_path / "missing"}, {}))
    with pytest.raises(ConfigError, match="--basic-auth-user"):
        resolve_basic_auth(load_config({"basic_auth_password_file": other, "secret_mount_path": tmp_path / "x"}, {}))


def test_stack_file_gives_functions_and_memory_limits():
    specs = load_functions(FUNCTIONS)
    assert list(specs) == ["echo", "cpu", "io", "heavy"]
    assert specs["echo"].memory_gb == 0.125 and specs["heavy"].memory_gb == 1.0
    assert specs["io"].handler_dir == FUNCTIONS / "io"
    assert parse_memory("512M") == 512_000_000
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_worker_protocol_frames_and_response_forms():
    import io

    buf = io.BytesIO(encode_frame({"a": 1}, b"\x00\xffbody") + encode_frame({}, b""))
    assert read_frame(buf) == ({"a": 1}, b"\x00\xffbody")
    assert read_frame(buf) == ({}, b"")
    assert read_frame(buf) is None
    assert format_response({"statusCode": 201, "body": "é", "headers": {"X-A": 1}}) == (201, {"X-A": "1"},
                                                                                          "é".encode())
    status, headers, body = format_response({"statusCode": 200, "body": {"k": [1]}})
    assert headers["Content-Type"] == "application/json" and body == b'{"k": [1]}'
    assert format_response(b"raw") == (200, {}, b"raw")
    with pytest.raises(ValueError, match="statusCode"):
        format_response({"statusCode": 999, "body": ""})


async def test_handler_output_cannot_corrupt_the_protocol_and_import_errors_are_502(tmp_path, caplog):
    caplog.set_level("INFO", logger="prewarmer.gateway")
    fns = tmp_path / "fns"
    (fns / "noisy").mkdir(parents=True)
    (fns / "noisy" / "handler.py").write_text(
        "import os, sys\nprint('printed at import')\n"
        "def handle(event, context):\n"
        "    print('print to stdout', event.query)\n"
        "    os.write(1, b'\\x00\\x00\\x00\\x05raw bytes on fd 1\\n')\n"
        "    sys.stdout.flush()\n"
        "    sys.stderr.write('x' * 300_000)  # one huge line: the gateway must keep draining stderr\n"
        "    return {'statusCode': 200, 'body': context.hostname + ' ' + event.path + ' ' + event.method}\n")
    (fns / "broken").mkdir()
    (fns / "broken" / "handler.py").write_text("import no_such_module_here\n")
    async with running(tmp_path, functions_dir=fns, exec_timeout_s=3) as g:
        for _ in range(2):
            r = await g.request("PUT", "/function/noisy/a/b?x=1")
            assert r.status == 200 and r.body == f"{r.worker} /a/b PUT".encode()
        broken = await g.call("broken")
        assert broken.status == 502 and b"No module named" not in broken.body  # issue 17: details in the log only
        assert "No module named 'no_such_module_here'" in caplog.text
        assert broken.cold
        assert (await g.status("broken"))["replicas"] == 0


def test_a_log_line_reads_back_as_the_fields_it_was_written_with():
    """`parse_logfmt` is `log_event`'s reader (replay reads the workers' start-ups from the gateway's log with it):
    quotes, backslashes, newlines and empty values come back as they were."""
    from prewarmer.gateway import _logfmt_value, parse_logfmt

    values = {"function": "echo", "line": 'a "q" b\\c\nx\ty', "empty": "", "startup_ms": 84.21}
    line = "ts=2026-12-07T12:13:02.289 level=INFO event=worker_output " + " ".join(
        f"{k}={_logfmt_value(v)}" for k, v in values.items())
    assert parse_logfmt(line) == {"ts": "2026-12-07T12:13:02.289", "level": "INFO", "event": "worker_output",
                                  "function": "echo", "line": 'a "q" b\\c\nx\ty', "empty": "",
                                  "startup_ms": "84.210"}
