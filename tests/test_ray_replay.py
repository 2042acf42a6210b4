"""`replay --engine ray`: the same shards as Ray tasks give exactly the report of `--workers N` processes;
and the streamed azure-like workload that makes 50k functions x 14 days fit in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prewarmer.cli import main
from prewarmer.registry import policy_factory
from prewarmer.sim import ray_engine
from prewarmer.sim.replay import ReplayConfig, replay
from prewarmer.sim.startup import parse_startup
from prewarmer.workloads.synthetic import AzureLikeStream, AzureLikeWorkload, azure_like


@pytest.fixture(scope="module")
def ray_local():
    ray_engine.ensure_started(2)  # a local Ray with 2 CPUs, shared by the tests of this module
    yield
    ray_engine.shutdown()


@pytest.fixture(scope="module", params=["materialized", "streamed"])
def workload(request):
    if request.param == "streamed":
        return AzureLikeStream(40, 2 * 3600, seed=3, rate_scale=0.5)
    return azure_like(n_functions=40, duration_s=2 * 3600, seed=3)


def same(a, b) -> None:
    assert a.metrics() == b.metrics()
    for name in ("functions", "fi", "fs", "lat_hist", "sample_t", "interval_peak_gb", "alive_total", "top",
                 "alive_top"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.t_final == b.t_final and a.events == b.events


@pytest.mark.parametrize("spec", ["fixed", "hybrid"])
def test_ray_matches_process_workers(ray_local, workload, spec: str) -> None:
    # A random start-up model: start-up draws must follow the same per-shard seeds too.
    cfg = ReplayConfig(seed=5, startup=parse_startup("lognormal:median=1s,sigma=0.5"))
    stats: list[dict] = []
    processes = replay(workload, policy_factory(spec), cfg, workers=2)
    ray_result = replay(workload, policy_factory(spec), cfg, workers=2, engine="ray", stats=stats)
    same(processes, ray_result)
    assert len(stats) == 2 and sum(s["functions"] for s in stats) == 40
    assert sum(s["invocations"] for s in stats) == processes.metrics()["invocations"]
    assert all(s["peak_rss_mb"] > 0 for s in stats)


def test_ray_with_memory_cap_runs_one_exact_task(ray_local, workload) -> None:
    cfg = ReplayConfig(memory_cap_gb=2.0)
    stats: list[dict] = []
    one = replay(workload, policy_factory("fixed"), cfg, workers=1)
    on_ray = replay(workload, policy_factory("fixed"), cfg, workers=2, engine="ray", stats=stats)
    same(one, on_ray)
    assert len(stats) == 1  # functions compete for the capped memory: not split


def test_ray_progress_counts_every_invocation(ray_local, workload) -> None:
    seen: list[int] = []
    r = replay(workload, policy_factory("fixed"), ReplayConfig(), workers=2, engine="ray", progress=seen.append)
    assert sum(seen) == r.metrics()["invocations"]


def test_cli_ray_report_equals_processes(ray_local, tmp_path) -> None:
    common = ["replay", "--workload", "azure-like", "--functions", "30", "--duration", "1h", "--policy", "fixed",
              "--policy", "hybrid", "--workers", "2", "--quiet"]
    assert main([*common, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*common, "--engine", "ray", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["policies"] == b["policies"]
    assert b["runs"]["fixed"]["engine"] == "ray"


def test_cli_rejects_address_without_ray_engine(capsys) -> None:
    assert main(["replay", "--functions", "5", "--duration", "10m", "--policy", "fixed",
                 "--address", "auto", "--quiet"]) == 2
    assert "--engine ray" in capsys.readouterr().err


def test_engine_choices_are_checked(workload) -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        replay(workload, policy_factory("fixed"), ReplayConfig(), engine="dask")
    with pytest.raises(ValueError, match="address"):
        replay(workload, policy_factory("fixed"), ReplayConfig(), address="auto")


def test_cli_ray_missing_is_a_usage_error(monkeypatch, capsys) -> None:
    def missing(*_a, **_k):
        raise ray_engine.RayUnavailable(ray_engine.MISSING)

    monkeypatch.setattr(ray_engine, "ensure_started", missing)
    assert main(["replay", "--functions", "5", "--duration", "10m", "--policy", "fixed", "--engine", "ray",
                 "--quiet"]) == 2
    assert "prewarmer[ray]" in capsys.readouterr().err


# -------------------------------------------------------------------------- streamed azure-like


def arrivals(chunks):
    chunks = list(chunks)
    for c in chunks:
        assert np.all(np.diff(c.t) >= 0) and (len(c) == 0 or (c.start <= c.t[0] and c.t[-1] < c.end))
    return [np.concatenate([getattr(c, a) for c in chunks]) for a in ("t", "func", "duration")]


def test_stream_same_arrivals_whatever_the_chunks_and_the_subset() -> None:
    w = AzureLikeStream(120, 3 * 3600, seed=2)
    whole = arrivals(w.chunks(seed=4, chunk_s=3600))
    for a, b in zip(whole, arrivals(w.chunks(seed=4, chunk_s=77.7)), strict=True):
        np.testing.assert_array_equal(a, b)
    idx = np.arange(1, 120, 7)  # cuts across generation groups
    keep = np.isin(whole[1], idx)
    for a, b in zip(whole, arrivals(w.chunks(seed=4, chunk_s=1800, functions=idx)), strict=True):
        np.testing.assert_array_equal(a[keep], b)
    assert not np.array_equal(whole[0], arrivals(w.chunks(seed=5))[0])


def test_stream_is_deterministic_and_shaped_like_azure_like() -> None:
    w, again = AzureLikeStream(400, 86400, seed=3), AzureLikeStream(400, 86400, seed=3)
    for a, b in zip(arrivals(w.chunks(seed=0)), arrivals(again.chunks(seed=0)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert w.functions.names == azure_like(400, 3600, seed=3).functions.names
    assert w.describe()["classes"] == {"timer": 120, "http": 140, "bursty": 60, "rare": 80}
    t, f, d = arrivals(w.chunks(seed=0))
    per = np.bincount(f, minlength=400)
    assert per.min() >= 1 and np.all(d > 0)
    weights = w.function_weights()
    assert 0.7 < per.sum() / weights.sum() < 1.3  # the shard balance uses expected volumes
    cls = np.array([p["class"] for p in w.profiles])
    for i in np.flatnonzero(cls == "timer")[:40]:  # periodic, each fire at most a minute off its grid
        p, minutes = w.profiles[i], np.unique(np.floor(t[f == i] / 60).astype(int))
        grid = np.arange(p["phase_min"], 1440, p["period_min"])
        assert len(minutes) == len(grid) and np.all(np.abs(minutes - grid) <= 1)
    http = np.isin(f, np.flatnonzero(cls == "http"))
    by_hour = np.bincount((t[http] // 3600).astype(int), minlength=24)
    assert by_hour.max() > 1.5 * by_hour.min()  # diurnal


def test_azure_like_streams_only_above_the_threshold(monkeypatch) -> None:
    from prewarmer.workloads import synthetic

    assert isinstance(azure_like(20, 3600), AzureLikeWorkload)
    assert isinstance(azure_like(20, 3600, stream=True), AzureLikeStream)
    monkeypatch.setattr(synthetic, "STREAM_CELLS", 20 * 60 - 1)
    assert isinstance(azure_like(20, 3600), AzureLikeStream)


def test_stream_at_full_trace_scale_holds_no_horizon_sized_array() -> None:
    w = AzureLikeStream(50_000, 14 * 86400, seed=1)
    cells = 50_000 * 14 * 1440
    big = [k for k, v in vars(w).items() if isinstance(v, np.ndarray) and v.size >= cells // 100]
    assert big == []
    block = w.block_counts(block=700, group=3)
    assert block.shape == (w.group_size, w.BLOCK_MIN)


def test_the_sampled_busiest_functions_of_a_streamed_workload_are_its_busiest():
    from prewarmer.sim.result import pick_top

    w = AzureLikeStream(40, 2 * 3600, seed=3, rate_scale=0.5)
    weights = w.function_weights()
    top = pick_top(w, np.arange(40), 5)
    assert sorted(weights[top].tolist(), reverse=True) == sorted(weights.tolist(), reverse=True)[:5]


def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    """Ray retries an unreachable cluster for minutes; `--address HOST:PORT` with nothing there fails in one line."""
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        ray_engine._check_reachable(f"127.0.0.1:{port}")  # something answers: no error
        ray_engine._check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(ray_engine.RayUnavailable, match=f"nothing answers at 127.0.0.1:{port}"):
        ray_engine._check_reachable(f"127.0.0.1:{port}")
    ray_engine._check_reachable("auto")  # Ray resolves it itself
