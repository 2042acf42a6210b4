"""Load-test harness: schedule builders, open-loop timing and results, and `prewarmer loadtest` end to end
(real redis-server, gateway, sidecar and Locust processes)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml
from helpers import ListWorkload

from prewarmer.gateway.config import load_functions
from prewarmer.gateway.metrics import GatewayMetrics
from prewarmer.load import schedule as S
from prewarmer.load.cli import add_loadtest_parser, cmd_loadtest
from prewarmer.load.gateway_metrics import parse_gateway_metrics
from prewarmer.load.processes import MARKER_ENV, marked_pids
from prewarmer.load.results import Recorder, parse_cold, per_second
from prewarmer.load.schedule_options import build_schedule, parse_functions
from prewarmer.load.timing import latency_ms, run_schedule, send_lag_ms
from prewarmer.workloads.azure2021 import load_azure2021
from prewarmer.workloads.base import TraceError

REPO = Path(__file__).resolve().parents[1]
TRACE_2019 = REPO.parent / "shared" / "traces" / "azure2019-d01-sample1000"
TRACE_2021 = REPO.parent / "shared" / "traces" / "azure2021-example" / "AzureFunctionsInvocationTrace2021-sample200.csv"
METRIC_NAMES = ("invocations", "cold_starts", "cold_start_rate", "throughput_rps", "p50_latency_ms", "p99_latency_ms",
                "errors", "wasted_gb_s", "send_lag_p99_ms")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="prewarmer")
    add_loadtest_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["loadtest", *argv])


# ---------------------------------------------------------------------------------------------------
# Schedules


def three_functions() -> ListWorkload:
    """fast: 10 ms every 60 s (a timer); mid: 300 ms; slow: 5 s, rarest, most memory."""
    arrivals = [(60.0 * m + 1.0, 0, 0.010) for m in range(10)]
    arrivals += [(30.0 + 45.0 * k, 1, 0.300) for k in range(8)]
    arrivals += [(100.0, 2, 5.0), (400.0, 2, 5.0)]
    return ListWorkload([("fast", 128), ("mid", 256), ("slow", 1024)], arrivals, horizon_s=600.0)


def test_compression_divides_arrival_times_and_the_horizon():
    w = three_functions()
    s = S.from_workload(w, [0, 1, 2], compress=10.0)
    assert len(s) == len(w.t)
    np.testing.assert_allclose(s.t, np.sort(w.t) / 10.0)
    assert s.duration_s == pytest.approx(60.0)
    assert s.meta["compress"] == 10.0
    # --duration cuts the compressed schedule in real seconds.
    short = S.from_workload(w, [0, 1, 2], compress=10.0, duration_s=20.0)
    assert short.duration_s == 20.0 and np.all(short.t < 20.0)
    assert len(short) == int(np.sum(np.sort(w.t) / 10.0 < 20.0))


def test_functions_map_onto_samples_by_typical_duration_and_keep_their_memory():
    s = S.from_workload(three_functions(), [0, 1, 2], compress=1.0)
    by_source = {d.source: d for d in s.functions}
    assert [by_source[n].sample for n in ("fast", "mid", "slow")] == ["echo", "cpu", "io"]
    assert by_source["slow"].memory_mb == 1024
    for d in s.functions:
        assert d.name == S.deployed_name(d.source) and d.name.startswith("t-") and len(d.name) == 10
    # Requests carry their own work, capped so a small machine copes: 300 ms of CPU becomes 50 ms.
    kinds = {s.kinds[k] for k, f in zip(s.kind, s.func, strict=True) if s.functions[f].source == "mid"}
    assert kinds == {"cpu:50"}
    # With heavy requested, the rarest function runs the model-loading sample.
    h = S.from_workload(three_functions(), [0, 1, 2], include_heavy=True)
    assert {d.source: d.sample for d in h.functions}["slow"] == "heavy"
    assert sum(d.sample == "heavy" for d in h.functions) == 1


def test_functions_dir_is_a_stack_the_gateway_loads(tmp_path):
    s = S.from_workload(three_functions(), [0, 1, 2], include_heavy=True)
    out = S.write_functions_dir(s, tmp_path / "fns", REPO / "functions")
    specs = load_functions(out)
    assert set(specs) == set(s.names)
    for d in s.functions:
        assert specs[d.name].handler_dir == (REPO / "functions" / d.sample).resolve()
        assert specs[d.name].memory_bytes == round(d.memory_mb) * 2**20
    doc = yaml.safe_load((out / "stack.yml").read_text())
    assert all(f["handler"].startswith("./") for f in doc["functions"].values())


def test_requests_speak_the_sample_functions_language():
    assert S.request_for_kind("cpu:20") == ("n=20000", b"prewarmer")
    assert S.request_for_kind("io:200")[0] == "ms=200"
    assert json.loads(S.request_for_kind("heavy")[1]) == [0.5, -1.0, 0.25, 2.0]
    assert S.work_kind("io", 1e6) == "io:2000" and S.work_kind("cpu", 7.0) == "cpu:5"
    assert S.work_kind("echo", 123.0) == "echo"


def test_periodicity_tells_timers_from_the_rest():
    assert S.periodicity(np.ones(30)) == pytest.approx(1.0)
    every5 = np.zeros(30)
    every5[2::5] = 3
    assert S.periodicity(every5) == pytest.approx(1.0)
    poisson = np.random.default_rng(0).poisson(0.7, 30)
    assert S.periodicity(poisson) < S.PERIODIC_THRESHOLD
    late_start = np.r_[np.zeros(20), np.ones(10)]  # regular, but only from minute 20: not a timer here
    assert S.periodicity(late_start) == 0.0
    assert S.periodicity(np.r_[1, np.zeros(29)]) == 0.0


def test_selection_takes_a_periodic_function_and_respects_the_rate_bounds():
    rng = np.random.default_rng(1)
    counts = np.stack([
        rng.poisson(200, 30),  # 0: 100 req/s after 30x compression: never chosen
        rng.poisson(8, 30),  # 1: busy, 4 req/s
        np.full(30, 2),  # 2: timer, 1 req/s
        rng.poisson(6, 30),  # 3: 3 req/s
        rng.poisson(5, 30),  # 4: 2.5 req/s
        (np.arange(30) % 10 == 0).astype(np.int64),  # 5: rare, 0.05 req/s
    ]).astype(np.int64)
    sel = S.select_functions(counts, compress=30.0, n=3, max_total_rps=20.0, max_function_rps=5.0)
    assert sel.periodic == 2 and sel.indices[0] == 2
    assert 0 not in sel.indices and sel.indices == [2, 1, 3]
    assert sum(sel.rates_rps.values()) <= 20.0
    tight = S.select_functions(counts, compress=30.0, n=4, max_total_rps=6.0)
    assert sum(tight.rates_rps.values()) <= 6.0
    with_rare = S.select_functions(counts, compress=30.0, n=3, rare=True)
    assert 5 in with_rare.indices
    with pytest.raises(ValueError, match="no function fits"):
        S.select_functions(counts[:1], compress=30.0)


@pytest.mark.skipif(not TRACE_2019.is_dir(), reason=f"shared trace not found at {TRACE_2019}")
def test_trace_schedule_from_the_azure_2019_sample():
    s = S.from_trace(TRACE_2019, functions=4, minutes=(0, 30), compress=30.0, duration_s=20.0, include_heavy=True)
    assert 0 < len(s) and s.duration_s == 20.0
    assert s.meta["selection"]["periodic"] is not None
    assert len(s) / s.duration_s <= S.DEFAULT_MAX_TOTAL_RPS * 1.5
    assert sum(d.sample == "heavy" for d in s.functions) == 1
    with pytest.raises(TraceError):
        S.from_trace(TRACE_2019 / "missing")


@pytest.mark.skipif(not TRACE_2021.is_file(), reason=f"shared trace not found at {TRACE_2021}")
def test_trace_schedule_from_azure_2021_rows_replays_the_recorded_times():
    csv = TRACE_2021
    s = S.from_trace(csv, functions=3, minutes=(0, 2), compress=2.0, max_function_rps=50.0)
    w = load_azure2021(csv, functions=[d.source for d in s.functions], minutes=(0, 2))
    np.testing.assert_allclose(s.t, np.sort(w.t) / 2.0)
    assert s.meta["source"] == "azure2021"


def test_schedules_round_trip_through_json_and_npz(tmp_path):
    s = S.synthetic(duration_s=30.0, seed=3, heavy_every_s=10.0)
    for name in ("s.json", "s.npz"):
        back = S.Schedule.load(s.save(tmp_path / name))
        np.testing.assert_allclose(back.t, s.t, atol=1e-6)
        assert back.func.tolist() == s.func.tolist() and back.kinds == s.kinds and back.names == s.names
        assert back.duration_s == s.duration_s
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(TraceError, match="not a schedule"):
        S.Schedule.load(tmp_path / "bad.json")


def test_synthetic_pattern_has_a_timer_poisson_and_bursts():
    s = S.synthetic(duration_s=60.0, seed=0)
    t_echo = s.t[s.func == s.names.index("echo")]
    np.testing.assert_allclose(np.diff(t_echo), 5.0)
    t_io = s.t[s.func == s.names.index("io")]
    assert len(t_io) == 18 and np.diff(t_io).max() > 10.0  # three bursts of six
    assert np.all(np.diff(s.t) >= 0) and s.t.max() < 60.0


def test_function_specs_parse():
    assert parse_functions(None) == 4 and parse_functions("auto:7") == 7
    assert parse_functions("3:9") == slice(3, 9) and parse_functions("5") == slice(0, 5)
    assert parse_functions("abc,def") == ["abc", "def"]


# ---------------------------------------------------------------------------------------------------
# Open-loop timing and results


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_requests_go_out_on_schedule_whatever_the_replies_take():
    clock = FakeClock(100.0)
    sent: list[tuple[int, float, float]] = []
    # Each "request" would take 10 s; dispatch only records it, as spawning a greenlet does.
    n = run_schedule([0.0, 0.5, 0.5, 2.0], start=100.0, clock=clock, sleep=clock.sleep,
                     dispatch=lambda i, due: sent.append((i, due, clock())))
    assert n == 4
    assert [(i, due) for i, due, _ in sent] == [(0, 100.0), (1, 100.5), (2, 100.5), (3, 102.0)]
    assert all(at == pytest.approx(due) for _, due, at in sent)


def test_a_late_generator_sends_at_once_and_the_lag_counts_in_the_latency():
    clock = FakeClock(103.0)  # the generator wakes up 3 s after the start: everything is overdue
    rec = Recorder([0.0, 1.0], [0, 0], ["echo"], duration_s=2.0)

    def dispatch(i: int, due: float) -> None:
        rec.sent(i, due, clock())
        rec.done(i, due, clock() + 0.050, 200, 0)  # 50 ms of service once it went out

    run_schedule([0.0, 1.0], start=100.0, clock=clock, sleep=clock.sleep, dispatch=dispatch)
    assert rec.lag_ms.tolist() == pytest.approx([3000.0, 2000.0])
    assert rec.latency_ms.tolist() == pytest.approx([3050.0, 2050.0])  # not 50 ms: no coordinated omission
    assert latency_ms(1.0, 2.5) == 1500.0 and send_lag_ms(1.0, 1.25) == 250.0


def test_stopping_ends_the_walk():
    clock = FakeClock(0.0)
    count = run_schedule([0, 1, 2, 3], start=0.0, clock=clock, sleep=clock.sleep, dispatch=lambda i, d: None,
                         stopped=lambda: clock() >= 2.0)
    assert count == 2


def test_summary_has_exact_percentiles_and_per_function_figures():
    n = 100
    rec = Recorder(np.linspace(0, 9.9, n), [i % 2 for i in range(n)], ["a", "b"], duration_s=10.0)
    for i in range(n):
        rec.sent(i, rec.t[i], rec.t[i] + 0.001)
        status = 502 if i == 7 else 200
        rec.done(i, rec.t[i], rec.t[i] + (i + 1) / 1000.0, status, 1 if i < 4 else 0, "HTTP 502" if i == 7 else None)
    doc = rec.summary()
    ok_lat = np.array([i + 1.0 for i in range(n) if i != 7])
    assert doc["p50_latency_ms"] == pytest.approx(np.percentile(ok_lat, 50), abs=1e-3)
    assert doc["p99_latency_ms"] == pytest.approx(np.percentile(ok_lat, 99), abs=1e-3)
    assert doc["invocations"] == n and doc["errors"] == 1 and doc["cold_starts"] == 4
    assert doc["cold_start_rate"] == pytest.approx(0.04)
    assert doc["send_lag_p99_ms"] == pytest.approx(1.0, abs=1e-6)
    a, b = doc["per_function"]["a"], doc["per_function"]["b"]
    assert a["invocations"] == b["invocations"] == 50 and a["first_cold"] and b["first_cold"]
    assert a["cold_starts"] == 2 and b["errors"] == 1
    series = per_second(doc, duration_s=10.0)
    assert sum(series["requests"]) == n and sum(series["cold_starts"]) == 4
    json.dumps(doc, allow_nan=False)


def test_a_warm_up_is_recorded_but_left_out_of_every_metric():
    rec = Recorder([0.0, 1.0, 2.0, 3.0], [0, 0, 0, 0], ["a"], duration_s=4.0, metered_from_s=2.0)
    for i, cold in enumerate([1, 1, 1, 0]):
        rec.sent(i, rec.t[i], rec.t[i])
        rec.done(i, rec.t[i], rec.t[i] + 0.5 + i, 200 if i else 502, cold)
    doc = rec.summary()
    assert doc["invocations"] == 2 and doc["cold_starts"] == 1 and doc["errors"] == 0  # the 502 was a warm-up
    assert doc["p99_latency_ms"] == pytest.approx(np.percentile([2500.0, 3500.0], 99))
    assert doc["warmup_requests"] == 2 and doc["scheduled"] == 2
    assert doc["span_s"] == pytest.approx(6.5 - 2.0)  # the metered window: from 2 s to the last reply
    assert doc["per_function"]["a"]["cold_starts"] == 1 and doc["per_function"]["a"]["first_cold"]
    assert len(doc["requests"]["t"]) == 4  # every request kept (replay needs the history)


def test_a_warm_up_plays_the_trace_minutes_before_the_window_with_the_same_functions(capsys):
    metered = S.from_trace(TRACE_2019, functions=4, minutes=(40, 70), compress=30.0, duration_s=20.0)
    full = build_schedule(parse(["--trace", str(TRACE_2019), "--minutes", "40:70", "--warmup", "30m",
                                 "--duration", "20"]))
    assert {d.name: d.sample for d in full.functions} == {d.name: d.sample for d in metered.functions}
    assert full.meta["warmup_s"] == 60.0 and full.meta["start_minute"] == 10 and full.meta["minutes"] == [40, 70]
    assert full.duration_s == 80.0
    # after the warm-up: the metered window's requests (the trace's counts per minute; the times within a minute
    # are drawn), and before it those of the 30 minutes before
    names = [d.name for d in full.functions]
    after = full.t >= 60.0

    def per_minute(t, func, fnames):
        return sorted(zip((t // 2).astype(int).tolist(), [fnames[f] for f in func], strict=True))
    assert per_minute(full.t[after] - 60.0, full.func[after], names) == per_minute(metered.t, metered.func,
                                                                                   metered.names)
    assert (~after).sum() > 0
    for bad, why in ((["--minutes", "10:40", "--warmup", "30m"], "only 10 minute"),
                     (["--minutes", "40:70", "--warmup", "90s"], "whole number"),
                     (["--workload", "azure-like", "--warmup", "30m"], "needs --trace")):
        argv = bad if "--workload" in bad else ["--trace", str(TRACE_2019), *bad]
        assert cmd_loadtest(parse(argv)) == 2
        assert why in capsys.readouterr().err


def test_functions_by_a_prefix_of_their_trace_name(capsys):
    w = build_schedule(parse(["--trace", str(TRACE_2019), "--functions", "edfecd92,ccb32589", "--duration", "5"]))
    assert sorted(d.source[:8] for d in w.functions) == ["ccb32589", "edfecd92"]
    assert cmd_loadtest(parse(["--trace", str(TRACE_2019), "--functions", "edfec", "--simulate-only"])) == 2
    assert "6+ characters" in capsys.readouterr().err


def test_simulate_only_predicts_without_a_run_and_counts_the_metered_window_only(tmp_path):
    out = tmp_path / "sim.json"
    argv = ["--trace", str(TRACE_2019), "--minutes", "40:70", "--duration", "20", "--compare", "fixed:1m",
            "--simulate-only", "--quiet", "--json", str(out)]
    assert cmd_loadtest(parse(argv)) == 0
    cold = json.loads(out.read_text())["simulated"]
    assert cold["baseline"]["policy"] == "fixed:600s" and cold["prewarmer"]["policy"] == "fixed:1m"
    assert cold["prewarmer"]["predicted_cold_starts"] >= cold["baseline"]["predicted_cold_starts"] > 0
    # with a warm-up, the functions are warm when metering starts: fewer cold starts in the same window
    assert cmd_loadtest(parse([*argv, "--warmup", "30m"])) == 0
    warm = json.loads(out.read_text())["simulated"]
    assert warm["baseline"]["warmup_s"] == 60.0
    assert warm["baseline"]["predicted_cold_starts"] < cold["baseline"]["predicted_cold_starts"]


def test_simulate_only_takes_the_start_up_to_assume(tmp_path, capsys):
    """`--startup`: the start-up replay gives every function when nothing was measured (0.3 s without it). A
    start-up as long as most of a trace minute's requests at this compression turns warm requests into waits."""
    out = tmp_path / "sim.json"
    argv = ["--trace", str(TRACE_2019), "--minutes", "40:70", "--duration", "20", "--compare", "fixed:1m",
            "--simulate-only", "--quiet", "--json", str(out)]
    found = {}
    for startup in (None, "0.04s", "0.6s"):
        assert cmd_loadtest(parse(argv + ([] if startup is None else ["--startup", startup]))) == 0
        doc = json.loads(out.read_text())
        assert {f["startup_s"] for f in doc["simulated"]["baseline"]["per_function"].values()} == {
            {None: 0.3, "0.04s": 0.04, "0.6s": 0.6}[startup]}
        assert doc["config"]["startup_s"] == {None: 0.3, "0.04s": 0.04, "0.6s": 0.6}[startup]
        found[startup] = doc["simulated"]["baseline"]["predicted_cold_starts"]
    assert found["0.04s"] <= found[None] <= found["0.6s"] and found["0.04s"] < found["0.6s"]
    for bad, why in ((["--startup", "soon"], "expected a duration"), (["--startup", "0s"], "must be positive")):
        assert cmd_loadtest(parse(argv + bad)) == 2
        assert why in capsys.readouterr().err
    live = [a for a in argv if a != "--simulate-only"]
    assert cmd_loadtest(parse(live + ["--startup", "1s"])) == 2
    assert "for --simulate-only" in capsys.readouterr().err


