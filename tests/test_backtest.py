"""`prewarmer backtest` against a real Prometheus (the Debian `prometheus` binary, free port, own storage,
1 s scrapes) scraping a real local gateway whose functions are real processes; plus the counter
arithmetic on hand-made samples. Waiting is always a poll of a condition with a deadline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from redisproc import free_port, stop_process

from prewarmer.backtest import counters, presets
from prewarmer.backtest.report import rank
from prewarmer.backtest.source import BacktestInputError, make_window
from prewarmer.cli import main
from prewarmer.load import schedule as sched_mod
from prewarmer.workloads.base import DURATION_QUANTILES

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
SCRAPE_S = 1.0
POLICIES = ("fixed", "hybrid", "kpa", "always-warm", "marl")


def wait_for(check: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http(url: str, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Gateway:
    """`python -m prewarmer.gateway` on a fixed loopback port (so that a restart keeps the scrape target)."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "PREWARMER_GATEWAY_PORT": str(self.port), "PREWARMER_FUNCTIONS_DIR": str(FUNCTIONS),
               "PREWARMER_GATEWAY_SECRET_MOUNT_PATH": str(self.workdir / "no-secrets")}
        log = open(self.workdir / f"gateway-{self.starts}.log", "wb")  # noqa: SIM115 (the child writes to it)
        self.proc = subprocess.Popen([sys.executable, "-m", "prewarmer.gateway", "--host", "127.0.0.1",
                                      "--keep-alive", "1m"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir)
        log.close()

        def healthy() -> bool:
            assert self.proc.poll() is None, (self.workdir / f"gateway-{self.starts}.log").read_text()
            return http(f"{self.url}/healthz")[0] == 200

        wait_for(healthy, "the gateway to answer /healthz")

    def call(self, fn: str, query: str = "") -> int:
        return http(f"{self.url}/function/{fn}" + (f"?{query}" if query else ""), data=b"backtest")[0]

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=20)
        self.proc = None


class Prometheus:
    """The real `prometheus` server scraping one target every second, with its own storage."""

    def __init__(self, workdir: Path, target: str) -> None:
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is not on PATH (scripts/ensure-test-tools installs it)")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {SCRAPE_S:g}s\n  scrape_timeout: {SCRAPE_S:g}s\n"
            f"scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{target}']\n")
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, cwd=workdir)

        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            return http(f"{self.url}/-/ready")[0] == 200

        wait_for(ready, "prometheus to be ready")

    def query(self, expr: str) -> list[dict]:
        status, body = http(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def scraped_after(self, t: float, up: bool = True) -> bool:
        """Whether a scrape of the gateway that started after Unix time `t` is stored (and found it up)."""
        rows = self.query('timestamp(up{job="gateway"})')
        if not rows or float(rows[0]["value"][1]) <= t:
            return False
        return not up or self.query('up{job="gateway"}')[0]["value"][1] == "1"

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=20)


@pytest.fixture
def stack(tmp_path) -> Iterator[tuple[Gateway, Prometheus]]:
    gateway = Gateway(tmp_path, free_port())
    gateway.start()
    prom = Prometheus(tmp_path, f"127.0.0.1:{gateway.port}")
    try:
        wait_for(lambda: prom.scraped_after(0.0), "prometheus to scrape the gateway")
        yield gateway, prom
    finally:
        prom.stop()
        gateway.stop()


