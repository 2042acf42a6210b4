"""End-to-end tests of `prewarmer replay`: report contents, the plot, and one-line errors on bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prewarmer.cli import main
from prewarmer.report import METRICS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
HEADER = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in range(1, 1441))


def _row(name: str, counts: str = "1") -> str:
    return f"o,a,{name},http," + ",".join([counts] * 1440)


def _trace_dir(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    d = tmp_path / "trace"
    d.mkdir()
    (d / "invocations_per_function_md.anon.d01.csv").write_text("\n".join([header, *rows]) + "\n")
    return d


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prewarmer.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_replay_writes_report_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(["replay", "--workload", "azure-like", "--functions", "20", "--duration", "2h", "--seed", "3",
                 "--policy", "hybrid", "--policy", "kpa", "--policy", "always-warm", "--policy", "fixed:20m",
                 "--workers", "1", "--quiet", "--json", str(out), "--plot", str(png)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["workload"]["model"] == "azure-like"
    assert doc["workload"]["replay_model"]["seed"] == 3
    # fixed (10 min) is always run as the reference, first.
    assert list(doc["policies"]) == ["fixed", "hybrid", "kpa", "always-warm", "fixed:20m"]
    for spec, metrics in doc["policies"].items():
        for name in (*METRICS, "cold_start_ratio", "waste_ratio"):
            assert name in metrics, (spec, name)
    ref = doc["policies"]["fixed"]
    assert ref["cold_start_ratio"] == 1.0 and ref["waste_ratio"] == 1.0
    invocations = {m["invocations"] for m in doc["policies"].values()}
    assert len(invocations) == 1 and invocations.pop() > 0  # same arrivals for every policy
    # Keeping instances longer cannot waste less: a longer keep-alive and never releasing.
    assert doc["policies"]["fixed:20m"]["waste_ratio"] >= 1.0
    assert doc["policies"]["always-warm"]["waste_ratio"] > doc["policies"]["fixed:20m"]["waste_ratio"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_replay_poisson_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["replay", "--workload", "poisson", "--function", "name=api,rate=2,service=100ms,cold=2s",
                 "--duration", "10m", "--startup", "per-function", "--policy", "fixed:1m", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    for name in ("cold_start_rate", "p75_function_cold_start_pct", "wasted_gb_s", "cold_start_ratio",
                 "waste_ratio", "fixed:1m"):
        assert name in out


@pytest.mark.parametrize(
    ("rows", "header", "expect"),
    [
        ([_row("f1")], HEADER.replace("HashFunction,", ""), "HashFunction"),
        ([_row("f1"), _row("f2").replace(",1,1,1,", ",1,x,1,", 1)], HEADER, ":3: column '2'"),
        ([_row("f1"), "o,a,f2,http,1,2,3"], HEADER, ":3"),
        ([], "", "empty"),
    ],
    ids=["missing-column", "non-numeric-count", "truncated-row", "empty-file"],
)
def test_malformed_trace_is_one_line_exit_2(tmp_path: Path, rows: list[str], header: str, expect: str) -> None:
    d = _trace_dir(tmp_path, rows, header) if header else tmp_path / "trace"
    if not header:
        d.mkdir()
        (d / "invocations_per_function_md.anon.d01.csv").write_text("")
    proc = _run("replay", "--trace", str(d), "--policy", "fixed", "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "invocations_per_function_md.anon.d01.csv" in lines[0]
    assert expect in lines[0]


def test_missing_directory_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = _run("replay", "--trace", str(tmp_path / "nope"), "--quiet")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["--policy", "sometimes"], ["--policy", "fixed:abc"],
                                  ["--startup", "weird"], ["--functions", "x"],
                                  ["--workload", "poisson", "--function", "name=a,rate=-1,service=1"]])
def test_bad_options_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["replay", "--duration", "10m", "--quiet", *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prewarmer: error:")


@pytest.mark.skipif(not (SHARED / "azure2019-d01-sample1000").exists(),
                    reason="../shared/traces/azure2019-d01-sample1000 is not present beside the checkout")
def test_replay_shared_trace_slice(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code = main(["replay", "--trace", str(SHARED / "azure2019-d01-sample1000"), "--functions", "0:40",
                 "--minutes", "600:720", "--policy", "hybrid", "--workers", "2", "--quiet", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["workload"]["functions"] == 40 and doc["workload"]["minutes"] == 120
    assert doc["policies"]["hybrid"]["invocations"] == doc["workload"]["invocations"]


def test_replay_series_counts_each_minute_and_sums_to_the_report(tmp_path: Path) -> None:
    """`--series`: a row per policy and minute with the minute's arrivals (those of the trace's minute column),
    cold starts and timeouts, and a last row for the tail, so that every column sums to the report's total; the
    same whether the fleet is replayed in one process or split across two."""
    minutes = 60
    burst = ["0"] * 1440
    for m in range(3, minutes, 10):
        burst[m] = "100"
    steady = [str(1 + m % 3) for m in range(1440)]
    trace = _trace_dir(tmp_path, [f"o1,a1,burst,http,{','.join(burst)}", f"o2,a2,steady,http,{','.join(steady)}"])
    pct = ",".join(f"percentile_Average_{p}" for p in (0, 1, 25, 50, 75, 99, 100))
    (trace / "function_durations_percentiles.anon.d01.csv").write_text(
        f"HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,{pct}\n"
        "o1,a1,burst,45000,1,30000,60000,30000,30000,40000,45000,50000,60000,60000\n"
        "o2,a2,steady,300,1,100,500,100,100,200,300,400,500,500\n")
    (trace / "app_memory_percentiles.anon.d01.csv").write_text(
        "HashOwner,HashApp,SampleCount,AverageAllocatedMb\no1,a1,1,256\no2,a2,1,128\n")
    docs = {}
    for workers in ("1", "2"):
        out, series = tmp_path / f"r{workers}.json", tmp_path / f"s{workers}.csv"
        code = main(["replay", "--trace", str(trace), "--minutes", f"0:{minutes}", "--memory-cap", "3",
                     "--deadline", "5s", "--policy", "hybrid", "--policy", "marl", "--workers", workers, "--quiet",
                     "--json", str(out), "--series", str(series)])
        assert code == 0
        rows = list(csv.DictReader(series.open()))
        docs[workers] = rows
        totals = json.loads(out.read_text())["policies"]
        assert {r["policy"] for r in rows} == {"fixed", "hybrid", "marl"}
        for spec, m in totals.items():
            mine = [r for r in rows if r["policy"] == spec]
            assert [float(r["t_s"]) for r in mine[:-1]] == [60.0 * (k + 1) for k in range(minutes)]
            assert float(mine[-1]["t_s"]) >= 60.0 * minutes and mine[-1]["instances_alive"] == ""
            arrivals = [int(r["arrivals"]) for r in mine]
            assert arrivals[:-1] == [int(burst[k]) + int(steady[k]) for k in range(minutes)] and arrivals[-1] == 0
            for column, total in (("arrivals", "invocations"), ("cold_starts", "cold_starts"),
                                  ("timed_out", "timed_out")):
                assert sum(int(r[column]) for r in mine) == m[total], (spec, column)
        assert totals["fixed"]["timed_out"] > 0  # the cap binds: the timeouts column is exercised
    # Counts and instances agree; the peak memory of two workers is the sum of their peaks (an upper bound).
    for one, two in zip(docs["1"], docs["2"], strict=True):
        assert {k: v for k, v in one.items() if k != "peak_memory_gb"} == \
            {k: v for k, v in two.items() if k != "peak_memory_gb"}
        assert float(two["peak_memory_gb"]) >= float(one["peak_memory_gb"]) - 1e-9
