"""Issue 17: fuzzing (hypothesis) of the event decoder and the trace loaders.

The decoder must never raise, must account for every entry (accepted or rejected with the field named),
must accept exactly what the schema accepts, and must never let through a value the schema forbids or
a `ts` past the bound. The loaders must either load something sane (finite, non-negative numbers) or
raise TraceError naming the file; no other exception, whatever the bytes. Bounded: ~200 examples each.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prewarmer.stream.events import PHASE_START, EventError, InvocationEvent, decode_batch
from prewarmer.workloads.azure2019 import load_azure2019
from prewarmer.workloads.azure2021 import load_azure2021
from prewarmer.workloads.base import TraceError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMBERS = st.sampled_from([b"0", b"1", b"12.5", b"-1", b"-0.0", b"nan", b"NaN", b"inf", b"-inf", b"1e400",
                           b"1e308", b"200", b"99", b"600", b"1_000", b" 7 ", b"0x10", b"", b"1.7e9",
                           b"32503680000", b"\xff", b"\xd9\xa1"])
VALUES = st.one_of(NUMBERS, st.binary(max_size=12), st.text(max_size=12).map(str.encode),
                   st.sampled_from([b"0", b"1", b"2", b"true", b"false", b"fn", b"x" * 300, b"start", b"end",
                                    b"done"]))
KEYS = st.sampled_from([b"v", b"phase", b"function", b"namespace", b"ts", b"duration_ms", b"startup_ms", b"cold",
                        b"status", b"instance", b"extra", b"\xff"])


def valid_fields() -> st.SearchStrategy[dict[bytes, bytes]]:
    return st.fixed_dictionaries({
        b"function": st.sampled_from([b"fn", b"a" * 253, b"echo"]), b"ts": st.sampled_from([b"1.7e9", b"1"]),
        b"duration_ms": st.sampled_from([b"0", b"12.5"]), b"cold": st.sampled_from([b"0", b"1"]),
        b"status": st.sampled_from([b"100", b"200", b"599"])})


ENTRY = st.one_of(
    st.dictionaries(KEYS, VALUES, max_size=10),
    # mostly valid entries with one or two fields mutated: the interesting boundary
    st.tuples(valid_fields(), st.dictionaries(KEYS, VALUES, max_size=2)).map(lambda t: {**t[0], **t[1]}),
)


@FUZZ
@given(st.lists(ENTRY, max_size=8), st.one_of(st.none(), st.floats(1.0, 4e10)))
def test_decode_batch_never_raises_and_accounts_for_every_entry(entries, max_ts):
    batch = [(f"{i}-0".encode(), f) for i, f in enumerate(entries)]
    out = decode_batch(batch, max_ts=max_ts)
    accepted = set(out.ids)
    rejected = {eid for eid, _, _ in out.rejected}
    assert not accepted & rejected and accepted | rejected == {eid for eid, _ in batch}
    for _eid, _f, err in out.rejected:
        assert isinstance(err, EventError) and err.field and str(err)
    for i in range(len(out)):
        ts, dur, st_ = out.ts[i], out.duration_ms[i], out.startup_ms[i]
        assert math.isfinite(ts) and ts > 0 and (max_ts is None or ts <= max_ts)
        assert math.isfinite(dur) and dur >= 0 and math.isfinite(st_) and st_ >= 0
        assert (100 <= out.status[i] <= 599 or out.phase[i] == PHASE_START) and 0 < len(out.function[i]) <= 253
    # The fast path accepts exactly what the schema accepts (when no ts bound is in play).
    if max_ts is None:
        for eid, f in batch:
            try:
                InvocationEvent.from_fields(f)
                schema_ok = True
            except EventError:
                schema_ok = False
            assert (eid in accepted) == schema_ok, (f, eid in accepted)


def _cell() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["0", "1", "3", "-1", "nan", "inf", "-inf", "1e999", "2.5", "", "x", "1e9",
                                      "2147483648", " 4", "NaN"]),
                     st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=6))


def _csv_line(cells: list[str]) -> str:
    return ",".join('"' + c.replace('"', '""') + '"' if any(ch in c for ch in ',"\n\r') else c for c in cells)


@FUZZ
@given(rows=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["f", "g", "h"]),
                               st.lists(_cell(), min_size=3, max_size=3), st.lists(_cell(), min_size=7, max_size=7)),
                     min_size=1, max_size=4),
       memory=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), _cell()), max_size=4),
       truncate=st.booleans(), strict=st.booleans())
def test_the_2019_loader_loads_sane_numbers_or_raises_trace_error(rows, memory, truncate, strict):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        inv = ["HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, range(1, 1441)))]
        dur = ["HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,"
               + ",".join(f"percentile_Average_{p}" for p in (0, 1, 25, 50, 75, 99, 100))]
        for app, fn, counts, pct in rows:
            inv.append(_csv_line(["o", app, fn, "http", *counts, *["0"] * 1437]))
            dur.append(_csv_line(["o", app, fn, "1", "1", "1", "1", *pct]))
        mem = ["HashOwner,HashApp,SampleCount,AverageAllocatedMb"] + [_csv_line(["o", a, "1", v]) for a, v in memory]
        if truncate:
            inv[-1] = inv[-1][: len(inv[-1]) // 2]
        (root / "invocations_per_function_md.anon.d01.csv").write_text("\n".join(inv) + "\n")
        (root / "function_durations_percentiles.anon.d01.csv").write_text("\n".join(dur) + "\n")
        (root / "app_memory_percentiles.anon.d01.csv").write_text("\n".join(mem) + "\n")
        try:
            w = load_azure2019(root, minutes=(0, 3), strict=strict)
        except TraceError as e:
            assert str(root) in str(e)
            return
        assert (w.counts >= 0).all()
        assert (w.duration_pct_ms >= 0).all() and (w.duration_pct_ms < math.inf).all()
        assert (w.functions.memory_mb >= 0).all() and (w.functions.memory_mb < math.inf).all()
        assert len(set(w.functions.names)) == len(w.functions.names) or len({(a, f) for a, f, *_ in rows}) > 1
        if strict:
            assert "warnings" not in w.describe()


@FUZZ
@given(rows=st.lists(st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(["x", "y"]), _cell(), _cell()),
                     max_size=6),
       strict=st.booleans())
# Found by this test: an invocation 1e9 s after the first, on an exact minute, fell outside the trace's span.
@example(rows=[("A", "x", "0", "0"), ("A", "x", "0", "1e9")], strict=False)
def test_the_2021_loader_loads_sane_numbers_or_raises_trace_error(rows, strict):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.csv"
        path.write_text("app,func,end_timestamp,duration\n" + "".join(_csv_line(list(r)) + "\n" for r in rows))
        try:
            w = load_azure2021(path, strict=strict)
        except TraceError as e:
            assert str(path) in str(e)
            return
        assert (w.duration >= 0).all() and (w.t >= 0).all() and len(w.t) == len(rows)
        assert math.isfinite(w.horizon_s) and w.horizon_s > 0
