"""Sidecar + local gateway + real redis-server, end to end over loopback, functions as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis
from helpers import checkpointed_events
from test_gateway import NS, basic, eventually, running

from prewarmer.actuators import make_actuator
from prewarmer.registry import policy_factory
from prewarmer.sidecar.run import Sidecar, SidecarOptions
from prewarmer.sim import engine as E
from prewarmer.stream.keys import shard_of

ROOT = Path(__file__).resolve().parent.parent


def secret(tmp_path: Path, password: str = "s3cret") -> Path:
    p = tmp_path / "basic-auth-password"
    p.write_text(password + "\n")
    return p


def sidecar_for(url: str, redis: aioredis.Redis, password: str, policy: str = "hybrid", **kw) -> Sidecar:
    actuator = make_actuator("openfaas", max_replicas=5, gateway_url=url, username="admin", password=password,
                             namespace=NS, resilience={"sleep": _no_wait})
    opts = SidecarOptions(replica_id=kw.pop("replica", "e2e"), interval_s=0.05, status_interval_s=0.1,
                          checkpoint_interval_s=0.5, time_scale=kw.pop("time_scale", 60.0), policy_spec=policy, **kw)
    return Sidecar(opts, policy_factory(policy), actuator, redis)


async def _no_wait(_: float) -> None:
    return None


async def test_sidecar_prewarms_a_periodic_function_before_its_next_call(tmp_path, redis_server):
    pw = secret(tmp_path)
    period = 2.0  # real seconds; at time scale 60 the policy sees a call every 2 minutes
    async with running(tmp_path, auth=basic("admin", "s3cret"), redis_url=redis_server.url, keep_alive_s=0.3,
                       basic_auth_user="admin", basic_auth_password_file=pw) as g:
        r = aioredis.Redis.from_url(redis_server.url)
        sc = sidecar_for(g.url, r, "s3cret")
        stop = asyncio.Event()
        task = asyncio.create_task(sc.run(stop))
        try:
            first = await g.call("echo", b"0")
            assert first.status == 200 and first.cold
            start = time.monotonic()
            # Three more calls on the period teach hybrid the idle time (its windows: release after a call,
            # pre-warm ~0.9 period later). The workload's own schedule, not synchronization.
            for k in (1, 2, 3):
                await asyncio.sleep(max(0.0, start + k * period - time.monotonic()))
                assert (await g.call("echo", str(k).encode())).status == 200
            # After the 4th call: the sidecar releases the idle instance ...
            await eventually(lambda: _replicas_is(g, 0), "the sidecar to release echo after its call", timeout=5)
            # ... and pre-warms one ahead of the next call, which is then warm.
            await asyncio.sleep(max(0.0, start + 4 * period - time.monotonic()))
            fifth = await g.call("echo", b"4")
            assert fifth.status == 200
            assert not fifth.cold, "the periodic call after a release should find a pre-warmed instance"
            scaled = [o for o in sc.metrics.scale_requests.collect()[0].samples if o.name.endswith("_total")]
            assert scaled[0].value >= 2  # released (0) and pre-warmed (1) at least
        finally:
            stop.set()
            await task
            await sc.actuator.close()
            await r.aclose()


async def _replicas_is(g, n: int) -> bool:
    return (await g.status("echo")).get("replicas", 0) == n


async def test_a_long_request_is_seen_by_the_sidecar_while_it_runs(tmp_path, redis_server):
    """The gateway reports a request when it arrives: the sidecar counts it, and its model holds the instance it
    keeps busy, before it completes; when it ends, the model lets the instance go idle."""
    pw = secret(tmp_path)
    async with running(tmp_path, auth=basic("admin", "s3cret"), redis_url=redis_server.url,
                       basic_auth_user="admin", basic_auth_password_file=pw) as g:
        r = aioredis.Redis.from_url(redis_server.url)
        sc = sidecar_for(g.url, r, "s3cret", policy="fixed")
        stop = asyncio.Event()
        task = asyncio.create_task(sc.run(stop))
        try:
            call = asyncio.create_task(g.call("io", query="ms=5000"))

            async def seen_running() -> bool:
                slot = sc.slots.get(shard_of("io", sc.opts.n_shards))
                if slot is None or "io" not in slot.agent.index:
                    return False
                agent, f = slot.agent, slot.agent.index["io"]
                fleet = agent.fleet
                return len(fleet.inflight) == 1 and bool(fleet.inflight.fed[0]) and fleet.state.fi[f, E.F_BUSY] == 1

            await eventually(seen_running, "the sidecar to hold the running request", timeout=4)
            assert not call.done(), "the request must still be running when the sidecar sees it"
            assert (await call).status == 200

            async def seen_ended() -> bool:
                agent = sc.slots[shard_of("io", sc.opts.n_shards)].agent
                f = agent.index["io"]
                return len(agent.fleet.inflight) == 0 and agent.fleet.state.fi[f, E.F_BUSY] == 0 and \
                    agent.fleet.state.fi[f, E.F_IDLE] == 1
            await eventually(seen_ended, "the sidecar to see the request end")
        finally:
            stop.set()
            await task
            await sc.actuator.close()
            await r.aclose()


async def test_wrong_gateway_credentials_stop_the_sidecar_without_a_retry_storm(tmp_path, redis_server):
    pw = secret(tmp_path)
    async with running(tmp_path, auth=basic("admin", "s3cret"), redis_url=redis_server.url,
                       basic_auth_user="admin", basic_auth_password_file=pw) as g:
        r = aioredis.Redis.from_url(redis_server.url)
        sc = sidecar_for(g.url, r, "wrong")
        await asyncio.wait_for(sc.run(asyncio.Event()), timeout=30)  # returns by itself: no retry loop
        assert sc.fatal and "credentials" in sc.fatal
        errors = {s.labels.get("error"): s.value for s in sc.metrics.actuator_errors.collect()[0].samples
                  if s.name.endswith("_total")}
        assert errors == {"ActuatorAuthError": 1.0}
        await sc.actuator.close()
        await r.aclose()
        # The command line says so on one line and exits non-zero.
        bad = tmp_path / "wrong-password"
        bad.write_text("nope")
        # (asyncio subprocess: the gateway serving it runs on this event loop)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prewarmer", "run", "--gateway", g.url, "--redis", redis_server.url,
            "--basic-auth-user", "admin", "--basic-auth-password-file", str(bad), "--metrics-port", "0",
            "--interval", "0.1s", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 1
        assert "refused the credentials" in out.decode()
        assert "Traceback" not in err.decode()


async def _counted(r: aioredis.Redis) -> int:
    return await checkpointed_events(r, 16)


def _start_sidecar(url: str, redis_url: str, pw: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "prewarmer", "run", "--gateway", url, "--redis", redis_url, "--policy", "fixed",
         "--basic-auth-user", "admin", "--basic-auth-password-file", str(pw), "--metrics-port", "0",
         "--interval", "0.1s", "--checkpoint-interval", "0.3s", "--lease-ttl", "1s", "--claim-idle", "1s",
         "--replica-id", f"proc-{time.monotonic_ns()}"],
        stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


async def test_killing_and_restarting_the_sidecar_mid_stream_loses_no_event(tmp_path, redis_server):
    pw = secret(tmp_path)
    log = tmp_path / "sidecar.log"
    async with running(tmp_path, auth=basic("admin", "s3cret"), redis_url=redis_server.url, keep_alive_s=5,
                       basic_auth_user="admin", basic_auth_password_file=pw) as g:
        r = aioredis.Redis.from_url(redis_server.url)
        sent = 0

        async def traffic(n: int) -> None:
            nonlocal sent
            for i in range(n):
                assert (await g.call("echo" if i % 3 else "cpu", b"x", query="n=100")).status == 200
                sent += 1

        proc = _start_sidecar(g.url, redis_server.url, pw, log)
        try:
            await traffic(150)
            await eventually(lambda: _more_than(r, 0), "the first sidecar to checkpoint some events", timeout=60)
            os.killpg(proc.pid, signal.SIGKILL)  # a crash: no shutdown, no final checkpoint
            await _wait(proc)
            await traffic(150)  # events keep arriving while no sidecar runs
            proc = _start_sidecar(g.url, redis_server.url, pw, log)
            await traffic(100)
            # Each invocation is two events, its start and its end.
            await eventually(lambda: _counted_is(r, 2 * sent), f"all {2 * sent} events counted", timeout=60)
            assert await _counted(r) == 2 * sent == 800  # and not one counted twice
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert await _wait(proc) == 0, log.read_text()[-3000:]
            await r.aclose()


async def _wait(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """Wait for a child without blocking the event loop that serves the gateway."""
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


async def _more_than(r: aioredis.Redis, n: int) -> bool:
    return await _counted(r) > n


async def _counted_is(r: aioredis.Redis, n: int) -> bool:
    got = await _counted(r)
    assert got <= n, f"{got} events counted for {n} sent: some counted twice"
    return got == n
