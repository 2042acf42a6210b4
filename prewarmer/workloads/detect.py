"""Open a trace whatever its format (Azure 2019 directory or Azure 2021 CSV), and parse CLI selections."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from .azure2019 import DAY_FILE_RE, load_azure2019
from .azure2021 import COLUMNS as COLUMNS_2021
from .azure2021 import load_azure2021
from .base import TraceError, Workload


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            row = next((r for r in csv.reader(f) if r), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TraceError(f"cannot read the header: {e}", path=str(path), line=1) from None
    return [h.strip() for h in row] if row else []


def _is_2021(path: Path) -> bool:
    return set(COLUMNS_2021) <= set(_header(path))


def open_trace(path: str | Path, days: Iterable[int] | None = None,
               functions: slice | Sequence[str] | None = None,
               minutes: tuple[int, int] | None = None, strict: bool = False) -> Workload:
    """Load a trace, detecting its format. `strict`: recoverable anomalies (a duplicated row, a missing
    memory or duration row) raise TraceError instead of being reported in `describe()["warnings"]`.

    A directory holding `invocations_per_function_md.anon.dNN.csv` files is Azure 2019; so is one of
    its day files (that day only). A CSV whose header has app,func,end_timestamp,duration is Azure
    2021, as is a directory holding exactly one such CSV.
    """
    p = Path(path)
    if not p.exists():
        raise TraceError("no such file or directory", path=str(p))
    if p.is_dir():
        if any(p.glob("invocations_per_function_md.anon.d*.csv")):
            return load_azure2019(p, days=days, functions=functions, minutes=minutes, strict=strict)
        candidates = [c for c in sorted(p.glob("*.csv")) if c.is_file() and _is_2021(c)]
        if len(candidates) != 1:
            found = "several Azure 2021 CSV files" if candidates else "no recognised trace file"
            raise TraceError(f"{found} in this directory; name the file", path=str(p))
        p = candidates[0]
    elif m := DAY_FILE_RE.fullmatch(p.name):
        day = int(m.group(1))
        if days is not None and list(days) != [day]:
            raise TraceError(f"the file is day {day} but days={list(days)} was asked; pass the directory "
                             "to choose days", path=str(p))
        return load_azure2019(p.parent, days=[day], functions=functions, minutes=minutes, strict=strict)
    if not _is_2021(p):
        raise TraceError("unrecognised trace format: expected an Azure 2019 directory or a CSV with "
                         f"columns {','.join(COLUMNS_2021)}", path=str(p), line=1)
    if days is not None:
        raise TraceError("days applies to Azure 2019 traces only", path=str(p))
    return load_azure2021(p, functions=functions, minutes=minutes, strict=strict)


def _int(text: str, what: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad {what} {spec!r}: {text!r} is not an integer") from None


def parse_slice(text: str) -> slice:
    """'START:STOP' (either side may be empty) or 'N' for the first N functions."""
    spec = text.strip()
    if ":" not in spec:
        n = _int(spec, "function selection", text)
        if n <= 0:
            raise ValueError(f"bad function selection {text!r}: N must be positive")
        return slice(0, n)
    parts = spec.split(":")
    if len(parts) != 2:
        raise ValueError(f"bad function selection {text!r}: expected N or START:STOP")
    start = _int(parts[0], "function selection", text) if parts[0].strip() else None
    stop = _int(parts[1], "function selection", text) if parts[1].strip() else None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise ValueError(f"bad function selection {text!r}: bounds must be non-negative")
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"bad function selection {text!r}: STOP must be greater than START")
    return slice(start, stop)


def parse_minutes(text: str) -> tuple[int, int]:
    """'A:B': minutes A (inclusive) to B (exclusive) since the trace start."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"bad minute window {text!r}: expected START:END, e.g. 720:1440")
    start, end = (_int(p, "minute window", text) for p in parts)
    if start < 0 or end <= start:
        raise ValueError(f"bad minute window {text!r}: need 0 <= START < END")
    return start, end
