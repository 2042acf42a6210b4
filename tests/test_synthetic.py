"""Tests of the synthetic workloads: CLI parsing, Poisson statistics and determinism, the Azure-like mix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prewarmer.workloads.base import MinuteCountWorkload
from prewarmer.workloads.synthetic import (
    TIMER_PERIODS_MIN,
    PoissonFunction,
    PoissonWorkload,
    azure_like,
    parse_poisson_function,
)


def collect(chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chunks = list(chunks)
    return (np.concatenate([c.t for c in chunks]), np.concatenate([c.func for c in chunks]),
            np.concatenate([c.duration for c in chunks]))


# --------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------


def test_parse_full_spec() -> None:
    f = parse_poisson_function("name=api,rate=5,service=0.12,cold=1.2,memory=256")
    assert f == PoissonFunction(name="api", rate_per_s=5, service_s=0.12, cold_start_s=1.2, memory_mb=256)


def test_parse_defaults_and_spaces() -> None:
    f = parse_poisson_function(" name = api , rate = 2 , service = 1 ")
    assert (f.name, f.rate_per_s, f.service_s) == ("api", 2.0, 1.0)
    assert f.cold_start_s is None and f.memory_mb == 256.0


@pytest.mark.parametrize(("rate", "per_s"), [("5", 5.0), ("5/s", 5.0), ("30/m", 0.5), ("30/min", 0.5),
                                              ("100/h", 100 / 3600), ("1e-2", 0.01), (".5", 0.5)])
def test_parse_rate_units(rate: str, per_s: float) -> None:
    assert parse_poisson_function(f"name=a,rate={rate},service=1").rate_per_s == pytest.approx(per_s)


@pytest.mark.parametrize(("text", "seconds"), [("0.12", 0.12), ("120ms", 0.12), ("1.5s", 1.5),
                                               ("2m", 120.0), ("1h", 3600.0), ("250 ms", 0.25)])
def test_parse_time_units(text: str, seconds: float) -> None:
    f = parse_poisson_function(f"name=a,rate=1,service={text},cold={text}")
    assert f.service_s == pytest.approx(seconds)
    assert f.cold_start_s == pytest.approx(seconds)


def test_parse_zero_cold_start_and_memory_units() -> None:
    f = parse_poisson_function("name=a,rate=1,service=1,cold=0,memory=1gb")
    assert f.cold_start_s == 0.0 and f.memory_mb == 1024.0


@pytest.mark.parametrize(("text", "field"), [
    ("name=a,rate=abc,service=1", "rate"),
    ("name=a,rate=0,service=1", "rate"),
    ("name=a,rate=-3,service=1", "rate"),
    ("name=a,rate=5/d,service=1", "rate"),
    ("name=a,rate=inf,service=1", "rate"),
    ("name=a,rate=1,service=0", "service"),
    ("name=a,rate=1,service=12parsecs", "service"),
    ("name=a,rate=1,service=1,cold=-1", "cold"),
    ("name=a,rate=1,service=1,cold=nan", "cold"),
    ("name=a,rate=1,service=1,memory=0", "memory"),
    ("name=a,rate=1,service=1,memory=lots", "memory"),
    ("name=a,rate=1,service=1,colour=3", "colour"),
    ("name=a,rate=1,service=1,rate=2", "rate"),
    ("name=a,rate=1", "service"),
    ("rate=1,service=1", "name"),
    ("name=,rate=1,service=1", "name"),
    ("name=a,rate,service=1", "rate"),
])
def test_parse_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_poisson_function(text)


def test_model_validates_direct_construction() -> None:
    with pytest.raises(ValueError):
        PoissonFunction(name="a", rate_per_s=0, service_s=1)
    with pytest.raises(ValueError):
        PoissonFunction(name="a", rate_per_s=1, service_s=1, cold_start_s=-1)


# --------------------------------------------------------------------------------------------------
# Poisson workload
# --------------------------------------------------------------------------------------------------


FNS = [PoissonFunction(name="api", rate_per_s=10.0, service_s=0.12, cold_start_s=1.2),
       PoissonFunction(name="batch", rate_per_s=0.5, service_s=3.0, memory_mb=1024),
       PoissonFunction(name="quiet", rate_per_s=0.002, service_s=0.05)]


@pytest.fixture(scope="module")
def poisson() -> PoissonWorkload:
    return PoissonWorkload(FNS, duration_s=2000.0)


def test_function_table(poisson: PoissonWorkload) -> None:
    t = poisson.functions
    assert t.names == ["api", "batch", "quiet"]
    assert list(t.apps) == [0, 1, 2] and t.app_names == t.names
    assert list(t.memory_mb) == [256.0, 1024.0, 256.0]
    assert t.cold_start_s[0] == 1.2 and np.isnan(t.cold_start_s[1:]).all()
    d = poisson.describe()
    assert d["model"] == "poisson" and d["duration_s"] == 2000.0
    assert d["functions"][0] == {"name": "api", "rate_per_s": 10.0, "service_s": 0.12, "cold_start_s": 1.2,
                                 "memory_mb": 256.0}


def test_rate_and_service_statistics(poisson: PoissonWorkload) -> None:
    t, f, d = collect(poisson.chunks(seed=3, chunk_s=300))
    for i, fn in enumerate(FNS[:2]):
        ti, di = t[f == i], d[f == i]
        expected = fn.rate_per_s * poisson.horizon_s  # 20,000 for "api"
        assert abs(len(ti) - expected) <= 5 * math.sqrt(expected)
        assert abs(di.mean() - fn.service_s) <= 5 * fn.service_s / math.sqrt(len(di))
        gaps = np.diff(ti)
        assert abs(gaps.mean() - 1 / fn.rate_per_s) <= 5 / fn.rate_per_s / math.sqrt(len(gaps))
        # Exponential gaps: P(gap > mean) = 1/e, unlike fixed or uniform spacing.
        p, n = math.exp(-1), len(gaps)
        assert abs((gaps > 1 / fn.rate_per_s).mean() - p) <= 5 * math.sqrt(p * (1 - p) / n)


def test_chunks_sorted_and_in_bounds(poisson: PoissonWorkload) -> None:
    chunks = list(poisson.chunks(seed=1, chunk_s=150.0))
    assert chunks[0].start == 0.0 and chunks[-1].end == poisson.horizon_s
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.end == b.start
    for c in chunks:
        assert np.all(np.diff(c.t) >= 0)
        assert len(c) == 0 or (c.t[0] >= c.start and c.t[-1] < c.end)
        assert c.func.dtype == np.int32 and np.all(c.duration > 0)


def test_chunk_size_does_not_change_arrivals(poisson: PoissonWorkload) -> None:
    small = collect(poisson.chunks(seed=7, chunk_s=60))
    large = collect(poisson.chunks(seed=7, chunk_s=3600))
    odd = collect(poisson.chunks(seed=7, chunk_s=77.7))
    for a, b, c in zip(small, large, odd, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_seed_determinism(poisson: PoissonWorkload) -> None:
    a = collect(poisson.chunks(seed=11))
    b = collect(poisson.chunks(seed=11))
    c = collect(poisson.chunks(seed=12))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(a[0]) != len(c[0]) or not np.array_equal(a[0], c[0])


def test_slicing_keeps_each_function_stream(poisson: PoissonWorkload) -> None:
    t, f, d = collect(poisson.chunks(seed=5, chunk_s=600))
    for i in range(len(FNS)):
        ts, fs, ds = collect(poisson.chunks(seed=5, chunk_s=60, functions=np.array([i])))
        assert np.all(fs == i)
        np.testing.assert_array_equal(ts, t[f == i])
        np.testing.assert_array_equal(ds, d[f == i])


def test_poisson_workload_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        PoissonWorkload([FNS[0], FNS[0]], 60.0)
    with pytest.raises(ValueError, match="duration_s"):
        PoissonWorkload(FNS, 0.0)
    with pytest.raises(ValueError):
        PoissonWorkload([], 60.0)
    with pytest.raises(ValueError, match="chunk_s"):
        next(PoissonWorkload(FNS, 60.0).chunks(seed=1, chunk_s=0))


# --------------------------------------------------------------------------------------------------
# Azure-like mix
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure() -> MinuteCountWorkload:
    return azure_like()


def test_azure_like_deterministic(azure) -> None:
    again = azure_like()
    np.testing.assert_array_equal(azure.counts, again.counts)
    np.testing.assert_array_equal(azure.duration_pct_ms, again.duration_pct_ms)
    np.testing.assert_array_equal(azure.functions.memory_mb, again.functions.memory_mb)
    assert azure.functions.names == again.functions.names
    assert azure.functions.triggers == again.functions.triggers
    other = azure_like(seed=2)
    assert not np.array_equal(azure.counts, other.counts)


def test_azure_like_class_mix(azure) -> None:
    d = azure.describe()
    assert d["model"] == "azure-like" and d["seed"] == 1 and d["n_functions"] == 200
    assert d["duration_s"] == 6 * 3600.0 and azure.horizon_s == 6 * 3600.0
    assert d["classes"] == {"timer": 60, "http": 70, "bursty": 30, "rare": 40}
    assert len(azure.functions) == 200 and azure.counts.shape == (200, 360)
    names, triggers = azure.functions.names, azure.functions.triggers
    assert len(set(names)) == 200 and "timer-017" in names and "http-003" in names
    for name, trig, prof in zip(names, triggers, azure.profiles, strict=True):
        cls = name.split("-")[0]
        assert prof["class"] == cls
        assert trig in {"timer", "http", "queue", "event"}
        if cls in ("timer", "http"):
            assert trig == cls
    mix = azure_like(n_functions=1000, duration_s=3600, seed=4).describe()["classes"]
    assert mix == {"timer": 300, "http": 350, "bursty": 150, "rare": 200}


def test_timers_are_periodic(azure) -> None:
    seen_jitter = False
    for row, prof in zip(azure.counts, azure.profiles, strict=True):
        if prof["class"] != "timer":
            continue
        p, phase = prof["period_min"], prof["phase_min"]
        assert p in TIMER_PERIODS_MIN and 0 <= phase < p
        minutes = np.flatnonzero(row)
        assert np.all(row[minutes] == prof["per_fire"])
        grid = np.arange(phase, row.size, p)
        if prof["jitter_prob"] == 0:
            np.testing.assert_array_equal(minutes, grid)
            assert np.all(np.diff(minutes) == p)
        else:
            # Each fire is its grid minute or one off it, and no fire is lost.
            seen_jitter = True
            assert len(minutes) == len(grid)
            assert np.all(np.abs(minutes - grid) <= 1)
            assert np.all(np.abs(np.diff(minutes) - p) <= 2)
    assert seen_jitter
    assert any(p["class"] == "timer" and p["per_fire"] >= 2 for p in azure.profiles)


def test_http_diurnal_and_bursty_on_off(azure) -> None:
    day = azure_like(n_functions=200, duration_s=86400, seed=3)
    classes = np.array([p["class"] for p in day.profiles])
    http = day.counts[classes == "http"].sum(axis=0)
    by_hour = http.reshape(24, 60).sum(axis=1)
    assert by_hour.max() > 1.5 * by_hour.min()  # a visible daily cycle
    base = np.array([p["base_per_min"] for p in day.profiles if p["class"] == "http"])
    assert base.min() <= 0.05 and base.max() >= 50  # heavy-tailed spread of rates
    for row in day.counts[classes == "bursty"]:
        hot = row > 10 * max(1.0, np.median(row))
        assert 0 < hot.mean() < 0.5  # a few busy minutes amid long quiet stretches
    rare = day.counts[classes == "rare"].sum(axis=1)
    assert rare.min() >= 1 and rare.max() <= 40


def test_azure_like_durations_and_memory(azure) -> None:
    pct = azure.duration_pct_ms
    assert pct.shape == (200, 7) and np.all(np.diff(pct, axis=1) >= 0) and np.all(pct > 0)
    median = pct[:, 3]
    assert median.min() >= 50 - 1e-9 and median.max() <= 5000 + 1e-9
    prof = azure.profiles
    mean_ms = np.array([p["duration_median_ms"] * math.exp(p["duration_sigma"] ** 2 / 2) for p in prof])
    assert 0.3 <= (mean_ms < 1000).mean() <= 0.7
    mem = azure.functions.memory_mb
    assert mem.min() >= 64 and mem.max() <= 1536 and 100 <= np.median(mem) <= 220
    assert np.all(np.isnan(azure.functions.cold_start_s))
    assert list(azure.functions.apps) == list(range(200))


def test_azure_like_volume(azure) -> None:
    total = azure.total_invocations()
    assert 500_000 <= total <= 2_000_000
    # A few functions carry most of the traffic, as in the real trace.
    per_fn = np.sort(azure.counts.sum(axis=1))[::-1]
    assert per_fn[:20].sum() > 0.5 * total


def test_azure_like_replays_through_chunks() -> None:
    w = azure_like(n_functions=40, duration_s=7200, seed=9)
    chunks = list(w.chunks(seed=1, chunk_s=1800))
    assert sum(len(c) for c in chunks) == w.total_invocations()
    for c in chunks:
        assert np.all(np.diff(c.t) >= 0)
        assert len(c) == 0 or (c.t[0] >= c.start and c.t[-1] < c.end)


def test_azure_like_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n_functions"):
        azure_like(n_functions=0)
    with pytest.raises(ValueError, match="duration_s"):
        azure_like(duration_s=-1)
