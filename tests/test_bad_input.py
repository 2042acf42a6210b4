"""Issue 17, "bad input is refused, not absorbed": every probe of the issue against what it hits for real.

The gateway runs on loopback with real worker processes; events go through a real redis-server and the
real sidecar loop; traces go through the real loaders and the `prewarmer replay` command. Each probe must
give a clear refusal (HTTP 4xx, a dead letter with its reason, exit 2) and nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis
from helpers import serve_on_loopback

from prewarmer import cli
from prewarmer.actuators import DryRunActuator
from prewarmer.actuators.base import ActuatorError, FunctionStatus
from prewarmer.gateway.app import GATEWAY, create_app
from prewarmer.gateway.config import ConfigError, load_config
from prewarmer.registry import policy_factory
from prewarmer.sidecar.run import Sidecar, SidecarOptions
from prewarmer.stream.consumer import RedisEventSource, connect
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.keys import dead_letter_key, shard_of, stream_key
from prewarmer.stream.producer import RedisEventProducer
from prewarmer.workloads.azure2019 import load_azure2019
from prewarmer.workloads.azure2021 import load_azure2021
from prewarmer.workloads.base import TraceError
from prewarmer.workloads.detect import open_trace

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
SHARED_DAY = ROOT.parent / "shared" / "traces" / "azure2019-d01-sample1000"  # beside the checkout, as in test_cli


# ---- gateway ------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, **options) -> AsyncIterator[tuple[str, aiohttp.ClientSession, object]]:
    cli_opts = {"port": 0, "functions_dir": FUNCTIONS, "secret_mount_path": tmp_path / "no-secrets", **options}
    app = create_app(load_config(cli_opts, env={}))
    runner, url = await serve_on_loopback(app, shutdown_timeout=5.0)
    try:
        async with aiohttp.ClientSession() as session:
            yield url, session, app[GATEWAY]
    finally:
        await runner.cleanup()


async def raw_request(url: str, head: bytes) -> bytes:
    """Send only `head` (request line and headers, no body) and return everything the server answers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return status_line + rest
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_50_mb_body_without_credentials_is_413_and_never_reaches_a_worker(tmp_path):
    async with gateway(tmp_path) as (url, session, gw):
        async with session.post(f"{url}/function/echo", data=b"x" * (50 << 20)) as r:
            assert r.status == 413
            text = await r.text()
        assert "request body too large: 52428800 bytes, the limit is 1048576 bytes" in text
        assert "--max-body-size" in text
        # A declared size is refused from the headers alone: the client need not send a byte of it.
        head = await raw_request(url, b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n"
                                      b"Expect: 100-continue\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        head = await raw_request(url, b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert gw.pool.workers_started == 0
        # Under the limit, the same function works.
        async with session.post(f"{url}/function/echo", data=b"y" * 1000) as r:
            assert r.status == 200 and await r.read() == b"y" * 1000


async def test_the_body_limit_is_configurable_and_holds_for_chunked_bodies(tmp_path):
    async with gateway(tmp_path, max_body_bytes="4Ki") as (url, session, gw):
        async with session.post(f"{url}/function/echo", data=b"z" * 4096) as r:
            assert r.status == 200

        async def chunks():
            for _ in range(10):
                yield b"c" * 1024

        async with session.post(f"{url}/function/echo", data=chunks()) as r:  # no Content-Length
            assert r.status == 413
            assert "more than the limit of 4096 bytes" in await r.text()
        async with session.post(f"{url}/system/scale-function/echo", data=b"{" + b" " * 5000 + b"}") as r:
            assert r.status == 413


def test_the_body_limit_option_is_validated():
    assert load_config({"max_body_bytes": "2Mi"}, env={}).max_body_bytes == 2 << 20
    assert load_config({}, env={"PREWARMER_GATEWAY_MAX_BODY_SIZE": "512"}).max_body_bytes == 512
    assert load_config({}, env={}).max_body_bytes == 1 << 20
    with pytest.raises(ConfigError, match=r"--max-body-size \(PREWARMER_GATEWAY_MAX_BODY_SIZE\).*'lots'"):
        load_config({"max_body_bytes": "lots"}, env={})


async def test_a_handler_exception_answers_a_short_message_and_logs_the_details(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="prewarmer.gateway")
    async with gateway(tmp_path) as (url, session, gw):
        async with session.post(f"{url}/function/cpu?n=x") as r:
            assert r.status == 500
            body = await r.text()
    assert body.startswith("function cpu: the handler raised an exception (ref ")
    assert "ValueError" not in body and "integer" not in body
    ref = body.split("(ref ")[1].split(";")[0]
    failed = [rec.getMessage() for rec in caplog.records if "event=invocation_failed" in rec.getMessage()]
    assert len(failed) == 1 and f"ref={ref}" in failed[0]
    assert "ValueError: n must be an integer, got 'x'" in failed[0]


async def test_an_oversized_path_is_400_with_one_warning_line_and_no_traceback(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with gateway(tmp_path) as (url, session, gw):
        head = await raw_request(url, b"GET /function/echo/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.split(b" ")[1] == b"400", head[:200]  # aiohttp answers a request it could not parse as 1.0
        async with session.get(f"{url}/healthz") as r:  # the gateway serves on
            assert r.status == 200
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not [rec for rec in caplog.records if rec.exc_info]
    bad = [rec.getMessage() for rec in caplog.records if "event=bad_request" in rec.getMessage()]
    assert len(bad) == 1 and "status=400" in bad[0] and "LineTooLong" in bad[0]
    assert "Traceback" not in caplog.text


# ---- events: real Redis, real consumer and sidecar ------------------------------------------------

PREFIX = "t17:events"
N_SHARDS = 4


def ev(function: str, ts: float, i: int = 0) -> dict[str, str]:
    return InvocationEvent(function=function, namespace="openfaas-fn", ts=ts, duration_ms=5.0, cold=False,
                           status=200, instance=f"{function}-{i}").to_fields()


async def read_all(src: RedisEventSource, want: int, timeout_s: float = 15.0) -> tuple[list, list]:
    accepted, rejected = [], []
    deadline = time.monotonic() + timeout_s
    while len(accepted) + len(rejected) < want:
        assert time.monotonic() < deadline, f"got {len(accepted)} + {len(rejected)} of {want}"
        b = await src.read(range(N_SHARDS))
        accepted += list(zip(b.function, b.ts, strict=True))
        rejected += b.rejected
        await src.ack(b)
    return accepted, rejected


async def test_an_event_from_the_year_3000_is_dead_lettered_and_its_neighbours_pass(redis_server):
    r = connect(redis_server.url)
    prod = RedisEventProducer(r, prefix=PREFIX, n_shards=N_SHARDS)
    src = RedisEventSource(r, prefix=PREFIX, n_shards=N_SHARDS, consumer="c", block_ms=50)
    now = (await r.time())[0]
    year_3000 = 32503680000.0
    entries = [ev("fn", now - 1), ev("fn", year_3000), ev("fn", now + 10), ev("fn", now + 3600)]
    ids = await prod.emit_fields_batch(entries, shard=0)
    accepted, rejected = await read_all(src, 4)
    assert [ts for _, ts in accepted] == [now - 1, now + 10]  # 10 s of clock skew is fine
    assert sorted(e[0] for e in rejected) == sorted([ids[1], ids[3]])
    dead = await r.xrange(dead_letter_key(PREFIX))
    reasons = {f[b"source_id"]: f[b"error"].decode() for _, f in dead}
    assert set(reasons) == {ids[1], ids[3]}
    assert "field 'ts'" in reasons[ids[1]] and "ahead of the Redis clock" in reasons[ids[1]]
    assert "at most 300 s of clock skew" in reasons[ids[3]]
    assert await src.pending_count(range(N_SHARDS)) == 0  # nothing left behind
    await src.close()
    await prod.close()
    await r.aclose()


async def test_a_1_mb_field_is_dead_lettered_as_a_truncated_copy(redis_server):
    r = connect(redis_server.url)
    prod = RedisEventProducer(r, prefix=PREFIX, n_shards=N_SHARDS)
    src = RedisEventSource(r, prefix=PREFIX, n_shards=N_SHARDS, consumer="c", block_ms=50)
    now = (await r.time())[0]
    huge = {**ev("fn", now), "instance": "i" * (1 << 20)}
    many = {**ev("fn", now), **{f"x{k}": "v" for k in range(100)}}
    ids = await prod.emit_fields_batch([huge, many, ev("fn", now)], shard=0)
    accepted, rejected = await read_all(src, 3)
    assert len(accepted) == 1 and {e[0] for e in rejected} == {ids[0], ids[1]}
    dead = {f[b"source_id"]: f for _, f in await r.xrange(dead_letter_key(PREFIX))}
    big = dead[ids[0]]
    assert b"'instance'" in big[b"error"]
    assert big[b"instance"].startswith(b"i" * 256) and big[b"instance"].endswith(b"...[1048576 bytes]")
    assert big[b"truncated"].startswith(b"10 fields, ")  # v, phase, function, ... instance
    assert sum(len(k) + len(v) for k, v in big.items()) < 2000
    wide = dead[ids[1]]
    assert len(wide) <= 16 + 4 and wide[b"truncated"].startswith(b"110 fields")
    assert await r.memory_usage(dead_letter_key(PREFIX)) < 20_000
    assert await src.pending_count(range(N_SHARDS)) == 0
    await src.close()
    await prod.close()
    await r.aclose()


def status(name: str) -> FunctionStatus:
    return FunctionStatus(name=name, namespace="openfaas-fn", replicas=0, available_replicas=0,
                          invocation_count=0.0, memory_mb=128.0)


def make_sidecar(r: aioredis.Redis, actuator, **kw) -> Sidecar:
    opts = SidecarOptions(replica_id="r1", n_shards=N_SHARDS, claim_min_idle_ms=100, lease_ttl_ms=5000,
                          checkpoint_interval_s=0.0, status_interval_s=3600.0, policy_spec="fixed:10m",
                          list_refresh_s=0.0, **kw)
    return Sidecar(opts, policy_factory("fixed:10m"), actuator, r)


async def produce(url: str, events: list[InvocationEvent]) -> None:
    producer = RedisEventProducer(url, n_shards=N_SHARDS)
    for e in events:
        await producer.emit(e)
    await producer.close()
    assert producer.sent == len(events)


def events_of(names: list[str], n: int, t0: float) -> list[InvocationEvent]:
    return [InvocationEvent(function=names[i % len(names)], namespace="openfaas-fn", ts=t0 + i * 0.01,
                            duration_ms=5.0, cold=False, status=200, instance=f"w{i}") for i in range(n)]


async def settle(sc: Sidecar, r: aioredis.Redis, accepted: int, dead: int, timeout_s: float = 20.0) -> None:
    """Iterate until `accepted` events are folded into agent state and `dead` are dead-lettered."""
    deadline = time.monotonic() + timeout_s
    while True:
        await sc.iterate()
        got = sum(s.agent.events for s in sc.slots.values())
        dl = await r.xlen(dead_letter_key())
        if got >= accepted and dl >= dead:
            assert (got, dl) == (accepted, dead)
            return
        assert time.monotonic() < deadline, f"accepted {got}/{accepted}, dead-lettered {dl}/{dead}"


async def pending(r: aioredis.Redis) -> int:
    total = 0
    for s in range(N_SHARDS):
        total += (await r.xpending(stream_key(s), "prewarmer"))["pending"]
    return total


async def test_events_of_a_function_the_platform_does_not_have_are_dead_lettered(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    act = DryRunActuator()
    act.set_functions([status("echo")])
    await produce(redis_server.url, events_of(["echo", "nosuch-fn"], 40, time.time()))
    sc = make_sidecar(r, act, unlisted_functions="refuse")
    await sc.start()
    await settle(sc, r, accepted=20, dead=20)
    await sc.iterate()
    tracked = {n for s in sc.slots.values() for n in s.agent.names}
    assert tracked == {"echo"}
    assert {rec.function for rec in act.records} == {"echo"}  # no scale call for nosuch-fn
    dead = await r.xrange(dead_letter_key())
    assert {f[b"function"] for _, f in dead} == {b"nosuch-fn"}
    assert all(b"'nosuch-fn' is not listed by the platform (dryrun)" in f[b"error"] for _, f in dead)
    assert all(f[b"source_stream"] == stream_key(shard_of("nosuch-fn", N_SHARDS)).encode() for _, f in dead)
    assert sc.metrics.dead._value.get() == 20
    assert await pending(r) == 0  # accepted ones acked with the checkpoint, refused ones with their dead letter

    # Deployed later: the list is re-read when an unlisted function shows up, and its events are tracked.
    act.set_functions([status("echo"), status("late-fn")])
    await produce(redis_server.url, events_of(["late-fn"], 5, time.time()))
    await settle(sc, r, accepted=25, dead=20)
    assert "late-fn" in {n for s in sc.slots.values() for n in s.agent.names}
    await sc.shutdown()
    await r.aclose()


async def test_the_number_of_tracked_functions_is_capped_per_replica(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    names = [f"fn{i}" for i in range(6)]
    await produce(redis_server.url, events_of(names, 60, time.time()))
    sc = make_sidecar(r, DryRunActuator(), unlisted_functions="admit", max_functions=4)
    await sc.start()
    await settle(sc, r, accepted=40, dead=20)
    assert sum(len(s.agent.names) for s in sc.slots.values()) == 4
    dead = await r.xrange(dead_letter_key())
    assert len({f[b"function"] for _, f in dead}) == 2
    assert all(b"already tracks 4 functions (max_functions)" in f[b"error"] for _, f in dead)
    assert await pending(r) == 0
    await sc.shutdown()
    await r.aclose()


class FlakyActuator(DryRunActuator):
    """Lists nothing (raises) until `up` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    async def list_functions(self) -> list[FunctionStatus]:
        if not self.up:
            raise ActuatorError("gateway unreachable")
        return await super().list_functions()


async def test_while_the_function_list_cannot_be_read_unlisted_events_wait_and_are_not_lost(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    act = FlakyActuator()
    act.set_functions([status("echo")])
    await produce(redis_server.url, events_of(["echo", "nosuch-fn"], 10, time.time()))
    sc = make_sidecar(r, act, unlisted_functions="refuse")
    await sc.start()
    await sc.iterate()
    await sc.iterate()
    assert sum(s.agent.events for s in sc.slots.values()) == 0  # nothing judged blind
    assert await r.xlen(dead_letter_key()) == 0
    assert await pending(r) == 10  # still pending: re-delivered later
    act.up = True
    await settle(sc, r, accepted=5, dead=5)
    assert await pending(r) == 0
    await sc.shutdown()
    await r.aclose()


def test_the_sidecar_command_refuses_unlisted_functions_by_default():
    args = cli.build_parser().parse_args(["run", "--gateway", "http://127.0.0.1:1"])
    assert args.unlisted_functions == "refuse" and args.max_functions == 10_000 and args.max_event_skew == "5m"


# ---- traces --------------------------------------------------------------------------------------

INV = "invocations_per_function_md.anon.d01.csv"
DUR = "function_durations_percentiles.anon.d01.csv"
MEM = "app_memory_percentiles.anon.d01.csv"
PCT = [f"percentile_Average_{p}" for p in (0, 1, 25, 50, 75, 99, 100)]


def write_trace(root: Path, functions: list[tuple[str, str]], counts: list[list[int]] | None = None,
                durations: dict[str, list] | None = None, memory: dict[str, object] | None = None) -> Path:
    """A one-day 2019 trace: functions as (app, function) rows; every function 1 call a minute by default."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / INV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["HashOwner", "HashApp", "HashFunction", "Trigger", *map(str, range(1, 1441))])
        for k, (app, fn) in enumerate(functions):
            w.writerow(["own", app, fn, "http", *(counts[k] if counts else [1] * 1440)])
    with open(root / DUR, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["HashOwner", "HashApp", "HashFunction", "Average", "Count", "Minimum", "Maximum", *PCT])
        for app, fn in dict.fromkeys(functions):
            pct = (durations or {}).get(fn, [10, 10, 20, 30, 40, 50, 60])
            w.writerow(["own", app, fn, 30, 1, 10, 60, *pct])
    with open(root / MEM, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["HashOwner", "HashApp", "SampleCount", "AverageAllocatedMb"])
        mem = memory if memory is not None else {app: 128 for app, _ in functions}
        for app, mb in mem.items():
            w.writerow(["own", app, 1, mb])
    return root


def replay(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["replay", "--minutes", "0:5", "--policy", "fixed", "--quiet", "--workers", "1", *args])
    return code, capsys.readouterr().err


def test_nan_and_inf_durations_exit_2_naming_file_line_and_column(tmp_path, capsys):
    root = write_trace(tmp_path / "t", [("a", "f"), ("b", "g")], durations={"g": [1, 2, "NaN", 4, 5, 6, 7]})
    code, err = replay(capsys, "--trace", str(root))
    assert code == 2
    assert f"{root / DUR}:3: column 'percentile_Average_25': not a finite number: 'NaN'" in err
    assert "Traceback" not in err
    (tmp_path / "x.csv").write_text("app,func,end_timestamp,duration\nA,x,1.0,0.5\nA,x,2.0,inf\n")
    code, err = replay(capsys, "--trace", str(tmp_path / "x.csv"))
    assert code == 2 and f"{tmp_path / 'x.csv'}:3: column 'duration': not a finite number: 'inf'" in err


def test_negative_memory_exits_2_and_negative_durations_warn_or_fail_with_strict(tmp_path, capsys):
    root = write_trace(tmp_path / "m", [("a", "f")], memory={"a": -128})
    code, err = replay(capsys, "--trace", str(root))
    assert code == 2 and f"{root / MEM}:2: column 'AverageAllocatedMb': negative value: '-128'" in err
    root = write_trace(tmp_path / "d", [("a", "f"), ("b", "g")], durations={"g": [-5, 2, 3, 4, 5, 6, 7]})
    w = load_azure2019(root)
    assert w.duration_pct_ms[1, 0] == 0.0
    assert w.describe()["warnings"][0].startswith("1 negative durations: clipped to 0; the first: ")
    code, err = replay(capsys, "--trace", str(root), "--strict")
    assert code == 2
    assert f"{root / DUR}:3: column 'percentile_Average_0': negative duration: '-5' (--strict)" in err
    csv21 = tmp_path / "n.csv"
    csv21.write_text("app,func,end_timestamp,duration\nA,x,10.0,0.5\nA,x,20.0,-1\n")
    assert "1 negative durations" in load_azure2021(csv21).describe()["warnings"][0]
    with pytest.raises(TraceError, match=r"n.csv:3: column 'duration': negative duration: '-1' \(--strict\)"):
        load_azure2021(csv21, strict=True)


def test_an_app_missing_from_the_memory_file_warns_with_the_count_and_strict_makes_it_exit_2(tmp_path, capsys):
    root = write_trace(tmp_path / "t", [("a", "f"), ("b", "g"), ("c", "h")], memory={"a": 100, "b": 300})
    w = open_trace(root)
    assert w.functions.memory_mb.tolist() == [100.0, 300.0, 200.0]  # the median stands in, as before
    (warning,) = w.describe()["warnings"]
    assert warning.startswith("1 functions whose app has no memory row: the median of the memory file (200 MB)")
    assert f"{root / INV}:4: column 'HashFunction': function h belongs to app c" in warning
    code, err = replay(capsys, "--trace", str(root))
    assert code == 0 and "prewarmer: warning: 1 functions whose app has no memory row" in err
    code, err = replay(capsys, "--trace", str(root), "--strict")
    assert code == 2
    assert err.startswith(f"prewarmer: error: {root / INV}:4: column 'HashFunction': function h belongs to app c, "
                          f"which has no row in {MEM} (--strict)")


def test_a_duplicated_function_row_is_not_counted_twice(tmp_path, capsys):
    root = write_trace(tmp_path / "t", [("a", "f"), ("b", "g"), ("a", "f")],
                       counts=[[1] * 1440, [2] * 1440, [7] * 1440])
    w = load_azure2019(root)
    assert w.functions.names == ["f", "g"]
    assert w.total_invocations() == 3 * 1440  # the first row of f, once
    assert w.describe()["warnings"][0].startswith("1 duplicated function rows: only the first row")
    code, err = replay(capsys, "--trace", str(root), "--strict")
    assert code == 2
    assert f"{root / INV}:4: column 'HashFunction': function f (app a) is listed again, first at line 2" in err


def test_a_replay_that_would_run_for_hours_is_refused_unless_forced(tmp_path, capsys, monkeypatch):
    code = cli.main(["replay", "--duration", "10000d", "--quiet"])
    err = capsys.readouterr().err
    # 10000 days of the default azure-like workload, the five default policies: hundreds of hours
    assert code == 2 and re.search(r"this replay would run for about \d{3,} h", err) and "--force" in err
    code = cli.main(["replay", "--workload", "poisson", "--duration", "10000d", "--quiet"])
    assert code == 2 and "would run for about" in capsys.readouterr().err
    # A trace too: its size is known once loaded. Pretend the machine is slow so a small trace trips it.
    root = write_trace(tmp_path / "t", [("a", "f")])
    monkeypatch.setattr(cli, "REPLAY_RATE", 1e-3)
    code, err = replay(capsys, "--trace", str(root))
    assert code == 2 and "shorten --minutes, --days or --functions, or pass --force" in err
    code, err = replay(capsys, "--trace", str(root), "--force")
    assert code == 0


def test_the_shared_day_loads_as_before_without_warnings_even_when_strict():
    w = open_trace(SHARED_DAY, minutes=(0, 60), strict=True)
    d = w.describe()
    assert "warnings" not in d and d["missing_memory"] == 0 and d["missing_durations"] == 0
    assert len(w.functions) == 1000 and w.total_invocations() == 1_351_218
    assert np.isfinite(w.duration_pct_ms).all() and (w.functions.memory_mb > 0).all()
