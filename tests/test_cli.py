"""End-to-end tests of `prewarmer replay`: report contents, the plot, and one-line errors on bad input."""

from __future__ import annotations

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
