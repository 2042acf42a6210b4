"""Trace loaders: Azure 2019 / 2021 parsing, selections, fallbacks, error locations, real shared data."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from prewarmer.workloads.azure2019 import load_azure2019
from prewarmer.workloads.azure2021 import Trace2021Workload, load_azure2021
from prewarmer.workloads.base import MinuteCountWorkload, TraceError
from prewarmer.workloads.detect import open_trace, parse_minutes, parse_slice

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
SAMPLE_2019 = TRACES / "azure2019-d01-sample1000"
SAMPLE_2021 = TRACES / "azure2021-example" / "AzureFunctionsInvocationTrace2021-sample200.csv"
PCT = ["percentile_Average_0", "percentile_Average_1", "percentile_Average_25", "percentile_Average_50",
       "percentile_Average_75", "percentile_Average_99", "percentile_Average_100"]
MINUTES = [str(m) for m in range(1, 1441)]


# --- helpers: tiny traces in the original layouts -------------------------------------------------

def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def inv_row(func: str, counts: dict[int, int], app: str | None = None, trigger: str = "http") -> list:
    """A 2019 invocations row; `counts` maps 0-based minute -> count."""
    row = [0] * 1440
    for m, c in counts.items():
        row[m] = c
    return ["own", app or f"app-{func}", func, trigger, *row]


def write_day(root: Path, day: int, rows: list[list], durations: dict[str, list] | None = None,
              memory: dict[str, float] | None = None) -> None:
    """Writes one day; durations/memory default to a row for every function / app of `rows`."""
    write_csv(root / f"invocations_per_function_md.anon.d{day:02d}.csv",
              ["HashOwner", "HashApp", "HashFunction", "Trigger", *MINUTES], rows)
    if durations is None:
        durations = {r[2]: [10, 20, 30, 40, 50, 60, 70] for r in rows}
    by_func = {r[2]: r for r in rows}
    write_csv(root / f"function_durations_percentiles.anon.d{day:02d}.csv",
              ["HashOwner", "HashApp", "HashFunction", "Average", "Count", "Minimum", "Maximum", *PCT],
              [[by_func[f][0], by_func[f][1], f, 1, 1, 1, 1, *p] for f, p in durations.items()])
    if memory is None:
        memory = {r[1]: 128.0 for r in rows}
    write_csv(root / f"app_memory_percentiles.anon.d{day:02d}.csv",
              ["HashOwner", "HashApp", "SampleCount", "AverageAllocatedMb"],
              [["own", app, 10, mb] for app, mb in memory.items()])


@pytest.fixture
def day1(tmp_path: Path) -> Path:
    write_day(tmp_path, 1, [inv_row("f0", {0: 2, 5: 1}), inv_row("f1", {1: 3}, app="shared"),
                            inv_row("f2", {1439: 4}, app="shared")])
    return tmp_path


@contextmanager
def raises_at(path: Path, line: int | None, column: str | None, match: str | None = None) -> Iterator[None]:
    """Expects a TraceError that names this file, line and column (in its fields and its message)."""
    with pytest.raises(TraceError, match=match) as info:
        yield
    err = info.value
    assert Path(err.path) == path, err
    assert (err.line, err.column) == (line, column), err
    assert str(path) in str(err)


# --- Azure 2019: good input ------------------------------------------------------------------------

def test_2019_basic(day1: Path) -> None:
    w = load_azure2019(day1)
    assert isinstance(w, MinuteCountWorkload)
    assert w.functions.names == ["f0", "f1", "f2"]
    assert w.functions.app_names == ["app-f0", "shared"]
    assert w.functions.apps.tolist() == [0, 1, 1]
    assert w.functions.triggers == ["http"] * 3
    assert w.functions.memory_mb.tolist() == [128.0] * 3
    assert np.isnan(w.functions.cold_start_s).all()
    assert w.counts.shape == (3, 1440) and w.total_invocations() == 10
    assert w.counts[0, [0, 5]].tolist() == [2, 1] and w.counts[2, 1439] == 4
    assert w.duration_pct_ms[1].tolist() == [10, 20, 30, 40, 50, 60, 70]
    d = w.describe()
    assert d["format"] == "azure2019" and d["days"] == [1] and d["path"] == str(day1)
    assert d["missing_durations"] == 0 and d["missing_memory"] == 0 and w.start_minute == 0


def test_2019_reordered_and_extra_columns(tmp_path: Path) -> None:
    header = ["Extra", *reversed(MINUTES), "Trigger", "HashFunction", "HashApp", "HashOwner"]
    counts = [0] * 1440
    counts[3] = 7
    write_csv(tmp_path / "invocations_per_function_md.anon.d01.csv", header,
              [["x", *reversed(counts), "timer", "f0", "a0", "own"]])
    write_csv(tmp_path / "function_durations_percentiles.anon.d01.csv", ["Junk", *reversed(PCT),
              "HashFunction", "HashApp", "HashOwner"], [["j", 7, 6, 5, 4, 3, 2, 1, "f0", "a0", "own"]])
    write_csv(tmp_path / "app_memory_percentiles.anon.d01.csv",
              ["AverageAllocatedMb", "HashApp", "HashOwner"], [[300, "a0", "own"]])
    w = load_azure2019(tmp_path)
    assert w.counts[0, 3] == 7 and w.total_invocations() == 7
    assert w.functions.triggers == ["timer"] and w.functions.memory_mb[0] == 300
    assert w.duration_pct_ms[0].tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_2019_days_concatenate_and_match_functions(tmp_path: Path) -> None:
    write_day(tmp_path, 1, [inv_row("a", {0: 1}), inv_row("b", {10: 2})])
    # Day 2 lists b first and adds c; a is absent that day.
    write_day(tmp_path, 2, [inv_row("c", {0: 5}), inv_row("b", {1439: 3})])
    w = load_azure2019(tmp_path)
    assert w.describe()["days"] == [1, 2]
    assert w.functions.names == ["a", "b", "c"]
    assert w.counts.shape == (3, 2880)
    assert w.counts[0].sum() == 1 and w.counts[0, 1440:].sum() == 0
    assert w.counts[1, 10] == 2 and w.counts[1, 2879] == 3
    assert w.counts[2, 1440] == 5 and w.counts[2, :1440].sum() == 0
    only2 = load_azure2019(tmp_path, days=[2])
    assert only2.functions.names == ["c", "b"] and only2.counts.shape == (2, 1440)


def test_2019_minute_window_across_days(tmp_path: Path) -> None:
    write_day(tmp_path, 1, [inv_row("a", {1430: 1, 1439: 2})])
    write_day(tmp_path, 2, [inv_row("a", {0: 3, 9: 4, 10: 5})])
    w = load_azure2019(tmp_path, minutes=(1435, 1450))
    assert w.start_minute == 1435 and w.counts.shape == (1, 15)
    assert w.counts[0, 4] == 2 and w.counts[0, 5] == 3 and w.counts[0, 14] == 4
    assert w.total_invocations() == 9 and w.horizon_s == 900
    # A window inside day 2 still keeps the function order of day 1.
    late = load_azure2019(tmp_path, minutes=(1440, 1450))
    assert late.counts[0].tolist() == [3] + [0] * 8 + [4]


def test_2019_function_selection(tmp_path: Path) -> None:
    write_day(tmp_path, 1, [inv_row(f"f{i}", {i: i + 1}) for i in range(5)])
    write_day(tmp_path, 2, [inv_row("new", {0: 1}), inv_row("f3", {0: 9})])
    w = load_azure2019(tmp_path, functions=slice(1, 4))
    # The slice is over day 1's rows: "new" (day 2 only) is not in it.
    assert w.functions.names == ["f1", "f2", "f3"]
    assert w.counts[2, 1440] == 9 and w.counts[0, 1] == 2
    w = load_azure2019(tmp_path, functions=["new", "f0"])
    assert w.functions.names == ["f0", "new"]
    assert load_azure2019(tmp_path, functions=slice(0, 5, 2)).functions.names == ["f0", "f2", "f4"]
    assert load_azure2019(tmp_path, functions=slice(-2, None)).functions.names == ["f3", "f4"]


def test_2019_fallbacks(tmp_path: Path) -> None:
    rows = [inv_row("f0", {0: 1}), inv_row("f1", {0: 1}), inv_row("f2", {0: 1})]
    # f2 has no duration row; app-f2 has no memory row. The percentiles of f1 are out of order.
    durations = {"f0": [10, 10, 10, 10, 10, 10, 10], "f1": [30, 20, 40, 40, 40, 40, -5]}
    write_day(tmp_path, 1, rows, durations=durations, memory={"app-f0": 100.0, "app-f1": 300.0})
    w = load_azure2019(tmp_path)
    d = w.describe()
    assert d["missing_durations"] == 1 and d["missing_memory"] == 1
    assert w.functions.memory_mb.tolist() == [100.0, 300.0, 200.0]
    assert w.duration_pct_ms[1].tolist() == [30, 30, 40, 40, 40, 40, 40]
    assert w.duration_pct_ms[2].tolist() == [20, 20, 25, 25, 25, 25, 25]
    assert (np.diff(w.duration_pct_ms, axis=1) >= 0).all() and (w.duration_pct_ms >= 0).all()


def test_2019_memory_file_absent_on_a_day(tmp_path: Path) -> None:
    write_day(tmp_path, 1, [inv_row("a", {0: 1})], memory={"app-a": 512.0})
    write_day(tmp_path, 2, [inv_row("b", {0: 1})])
    (tmp_path / "app_memory_percentiles.anon.d02.csv").unlink()
    w = load_azure2019(tmp_path)
    assert w.functions.memory_mb.tolist() == [512.0, 512.0]  # b: median of the known apps
    assert w.describe()["missing_memory"] == 1
    alone = load_azure2019(tmp_path, days=[2])
    assert alone.functions.memory_mb.tolist() == [256.0]  # no memory file at all


def test_2019_duplicate_rows_keep_the_first(tmp_path: Path) -> None:
    # Issue 17: a duplicated row is no longer summed (its invocations were counted twice).
    write_day(tmp_path, 1, [inv_row("a", {0: 1}), inv_row("a", {0: 2, 1: 1})])
    w = load_azure2019(tmp_path)
    assert w.functions.names == ["a"] and w.counts[0, :2].tolist() == [1, 0]
    assert "1 duplicated function rows" in w.describe()["warnings"][0]


# --- Azure 2019: bad input, located by file, line and column ---------------------------------------

def test_2019_missing_directory(tmp_path: Path) -> None:
    with raises_at(tmp_path / "nope", None, None, "no such directory"):
        load_azure2019(tmp_path / "nope")


def test_2019_no_invocations_file(tmp_path: Path) -> None:
    with raises_at(tmp_path, None, None, "no invocations"):
        load_azure2019(tmp_path)


def test_2019_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "invocations_per_function_md.anon.d01.csv"
    path.write_text("")
    with raises_at(path, 1, None, "empty"):
        load_azure2019(tmp_path)


@pytest.mark.parametrize("column", ["HashFunction", "HashOwner", "37"])
def test_2019_missing_column(tmp_path: Path, column: str) -> None:
    header = [c for c in ["HashOwner", "HashApp", "HashFunction", "Trigger", *MINUTES] if c != column]
    path = write_csv(tmp_path / "invocations_per_function_md.anon.d01.csv", header, [])
    with raises_at(path, 1, column, "missing required column"):
        load_azure2019(tmp_path)


def _bad_count_day(tmp_path: Path, value: str) -> Path:
    rows = [inv_row("f0", {0: 1}), inv_row("f1", {0: 1})]
    rows[1][4 + 36] = value  # minute column "37" on line 3
    write_day(tmp_path, 1, rows)
    return tmp_path / "invocations_per_function_md.anon.d01.csv"


@pytest.mark.parametrize("value, message", [("abc", "not an integer count: 'abc'"), ("1.5", "not an integer"),
                                            ("", "not an integer"), ("-3", "negative count: '-3'"),
                                            ("99999999999999999999", "too large")])
def test_2019_bad_count(tmp_path: Path, value: str, message: str) -> None:
    path = _bad_count_day(tmp_path, value)
    with raises_at(path, 3, "37", message):
        load_azure2019(tmp_path)


def test_2019_bad_count_outside_selection_is_not_read(tmp_path: Path) -> None:
    _bad_count_day(tmp_path, "abc")
    assert load_azure2019(tmp_path, functions=slice(0, 1)).total_invocations() == 1
    assert load_azure2019(tmp_path, minutes=(0, 30)).total_invocations() == 2


def test_2019_truncated_row(tmp_path: Path) -> None:
    rows = [inv_row("f0", {0: 1}), inv_row("f1", {0: 1}), inv_row("f2", {0: 1})]
    rows[2] = rows[2][:4 + 99]  # minutes 1..99 only: the first missing column is "100"
    write_day(tmp_path, 1, rows)
    with raises_at(tmp_path / "invocations_per_function_md.anon.d01.csv", 4, "100", "truncated"):
        load_azure2019(tmp_path)


def test_2019_bad_duration_and_memory(tmp_path: Path) -> None:
    write_day(tmp_path, 1, [inv_row("f0", {0: 1}), inv_row("f1", {0: 1})],
              durations={"f0": [1] * 7, "f1": [1, 2, "x", 4, 5, 6, 7]})
    with raises_at(tmp_path / "function_durations_percentiles.anon.d01.csv", 3, "percentile_Average_25",
                   "not a finite number: 'x'"):
        load_azure2019(tmp_path)
    write_day(tmp_path, 1, [inv_row("f0", {0: 1})], memory={"app-f0": "lots"})  # type: ignore[dict-item]
    with raises_at(tmp_path / "app_memory_percentiles.anon.d01.csv", 2, "AverageAllocatedMb"):
        load_azure2019(tmp_path)


def test_2019_missing_column_in_durations(tmp_path: Path) -> None:
    write_day(tmp_path, 1, [inv_row("f0", {0: 1})])
    path = write_csv(tmp_path / "function_durations_percentiles.anon.d01.csv",
                     ["HashOwner", "HashApp", "HashFunction", *PCT[:-1]], [])
    with raises_at(path, 1, "percentile_Average_100"):
        load_azure2019(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"days": [2]}, "no invocations file for day 2"),
    ({"days": [15]}, "out of range"),
    ({"days": []}, "selects nothing"),
    ({"minutes": (0, 1441)}, "out of range"),
    ({"minutes": (10, 10)}, "out of range"),
    ({"minutes": (-1, 10)}, "out of range"),
    ({"functions": slice(0, 4)}, "out of range"),
    ({"functions": slice(3, None)}, "out of range"),
    ({"functions": slice(2, 1)}, "selects nothing"),
    ({"functions": ["f0", "nope"]}, "not in the selected days: nope"),
    ({"functions": []}, "empty"),
    ({"functions": "f0"}, "slice or a list"),
])
def test_2019_bad_selection(day1: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(TraceError, match=message) as info:
        load_azure2019(day1, **kwargs)
    assert info.value.path is not None and str(day1) in info.value.path


# --- Azure 2021 -----------------------------------------------------------------------------------

def write_2021(path: Path, rows: list[list], header: list[str] | None = None) -> Path:
    return write_csv(path, header or ["app", "func", "end_timestamp", "duration"], rows)


def test_2021_parse_sort_and_time_origin(tmp_path: Path) -> None:
    # Unsorted rows; the earliest start, 120.5 s, floored to the minute is time 0.
    path = write_2021(tmp_path / "t.csv", [
        ["A", "x", 200.0, 1.0],      # start 199
        ["A", "y", 130.5, 10.0],     # start 120.5 -> time 0 is 120
        ["B", "z", 400.0, -2.0],     # negative duration clipped: start = end = 400
        ["A", "x", 150.0, 0.5],      # start 149.5
    ])
    w = load_azure2021(path)
    assert isinstance(w, Trace2021Workload)
    assert w.functions.names == ["x", "y", "z"] and w.functions.app_names == ["A", "B"]
    assert w.functions.apps.tolist() == [0, 0, 1] and w.functions.memory_mb.tolist() == [256.0] * 3
    assert w.t.tolist() == [0.5, 29.5, 79.0, 280.0]
    assert w.func.tolist() == [1, 0, 0, 2]
    assert w.duration.tolist() == [10.0, 0.5, 1.0, 0.0]
    assert w.horizon_s == 300.0 and w.total_invocations() == 4
    d = w.describe()
    assert d["format"] == "azure2021" and d["path"] == str(path)
    assert d["functions"] == 3 and d["invocations"] == 4


def test_2021_chunks_and_slicing(tmp_path: Path) -> None:
    rows = [["A", f"f{i % 3}", 60.0 * i + 30, 1.0] for i in range(10)]
    # Unsorted rows (f0, f1, f2 still appear first in that order), reordered and extra columns.
    order = [0, 1, 2, *range(9, 2, -1)]
    path = write_2021(tmp_path / "t.csv", [[*reversed(rows[i]), "extra"] for i in order],
                      header=["duration", "end_timestamp", "func", "app", "x"])
    w = load_azure2021(path)
    assert w.horizon_s == 600.0
    chunks = list(w.chunks(seed=1, chunk_s=240.0))
    assert [(c.start, c.end) for c in chunks] == [(0, 240), (240, 480), (480, 600)]
    assert sum(len(c) for c in chunks) == 10
    for c in chunks:
        assert (np.diff(c.t) >= 0).all() and ((c.t >= c.start) & (c.t < c.end)).all()
    only = np.concatenate([c.func for c in w.chunks(0, 240.0, functions=np.array([1]))])
    assert only.tolist() == [1, 1, 1]

    s = load_azure2021(path, functions=slice(0, 2), minutes=(2, 6))
    assert s.functions.names == ["f0", "f1"] and s.start_minute == 2 and s.horizon_s == 240.0
    # Minutes 2..5 hold f2, f0, f1, f2: f2 is not selected.
    assert s.t.tolist() == [89.0, 149.0] and s.func.tolist() == [0, 1]
    named = load_azure2021(path, functions=["f2"])
    assert named.functions.names == ["f2"] and named.total_invocations() == 3


def test_2021_errors(tmp_path: Path) -> None:
    with raises_at(tmp_path / "none.csv", None, None, "no such file"):
        load_azure2021(tmp_path / "none.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with raises_at(empty, 1, None, "empty"):
        load_azure2021(empty)
    path = write_2021(tmp_path / "nocol.csv", [], header=["app", "func", "end_timestamp"])
    with raises_at(path, 1, "duration", "missing required column"):
        load_azure2021(path)
    path = write_2021(tmp_path / "bad.csv", [["A", "x", 1.0, 0.5], ["A", "x", "soon", 0.5]])
    with raises_at(path, 3, "end_timestamp", "'soon'"):
        load_azure2021(path)
    path = write_2021(tmp_path / "nan.csv", [["A", "x", 1.0, "nan"]])
    with raises_at(path, 2, "duration"):
        load_azure2021(path)
    path = tmp_path / "short.csv"
    path.write_text("app,func,end_timestamp,duration\nA,x,1.0,0.5\nA,x,2.0\n")
    with raises_at(path, 3, "duration", "truncated"):
        load_azure2021(path)
    path = write_2021(tmp_path / "ok.csv", [["A", "x", 100.0, 1.0]])
    with pytest.raises(TraceError, match="out of range"):
        load_azure2021(path, minutes=(0, 5))
    with pytest.raises(TraceError, match="out of range"):
        load_azure2021(path, functions=slice(0, 2))
    with pytest.raises(TraceError, match="not in the file"):
        load_azure2021(path, functions=["y"])
    header_only = write_2021(tmp_path / "h.csv", [])
    with pytest.raises(TraceError, match="no invocation"):
        load_azure2021(header_only)


# --- format detection and CLI parsing --------------------------------------------------------------

def test_open_trace_detects_formats(day1: Path, tmp_path: Path) -> None:
    assert isinstance(open_trace(day1), MinuteCountWorkload)
    w = open_trace(day1 / "invocations_per_function_md.anon.d01.csv", functions=slice(0, 2))
    assert w.functions.names == ["f0", "f1"] and w.describe()["days"] == [1]
    with pytest.raises(TraceError, match="day 1"):
        open_trace(day1 / "invocations_per_function_md.anon.d01.csv", days=[2])
    sub = tmp_path / "t2021"
    sub.mkdir()
    path = write_2021(sub / "any-name.csv", [["A", "x", 100.0, 1.0]])
    assert isinstance(open_trace(path), Trace2021Workload)
    assert isinstance(open_trace(sub), Trace2021Workload)
    with pytest.raises(TraceError, match="days"):
        open_trace(path, days=[1])
    with raises_at(tmp_path / "missing", None, None, "no such file"):
        open_trace(tmp_path / "missing")
    other = write_csv(tmp_path / "other.csv", ["a", "b"], [[1, 2]])
    with raises_at(other, 1, None, "unrecognised"):
        open_trace(other)


def test_parse_slice_and_minutes() -> None:
    assert parse_slice("100") == slice(0, 100)
    assert parse_slice("10:20") == slice(10, 20)
    assert parse_slice(":5") == slice(None, 5) and parse_slice("5:") == slice(5, None)
    for bad in ["", "x", "0", "-3", "5:2", "1:2:3", "a:b", "-1:4"]:
        with pytest.raises(ValueError, match="function selection"):
            parse_slice(bad)
    assert parse_minutes("720:1440") == (720, 1440)
    for bad in ["720", "5:5", "9:3", "-1:4", "a:9", ":9", "1:2:3"]:
        with pytest.raises(ValueError, match="minute window"):
            parse_minutes(bad)


# --- the real shared traces -------------------------------------------------------------------------

needs_2019 = pytest.mark.skipif(not SAMPLE_2019.is_dir(), reason=f"shared trace not found at {SAMPLE_2019}")
needs_2021 = pytest.mark.skipif(not SAMPLE_2021.is_file(), reason=f"shared trace not found at {SAMPLE_2021}")


@needs_2019
def test_real_2019_sample_loads() -> None:
    w = load_azure2019(SAMPLE_2019)
    assert len(w.functions) == 1000 and w.counts.shape == (1000, 1440)
    assert w.total_invocations() == 11_639_447
    d = w.describe()
    assert d["missing_durations"] == 0 and d["missing_memory"] == 0
    assert (np.diff(w.duration_pct_ms, axis=1) >= 0).all()
    assert (w.functions.memory_mb > 0).all() and len(w.functions.app_names) == 1000


@needs_2019
def test_real_2019_sliced_chunks() -> None:
    start, end = 720, 900
    w = load_azure2019(SAMPLE_2019, functions=slice(0, 50), minutes=(start, end))
    full = load_azure2019(SAMPLE_2019, minutes=(start, end))
    assert w.start_minute == start and w.horizon_s == (end - start) * 60
    assert np.array_equal(w.counts, full.counts[:50])
    chunks = list(w.chunks(seed=7, chunk_s=1800.0))
    t = np.concatenate([c.t for c in chunks])
    func = np.concatenate([c.func for c in chunks])
    for c in chunks:
        assert ((c.t >= c.start) & (c.t < c.end)).all()
    assert (np.diff(t) >= 0).all()
    # Back in trace time, every arrival lies in the requested window [start, end) minutes.
    assert ((t / 60 + w.start_minute >= start) & (t / 60 + w.start_minute < end)).all()
    assert np.array_equal(np.bincount(func, minlength=50), w.counts.sum(axis=1))
    # Per-minute counts are reproduced exactly.
    minute = (t // 60).astype(int)
    for f in np.flatnonzero(w.counts.sum(axis=1))[:5]:
        assert np.array_equal(np.bincount(minute[func == f], minlength=end - start), w.counts[f])


@needs_2019
def test_real_2019_same_seed_same_arrivals_when_sliced() -> None:
    window = (600, 660)
    small = load_azure2019(SAMPLE_2019, functions=slice(0, 20), minutes=window)
    full = load_azure2019(SAMPLE_2019, minutes=window)
    f = int(np.argmax(small.counts.sum(axis=1)))
    assert small.functions.names[f] == full.functions.names[f]

    def arrivals(w: MinuteCountWorkload, **kw) -> tuple[np.ndarray, np.ndarray]:
        parts = [(c.t[c.func == f], c.duration[c.func == f]) for c in w.chunks(seed=3, chunk_s=600.0, **kw)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    t_small, d_small = arrivals(small)
    t_full, d_full = arrivals(full)
    t_only, _ = arrivals(full, functions=np.array([f, 500]))
    assert len(t_small) == small.counts[f].sum() > 0
    assert np.array_equal(t_small, t_full) and np.array_equal(d_small, d_full)
    assert np.array_equal(t_small, t_only)
    assert np.array_equal(t_small, arrivals(small)[0])  # a re-run gives the same arrivals
    other_seed = [c.t[c.func == f] for c in small.chunks(seed=4, chunk_s=600.0)]
    assert not np.array_equal(np.concatenate(other_seed), t_small)


@needs_2021
def test_real_2021_example() -> None:
    w = load_azure2021(SAMPLE_2021)
    assert w.total_invocations() == 199
    assert (np.diff(w.t) >= 0).all() and (w.t >= 0).all() and (w.t < w.horizon_s).all()
    assert (w.duration >= 0).all()
    assert sum(len(c) for c in w.chunks(seed=0, chunk_s=300.0)) == 199
    assert isinstance(open_trace(SAMPLE_2021.parent), Trace2021Workload)
    sliced = load_azure2021(SAMPLE_2021, minutes=(5, 10))
    assert ((sliced.t >= 0) & (sliced.t < 300)).all() and 0 < sliced.total_invocations() < 199