def test_unanswered_requests_are_errors_and_headers_parse():
    rec = Recorder([0.0, 1.0, 2.0], [0, 0, 0], ["a"], duration_s=3.0)
    rec.sent(0, 0.0, 0.0)
    rec.done(0, 0.0, 0.1, 200, parse_cold("1"))
    rec.sent(1, 1.0, 1.0)  # never answered (test stopped)
    doc = rec.summary()
    assert doc["sent"] == 2 and doc["invocations"] == 1 and doc["errors"] == 1
    assert [parse_cold(v) for v in ("1", "0", "true", None, "?")] == [1, 0, 1, -1, -1]


def test_gateway_metrics_parse_from_the_gateways_own_registry():
    m = GatewayMetrics()
    for fn in ("a.openfaas-fn", "b.openfaas-fn"):
        m.register_function(fn)
    m.add_gb_seconds("a.openfaas-fn", "idle", 1.5)
    m.add_gb_seconds("b.openfaas-fn", "idle", 0.25)
    m.add_gb_seconds("b.openfaas-fn", "busy", 2.0)
    m.observe_invocation("a.openfaas-fn", 200, 0.1, cold=True)
    m.set_workers("a.openfaas-fn", {"idle": 2, "busy": 1, "starting": 1})
    out = parse_gateway_metrics(m.render().decode())
    assert out["idle_gb_s"] == pytest.approx(1.75) and out["busy_gb_s"] == pytest.approx(2.0)
    assert out["cold_starts"] == 1 and out["workers"] == {"idle": 2, "busy": 1, "starting": 1}
    assert out["functions"]["a"]["warm"] == 3 and out["functions"]["b"]["idle_gb_s"] == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------------