def run_backtest(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["backtest", "--quiet", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def check_ranking(doc: dict) -> None:
    ranking = doc["ranking"]
    assert [r["rank"] for r in ranking] == list(range(1, len(POLICIES) + 1))
    assert sorted(r["policy"] for r in ranking) == sorted(POLICIES)
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores)
    for r in ranking:
        m = doc["policies"][r["policy"]]
        assert r["score"] == pytest.approx(m["cold_start_ratio"] + m["waste_ratio"])
    assert next(r for r in ranking if r["policy"] == "fixed")["score"] == pytest.approx(2.0)
    assert any(r["pareto"] for r in ranking)


# ---------------------------------------------------------------------------------------------------
# Against a real Prometheus


def test_counts_match_the_requests_sent_across_a_gateway_restart(stack, tmp_path, capsys):
    gateway, prom = stack
    start = time.time()
    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda fn: gateway.call(fn), ["echo"] * 30 + ["cpu"] * 12))
    assert first == [200] * 42
    sent = time.time()
    wait_for(lambda: prom.scraped_after(sent), "a scrape after the first batch")
    # A restart resets the gateway's counters (30 -> 5 for echo) and creates io's series later on.
    gateway.stop()
    wait_for(lambda: not prom.query('up{job="gateway"} == 1'), "prometheus to see the gateway down")
    gateway.start()
    second = [gateway.call(fn) for fn in ["echo"] * 5 + ["io"] * 3]
    assert second == [200] * 8
    sent = time.time()
    wait_for(lambda: prom.scraped_after(sent), "a scrape after the second batch")

    out_json = tmp_path / "bt.json"
    start -= 65  # two minutes at least, so that forecasters are scored on the second
    rc, out, err = run_backtest(["--prometheus", prom.url, "--start", f"{start:.3f}", "--end", f"{time.time():.3f}",
                                 "--step", "1s", "--default-memory", "128", "--json", str(out_json)], capsys)
    assert rc == 0, err
    doc = json.loads(out_json.read_text())
    counts = {name: f["invocations"] for name, f in doc["functions"].items()}
    assert counts == {"echo.openfaas-fn": 35, "cpu.openfaas-fn": 12, "io.openfaas-fn": 3}
    assert doc["source"]["counter_resets"] >= 1
    assert doc["source"]["series_created_in_range"] == 3  # echo, cpu, io: none existed before the range
    assert doc["policies"]["fixed"]["invocations"] == 50  # the replay ran on exactly these invocations
    check_ranking(doc)
    # Durations came from the gateway's latency histogram, memory from the default (no kube-state-metrics).
    echo = doc["functions"]["echo.openfaas-fn"]
    assert echo["duration_source"].startswith("histogram") and echo["memory_source"] == "default 128 MB"
    assert 0 < echo["duration_pct_ms"][3] < 1000
    assert "Policies ranked by" in out and "Forecast quality per function" in out
    assert set(doc["forecast"]["per_function"]) == set(counts)
    ranked = [line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│") and
              line.split("│")[1].strip().isdigit()][:len(POLICIES)]
    assert ranked == [r["policy"] for r in doc["ranking"]]

    # A user's PromQL: only echo's counters (its reset included), named by the same label.
    rc, out, err = run_backtest(["--prometheus", prom.url, "--start", f"{start:.3f}", "--end", f"{time.time():.3f}",
                                 "--step", "1s", "--policy", "fixed", "--json", str(out_json),
                                 "--query", 'gateway_function_invocation_total{function_name="echo.openfaas-fn"}'],
                                capsys)
    assert rc == 0, err
    doc = json.loads(out_json.read_text())
    assert {n: f["invocations"] for n, f in doc["functions"].items()} == {"echo.openfaas-fn": 35}


def test_a_locust_load_test_is_counted_per_function_and_per_minute(stack, tmp_path, capsys):
    """The bar: Locust drives the gateway (the project's open-loop harness, a 20 s synthetic schedule);
    the backtest counts exactly what Locust got answers for, each request in its minute up to one scrape
    interval late, and ranks the policies."""
    gateway, prom = stack
    schedule = sched_mod.synthetic(duration_s=20.0, seed=3)
    schedule_path = schedule.save(tmp_path / "schedule.json")
    results_path = tmp_path / "results.json"
    (tmp_path / "locust").mkdir()
    locust = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "load" / "locustfile.py"), "--headless", "-u", "1", "-r", "1",
         "-t", "120s", "--host", gateway.url, "--schedule", str(schedule_path), "--results", str(results_path),
         "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"],
        cwd=tmp_path / "locust", capture_output=True, text=True, timeout=180)
    assert results_path.is_file(), locust.stderr[-3000:]
    results = json.loads(results_path.read_text())
    assert results["errors"] == 0 and results["invocations"] == len(schedule)
    done = time.time()
    wait_for(lambda: prom.scraped_after(done), "a scrape after the load test")

    # The range starts 50 s before the load, so a minute boundary falls 10 s into it (during a burst of io).
    t0 = results["started_unix"]
    out_json = tmp_path / "bt.json"
    rc, out, err = run_backtest(["--prometheus", prom.url, "--start", f"{t0 - 50:.3f}", "--end", f"{done:.3f}",
                                 "--step", "1s", "--json", str(out_json), "--plot", str(tmp_path / "bt.png")], capsys)
    assert rc == 0, err
    doc = json.loads(out_json.read_text())
    sent = {f"{name}.openfaas-fn": f["invocations"] for name, f in results["per_function"].items()}
    assert {n: f["invocations"] for n, f in doc["functions"].items()} == sent
    check_ranking(doc)
    assert (tmp_path / "bt.png").stat().st_size > 10_000

    # Per minute: by each minute boundary B the backtest has counted every request answered more than one
    # scrape interval before B, and none sent after B.
    req = results["requests"]
    names = req["names"]
    sent_at = t0 + np.asarray(req["t"]) + np.asarray(req["lag_ms"], float) / 1000.0
    answered_at = t0 + np.asarray(req["t"]) + np.asarray(req["latency_ms"], float) / 1000.0
    func = np.asarray(req["function"])
    start = doc["source"]["start_unix"]
    slack = 0.25  # Prometheus stamps a sample with the start of its scrape
    boundaries = 0
    for j, name in enumerate(names):
        per_minute = np.asarray(doc["functions"][f"{name}.openfaas-fn"]["per_minute"])
        for m in range(1, len(per_minute)):
            b = start + 60.0 * m
            counted = int(per_minute[:m].sum())
            lo = int(np.sum((func == j) & (answered_at <= b - SCRAPE_S - slack)))
            hi = int(np.sum((func == j) & (sent_at <= b + slack)))
            assert lo <= counted <= hi, (name, m, lo, counted, hi)
            boundaries += 0 < lo and hi < int(np.sum(func == j))  # a boundary with requests on both sides
    assert boundaries >= 1


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, the right exit code


