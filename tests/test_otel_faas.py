"""The OpenTelemetry FaaS metrics (`faas_*`): names by OTel's Prometheus rules, counts and buckets, and what the
sidecar (from real events in a real redis-server) and the gateway (real worker processes) export under them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import numpy as np
import redis.asyncio as aioredis
from helpers import alive, serve_on_loopback
from prometheus_client.parser import text_string_to_metric_families

from prewarmer.actuators import DryRunActuator
from prewarmer.gateway.app import GATEWAY, create_app
from prewarmer.gateway.config import load_config
from prewarmer.otel_faas import COUNTER_SPECS, DURATION_BUCKETS_S, HISTOGRAM_SPECS, FaaSMetrics, prometheus_name
from prewarmer.registry import policy_factory
from prewarmer.sidecar.metrics import metrics_app
from prewarmer.sidecar.run import Sidecar, SidecarOptions
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.producer import RedisEventProducer

ROOT = Path(__file__).resolve().parent.parent
N_SHARDS = 4

Samples = dict[tuple[str, tuple], float]


def samples(exposition: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(exposition) for s in fam.samples}


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url + "/metrics") as r:
        assert r.status == 200
        return samples(await r.text())


def of(m: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the series carrying `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= set(lab))


def test_names_follow_otel_prometheus_rules():
    assert [prometheus_name(o, u, counter=True) for o, u, _ in COUNTER_SPECS] == \
        ["faas_invocations_total", "faas_errors_total", "faas_timeouts_total", "faas_coldstarts_total"]
    assert [prometheus_name(o, u, counter=False) for o, u, _ in HISTOGRAM_SPECS] == \
        ["faas_init_duration_seconds", "faas_invoke_duration_seconds"]
    # Every family is announced (HELP, TYPE) before any function is known, so a scrape always names them all.
    families = {(f.name, f.type) for f in text_string_to_metric_families(
        FaaSMetrics(trigger="http", invoke_duration=True).exposition().decode())}
    assert families == {("faas_invocations", "counter"), ("faas_errors", "counter"), ("faas_timeouts", "counter"),
                        ("faas_coldstarts", "counter"), ("faas_init_duration_seconds", "histogram"),
                        ("faas_invoke_duration_seconds", "histogram")}


def test_a_batch_splits_outcomes_and_fills_le_buckets():
    faas = FaaSMetrics(trigger=None, invoke_duration=True)
    names = ["a", "b", "a", "a", "b", "c"]
    status = np.array([200, 404, 500, 504, 200, 200])
    cold = np.array([1, 0, 0, 1, 1, 0])
    init = np.array([0.25, 9.0, 9.0, 12.0, 0.0, 9.0])  # read only where cold: 0.25 is on a bound, 12 above all
    faas.observe(names, status, cold, init_s=init, invoke_s=np.array([0.02, 0.3, 1.0, 60.0, 0.001, 0.5]))
    m = samples(faas.exposition().decode())
    assert of(m, "faas_invocations_total", faas_invoked_name="a") == 1  # 200; the 500 and the 504 are not successes
    assert of(m, "faas_invocations_total", faas_invoked_name="b") == 2  # 404 is the function's answer, not an error
    assert of(m, "faas_errors_total", faas_invoked_name="a") == 1
    assert of(m, "faas_timeouts_total", faas_invoked_name="a") == 1
    assert of(m, "faas_coldstarts_total") == 3 and of(m, "faas_coldstarts_total", faas_invoked_name="c") == 0
    init_a = {dict(lab)["le"]: v for (n, lab), v in m.items()
              if n == "faas_init_duration_seconds_bucket" and dict(lab)["faas_invoked_name"] == "a"}
    assert init_a["0.1"] == 0 and init_a["0.25"] == 1 and init_a["10.0"] == 1 and init_a["+Inf"] == 2
    assert of(m, "faas_init_duration_seconds_sum", faas_invoked_name="a") == 12.25
    # No cold start, no init series: `c` costs no histogram.
    assert not [k for k in m if k[0].startswith("faas_init") and ("faas_invoked_name", "c") in k[1]]
    # Execution time of the successful invocations only.
    assert of(m, "faas_invoke_duration_seconds_count") == 4
    assert of(m, "faas_invoke_duration_seconds_sum", faas_invoked_name="b") == 0.301
    assert len(DURATION_BUCKETS_S) + 1 == len(init_a)


async def test_sidecar_exports_the_events_under_otel_names(redis_server):
    now = time.time()
    events = [InvocationEvent(function=f"fn{i % 3}", namespace="openfaas-fn", ts=now - 10 + i * 0.01,
                              duration_ms=5.0, startup_ms=250.0 * (i % 3 + 1) if i < 6 else 0.0, cold=i < 6,
                              status=(500 if i == 7 else 504 if i == 8 else 200), instance=f"w{i}")
              for i in range(60)]
    producer = RedisEventProducer(redis_server.url, n_shards=N_SHARDS)
    for e in events:
        await producer.emit(e)
    await producer.close()
    r = aioredis.Redis.from_url(redis_server.url)
    opts = SidecarOptions(replica_id="r1", n_shards=N_SHARDS, checkpoint_interval_s=0.0, status_interval_s=0.0,
                          policy_spec="fixed:10m", time_scale=10.0)
    sc = Sidecar(opts, policy_factory("fixed:10m"), DryRunActuator(), r)
    await sc.start()
    runner, url = await serve_on_loopback(metrics_app(sc.metrics, sc.health, sc.ready))
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while sc.metrics.events._value.get() < len(events):
                assert time.monotonic() < deadline, "the sidecar did not ingest every event"
                await sc.iterate()
            m = await scrape(session, url)
    finally:
        await runner.cleanup()
        await sc.shutdown()
        await r.aclose()
    outcomes = sum(of(m, f"faas_{k}_total") for k in ("invocations", "errors", "timeouts"))
    assert outcomes == of(m, "prewarmer_events_ingested_total") == 60
    assert of(m, "faas_errors_total", faas_invoked_name="fn1") == 1  # event 7
    assert of(m, "faas_timeouts_total", faas_invoked_name="fn2") == 1  # event 8
    for f in range(3):
        assert of(m, "faas_coldstarts_total", faas_invoked_name=f"fn{f}") == 2
        assert of(m, "faas_init_duration_seconds_count", faas_invoked_name=f"fn{f}") == 2
        # Real seconds as the platform measured them, not scaled by --time-scale.
        assert abs(of(m, "faas_init_duration_seconds_sum", faas_invoked_name=f"fn{f}") - 2 * 0.25 * (f + 1)) < 1e-9
    assert not [k for k in m if ("faas_trigger", "http") in k[1]], "events carry no trigger"


async def test_gateway_exports_invocations_cold_starts_and_every_init(tmp_path):
    app = create_app(load_config({"port": 0, "functions_dir": ROOT / "functions",
                                  "secret_mount_path": tmp_path / "no-secrets"}, env={}))
    runner, url = await serve_on_loopback(app, shutdown_timeout=5.0)
    gw = app[GATEWAY]
    try:
        async with aiohttp.ClientSession() as session:
            for body in (b"a", b"b"):
                async with session.post(url + "/function/echo", data=body) as resp:
                    assert resp.status == 200
            async with session.post(url + "/function/cpu", params={"n": "x"}) as resp:
                assert resp.status == 500  # the handler fails on a bad n
            gw.pool.scale("io", 1)  # a prewarm: an init that no invocation waits for
            deadline = time.monotonic() + 30
            while not [w for w in gw.pool.workers("io") if w.state.value == "idle"]:
                assert time.monotonic() < deadline, "the prewarmed worker never became ready"
                await asyncio.sleep(0.02)
            m = await scrape(session, url)
            io_init_s = [w.startup_ms / 1000 for w in gw.pool.workers("io")]
    finally:
        await runner.cleanup()
        assert not [p for p in gw.pool.all_pids if alive(p)], "worker processes outlived the gateway"
    http = {"faas_trigger": "http"}
    assert of(m, "faas_invocations_total", faas_invoked_name="echo", **http) == \
        of(m, "gateway_function_invocation_total", function_name="echo.openfaas-fn", code="200") == 2
    assert of(m, "faas_errors_total", faas_invoked_name="cpu", **http) == 1
    for fn in ("echo", "cpu", "io"):
        assert of(m, "faas_coldstarts_total", faas_invoked_name=fn) == \
            of(m, "prewarmer_gateway_cold_starts_total", function_name=f"{fn}.openfaas-fn")
        assert of(m, "faas_init_duration_seconds_count", faas_invoked_name=fn) == 1  # one worker each
    assert of(m, "faas_coldstarts_total", faas_invoked_name="io") == 0  # prewarmed, never invoked
    assert len(io_init_s) == 1  # spawn to ready of the prewarmed worker, as its own start-up time says
    assert abs(of(m, "faas_init_duration_seconds_sum", faas_invoked_name="io") - io_init_s[0]) < 1e-6
    assert of(m, "faas_invoke_duration_seconds_count", faas_invoked_name="echo") == 2
    assert of(m, "faas_invoke_duration_seconds_count", faas_invoked_name="cpu") == 0  # successful ones only


def test_label_values_are_escaped_and_the_table_grows_without_losing_counts():
    faas = FaaSMetrics(trigger="http")
    odd = 'say "hi"\\now\nplease'
    names = [odd] + [f"fn{i}" for i in range(200)]  # past the first capacity (64) and its doubling
    for start in range(0, len(names), 50):
        batch = names[start:start + 50]
        faas.observe(batch, np.full(len(batch), 200), np.ones(len(batch)), init_s=np.full(len(batch), 0.5))
    faas.observe(names, np.full(len(names), 200), np.zeros(len(names)))
    m = samples(faas.exposition().decode())
    assert of(m, "faas_invocations_total", faas_invoked_name=odd, faas_trigger="http") == 2
    assert of(m, "faas_invocations_total") == 2 * len(names)
    assert of(m, "faas_coldstarts_total") == of(m, "faas_init_duration_seconds_count") == len(names)
    assert of(m, "faas_init_duration_seconds_sum", faas_invoked_name="fn199") == 0.5


def test_a_scrape_rewrites_what_changed_and_keeps_the_rest():
    faas = FaaSMetrics()
    faas.observe(["a", "b"], np.array([200, 200]), np.array([1, 1]), init_s=np.array([0.1, 0.2]))
    first = samples(faas.exposition().decode())
    faas.observe(["b"], np.array([500]), np.array([1]), init_s=np.array([3.0]))
    faas.observe(["c"], np.array([200]), np.array([0]))
    second = samples(faas.exposition().decode())
    for name in ("faas_invocations_total", "faas_init_duration_seconds_count", "faas_init_duration_seconds_sum"):
        assert of(second, name, faas_invoked_name="a") == of(first, name, faas_invoked_name="a")
    assert of(second, "faas_errors_total", faas_invoked_name="b") == 1
    assert of(second, "faas_init_duration_seconds_count", faas_invoked_name="b") == 2
    assert of(second, "faas_init_duration_seconds_sum", faas_invoked_name="b") == 3.2
    assert of(second, "faas_invocations_total", faas_invoked_name="c") == 1
    assert samples(faas.exposition().decode()) == second  # nothing new: the same text