# Command line


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert cmd_loadtest(parse(["--trace", str(tmp_path / "nope")])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prewarmer loadtest: error:") and "nope" in err and "\n" not in err
    assert cmd_loadtest(parse(["--functions", "3", "--duration", "5"])) == 2
    assert "--trace" in capsys.readouterr().err
    assert cmd_loadtest(parse(["--compare", "no-such-policy"])) == 2
    assert "no-such-policy" in capsys.readouterr().err


def test_end_to_end_baseline_versus_prewarmer(tmp_path, capsys):
    # A few seconds of schedule: two echo, three cpu, a burst of two io.
    sched = S.Schedule(t=[0.2, 0.4, 0.6, 1.2, 1.25, 2.0, 2.5, 3.0], func=[0, 1, 2, 2, 1, 0, 1, 1],
                       kind=[0, 1, 2, 2, 1, 0, 1, 1],
                       functions=[S.Deployment("echo", "echo", 128), S.Deployment("cpu", "cpu", 128),
                                  S.Deployment("io", "io", 128)],
                       kinds=["echo", "cpu:5", "io:100"], duration_s=3.5, meta={"source": "test", "compress": 1.0})
    path = sched.save(tmp_path / "schedule.json")
    out = tmp_path / "report.json"
    args = parse(["--schedule", str(path), "--compare", "hybrid", "--json", str(out), "--plot",
                  str(tmp_path / "report.png"), "--workdir", str(tmp_path / "work")])
    assert cmd_loadtest(args) == 0, capsys.readouterr().err

    doc = json.loads(out.read_text())
    assert {"schedule", "baseline", "prewarmer", "ratios"} <= set(doc)
    assert doc["schedule"]["requests"] == len(sched)
    for label in ("baseline", "prewarmer"):
        m = doc[label]
        assert set(METRIC_NAMES) <= set(m)
        assert m["invocations"] == len(sched) and m["errors"] == 0
        assert 0.0 <= m["cold_start_rate"] <= 1.0
        assert m["p50_latency_ms"] > 0 and m["p99_latency_ms"] >= m["p50_latency_ms"]
        assert m["throughput_rps"] > 0 and m["wasted_gb_s"] >= 0
        assert m["send_lag_p99_ms"] is not None
    base = doc["per_function"]["baseline"]
    assert all(base[name]["first_cold"] for name in ("echo", "cpu", "io"))  # nothing warm at the start
    assert doc["baseline"]["cold_starts"] >= 3
    assert set(doc["ratios"]) >= set(METRIC_NAMES)
    assert (tmp_path / "report.png").stat().st_size > 0
    assert marked_pids(doc["config"]["run_id"]) == []  # no process left behind


def test_sigterm_mid_run_stops_every_process(tmp_path):
    code = ("import argparse, sys\n"
            "from prewarmer.load.cli import add_loadtest_parser, cmd_loadtest\n"
            "p = argparse.ArgumentParser(); add_loadtest_parser(p.add_subparsers(dest='command'))\n"
            "sys.exit(cmd_loadtest(p.parse_args(['loadtest'] + sys.argv[1:])))\n")
    workdir = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-c", code, "--duration", "60", "--quiet", "--workdir", str(workdir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prefix = f"{proc.pid}-"
    try:
        deadline = time.monotonic() + 60
        # Wait until the run is under way: Locust is replaying (its log exists) next to Redis and the gateway.
        while not ((workdir / "baseline" / "locust.log").exists() and len(marked_pids(prefix)) >= 3):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        assert any(f"{MARKER_ENV}={prefix}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
                   for pid in marked_pids(prefix))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err.decode()
        assert "interrupted" in err.decode()
        assert marked_pids(prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in marked_pids(prefix):
            os.kill(pid, signal.SIGKILL)


def test_an_external_redis_is_used_and_left_clean(redis_server, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = parse(["--duration", "3", "--redis", redis_server.url, "--quiet", "--json", str(out)])
    assert cmd_loadtest(args) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["baseline"]["invocations"] == doc["schedule"]["requests"] > 0
    assert doc["config"]["redis"] == "external"
    assert list(redis.Redis.from_url(redis_server.url).scan_iter(match="loadtest:*")) == []
    assert marked_pids(doc["config"]["run_id"]) == []


def test_the_bar_cells_script_tabulates_replays_prediction_per_cell(tmp_path, capsys):
    """`scripts/bar_cells.py`: issue 13's cells through `--simulate-only`, ratios against the gateway alone, bold
    where a cell meets the bar; reports kept and reused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bar_cells", REPO / "scripts" / "bar_cells.py")
    bar_cells = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bar_cells)
    assert len(bar_cells.cells()) == 14
    argv = ["--trace", str(TRACE_2019), "--out", str(tmp_path), "--only", "default", "--jobs", "1", "always-warm"]
    assert bar_cells.main(argv) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| default")]
    assert [x.split(" | ")[1] for x in lines] == ["120 s", "120 s, warm-up 30m"]
    reports = sorted(tmp_path.glob("*.json"))
    assert len(reports) == 2
    for line in lines:
        report = next(r for r in reports if ("warm_up" in r.name) == ("warm-up" in line))
        sim = json.loads(report.read_text())["simulated"]
        gateway, policy = sim["baseline"]["predicted_cold_starts"], sim["prewarmer"]["predicted_cold_starts"]
        assert f"| {gateway} | " in line and f"{policy} (×{policy / gateway:.2f})" in line
        assert line.endswith("** |") == (policy <= 0.5 * gateway)  # bold: the cell meets the bar
    mtimes = [r.stat().st_mtime_ns for r in reports]
    assert bar_cells.main(argv) == 0  # the reports are reused, not replayed again
    assert [r.stat().st_mtime_ns for r in reports] == mtimes