def test_unreachable_prometheus_is_one_line_and_exit_1(capsys):
    rc, out, err = run_backtest(["--prometheus", f"http://127.0.0.1:{free_port()}"], capsys)
    assert rc == 1
    assert err.count("\n") == 1 and "cannot reach Prometheus at http://127.0.0.1:" in err and "refused" in err


def test_bad_promql_empty_results_and_bad_ranges_against_a_real_prometheus(stack, capsys):
    gateway, prom = stack
    rc, _, err = run_backtest(["--prometheus", prom.url, "--query", "rate(gateway_function_invocation_total["], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "Prometheus rejected the query 'rate(gateway_function_invocation_total[': bad_data:" in err
    assert "parse error" in err  # Prometheus' own message
    rc, _, err = run_backtest(["--prometheus", prom.url, "--query", "no_such_metric_total"], capsys)
    assert rc == 2 and "has no series for 'no_such_metric_total'" in err
    # The gateway's counters exist only once a function was called: nothing invoked yet.
    rc, _, err = run_backtest(["--prometheus", prom.url, "--range", "5m"], capsys)
    assert rc == 2 and "has no series for 'gateway_function_invocation_total'" in err
    assert gateway.call("echo") == 200
    rc, _, err = run_backtest(["--prometheus", prom.url, "--query", "up"], capsys)
    assert rc == 2 and "have no label function_name" in err and "--function-label" in err
    rc, _, err = run_backtest(["--prometheus", prom.url, "--start", "now-1h", "--end", "now-2h"], capsys)
    assert rc == 2 and "bad range: the end" in err
    rc, _, err = run_backtest(["--prometheus", gateway.url], capsys)  # not a Prometheus
    assert rc == 1 and "did not answer as a Prometheus HTTP API (HTTP 404" in err


# ---------------------------------------------------------------------------------------------------
# Counter arithmetic on hand-made samples


def test_increments_follow_resets_gaps_and_series_created_in_the_range():
    nan = np.nan
    values = np.array([
        [5, 7, 7, 10, 2, 4, nan, nan, 6, 9],  # existed before the range: baseline 5; reset 10 -> 2; gap
        [nan, nan, 3, 3, 8, nan, nan, nan, nan, nan],  # created at point 2 (counted from 0), then gone
        [nan, 4, 6, 6, 6, 6, 6, 6, 6, 6],  # present from the first data point: its 4 came before
    ])
    inc, resets, born = counters.increments(values, first_data=1)
    np.testing.assert_array_equal(inc[0], [0, 2, 0, 3, 2, 2, 0, 0, 2, 3])
    np.testing.assert_array_equal(inc[1], [0, 0, 3, 0, 5, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(inc[2], [0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
    assert resets.tolist() == [1, 0, 0] and born.tolist() == [False, True, False]
    # Without data before the range (first_data 0) the third series is new too.
    assert counters.increments(values, first_data=0)[2].tolist() == [False, True, True]


def test_increments_land_in_the_minute_they_were_scraped():
    step = 15.0
    grid = np.arange(2 * 4 + 1) * step  # two minutes on a 15 s grid
    values = np.array([[0, 0, 0, 0, 1, 1, 3, 3, 3]], float)  # +1 seen at 60 s (minute 0), +2 at 90 s
    inc, _, _ = counters.increments(values)
    assert counters.per_minute(inc, step, 2).tolist() == [[1, 2]]
    assert len(grid) == values.shape[1]
    names, rows = counters.group_rows(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), ["a", "b", "a"])
    assert names == ["a", "b"] and rows.tolist() == [[6, 8], [3, 4]]
    # Fractional totals (a custom expression) keep their running total in whole invocations.
    assert counters.integer_counts(np.array([[0.4, 0.4, 0.4, 1.8]])).tolist() == [[0, 1, 0, 2]]


def test_histogram_percentiles_interpolate_inside_buckets():
    bounds = np.array([0.01, 0.1, 1.0, np.inf])
    pct = counters.histogram_percentiles_ms(bounds, np.array([0, 50, 100, 100]), unit_s=1.0)
    assert pct.shape == (len(DURATION_QUANTILES),)
    assert pct[3] == pytest.approx(100.0)  # the median is the top of the (10 ms, 100 ms] bucket
    assert pct[2] == pytest.approx(10 + 90 * 0.5)  # 25th: halfway through it
    assert pct[6] == pytest.approx(1000.0)
    assert np.all(np.diff(pct) >= 0)
    # Everything above the last finite bound is capped there; Knative's are in milliseconds.
    assert counters.histogram_percentiles_ms(np.array([5.0, np.inf]), np.array([0, 4]), 0.001)[6] == 5.0
    assert counters.histogram_percentiles_ms(bounds, np.zeros(4), 1.0) is None


def test_presets_name_functions_by_their_labels():
    kn = presets.choose("knative")
    assert kn.function_name({"service_name": "hello", "namespace_name": "default", "pod_name": "x"}) == "hello.default"
    assert kn.histogram_unit_s == 0.001
    of = presets.choose("openfaas", query='gateway_function_invocation_total{code="200"}', histogram="none")
    assert of.counter.endswith('{code="200"}') and of.histogram is None
    assert of.function_name({"function_name": "echo.openfaas-fn"}) == "echo.openfaas-fn"
    assert of.function_name({"job": "x"}) is None
    with pytest.raises(ValueError, match="unknown --metrics"):
        presets.choose("lambda")


def test_ranges_and_steps_are_checked():
    now = 1_800_000_000.0
    w = make_window("now-90s", None, None, "15s", now=now)
    assert (w.start, w.minutes, w.n_points) == (now - 90, 2, 9)
    assert make_window(None, "2027-01-15T08:00:00Z", "1h", "1m", now=now).minutes == 60
    for args, message in [(("now-1h", "now-2h", None, "15s"), "not after the start"),
                          (("now+1h", None, None, "15s"), "not a time"),
                          ((None, None, "-5m", "15s"), "--range"),
                          ((None, None, "1h", "7s"), "--step must divide a minute"),
                          (("now-1h", None, "1h", "15s"), "not both"),
                          ((None, None, "90d", "15s"), "60 days"),
                          ((None, None, "5d", "1s"), "use a longer --step")]:
        with pytest.raises(BacktestInputError, match=message):
            make_window(*args, now=now)


def test_ranking_orders_by_score_and_marks_the_pareto_front():
    def m(cold_rate, waste, ratio_c, ratio_w):
        return {"cold_starts": int(cold_rate * 100), "cold_start_rate": cold_rate, "wasted_gb_s": waste,
                "p99_latency_ms": 10.0, "cold_start_ratio": ratio_c, "waste_ratio": ratio_w}

    metrics = {"fixed": m(0.1, 100, 1.0, 1.0), "a": m(0.05, 80, 0.5, 0.8), "b": m(0.0, 500, 0.0, 5.0),
               "c": m(0.1, 120, 1.0, 1.2)}
    ranking = rank(metrics)
    assert [r["policy"] for r in ranking] == ["a", "fixed", "c", "b"]
    assert {r["policy"]: r["pareto"] for r in ranking} == {"a": True, "fixed": False, "c": False, "b": True}
    assert [r["policy"] for r in rank(metrics, "wasted_gb_s")] == ["a", "fixed", "c", "b"]
    assert rank(metrics, "cold_start_rate")[0]["policy"] == "b"

