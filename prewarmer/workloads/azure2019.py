"""Load the Azure Functions 2019 trace (per-minute counts, duration and memory percentiles).

The files are streamed row by row and only the selected functions and minutes are kept, so the full
trace (~46k functions, 14 days) loads into memory proportional to the selection. Every problem in
the input becomes a TraceError naming the file, the 1-based line and the column.

Impossible values (not a number, NaN, inf, a negative count or memory) always raise. Gaps the public
trace really has are anomalies (`base.Anomalies`): a function listed twice in one file (the first row
is used: its invocations are not counted twice), a selected function without a duration row or whose
app has no memory row (the median of the file stands in), a negative duration percentile (clipped to
0). They are counted and reported in the description's `warnings`; with `strict=True` the first one
raises instead.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .base import Anomalies, FunctionTable, MinuteCountWorkload, TraceError

MINUTES_PER_DAY = 1440
INVOCATIONS_FILE = "invocations_per_function_md.anon.d{:02d}.csv"
DURATIONS_FILE = "function_durations_percentiles.anon.d{:02d}.csv"
MEMORY_FILE = "app_memory_percentiles.anon.d{:02d}.csv"
DAY_FILE_RE = re.compile(r"(?:invocations_per_function_md|function_durations_percentiles|"
                         r"app_memory_percentiles)\.anon\.d(\d+)\.csv")
KEY_COLUMNS = ("HashOwner", "HashApp", "HashFunction")
MINUTE_COLUMNS = tuple(str(m) for m in range(1, MINUTES_PER_DAY + 1))
PERCENTILE_COLUMNS = tuple(f"percentile_Average_{p}" for p in (0, 1, 25, 50, 75, 99, 100))
DEFAULT_MEMORY_MB = 256.0
_INT32_MAX = np.iinfo(np.int32).max

FunctionSelection = slice | Sequence[str] | None


class CsvFile:
    """A CSV file read row by row, columns looked up by header name. Also used by the 2021 loader."""

    def __init__(self, path: Path, required: Iterable[str]) -> None:
        self.path = str(path)
        try:
            self._file = open(path, newline="", encoding="utf-8-sig")  # closed by close() / __exit__
        except OSError as e:
            raise TraceError(f"cannot open: {e.strerror}", path=self.path) from None
        self._reader = csv.reader(self._file)
        try:
            header = next((row for row in self._reader if row), None)
        except (csv.Error, UnicodeDecodeError) as e:
            self.close()
            raise TraceError(f"unreadable CSV: {e}", path=self.path, line=self._reader.line_num) from None
        if header is None:
            self.close()
            raise TraceError("empty file: no header line", path=self.path, line=1)
        self.header = [h.strip() for h in header]
        self.header_line = self._reader.line_num
        self.index: dict[str, int] = {}
        for i, name in enumerate(self.header):
            self.index.setdefault(name, i)
        for name in required:
            if name not in self.index:
                self.close()
                raise TraceError("missing required column", path=self.path, line=self.header_line,
                                 column=name)

    def rows(self) -> Iterator[list[str]]:
        """Data rows; blank lines are skipped, short rows raise. `self.line` is the current row's line."""
        n = len(self.header)
        while True:
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                raise TraceError(f"unreadable CSV: {e}", path=self.path, line=self._reader.line_num) from None
            if not row:
                continue
            if len(row) < n:
                raise self.error(f"truncated row: {len(row)} fields, the header has {n}",
                                 self.header[len(row)])
            yield row

    @property
    def line(self) -> int:
        return self._reader.line_num

    def error(self, message: str, column: str | None = None) -> TraceError:
        return TraceError(message, path=self.path, line=self.line, column=column)

    def floats(self, row: list[str], columns: Sequence[str], nonnegative: bool = False) -> list[float]:
        """The named fields as finite floats (>= 0 if `nonnegative`), or a TraceError naming the first bad one."""
        out = []
        for name in columns:
            text = row[self.index[name]]
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value):
                raise self.error(f"not a finite number: {text!r}", name)
            if nonnegative and value < 0:
                raise self.error(f"negative value: {text!r} (must be >= 0)", name)
            out.append(value)
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _select_days(root: Path, days: Iterable[int] | None) -> list[int]:
    present = sorted(int(m.group(1)) for p in root.glob("invocations_per_function_md.anon.d*.csv")
                     if (m := DAY_FILE_RE.fullmatch(p.name)))
    if not present:
        raise TraceError("no invocations_per_function_md.anon.dNN.csv file in this directory", path=str(root))
    if days is None:
        return present
    try:
        chosen = sorted({int(d) for d in days})
    except (TypeError, ValueError):
        raise TraceError(f"days must be a list of integers, got {days!r}", path=str(root)) from None
    if not chosen:
        raise TraceError("days selects nothing", path=str(root))
    for d in chosen:
        if not 1 <= d <= 14:
            raise TraceError(f"day {d} is out of range 1..14", path=str(root))
        if d not in present:
            raise TraceError(f"no invocations file for day {d}", path=str(root / INVOCATIONS_FILE.format(d)))
    return chosen


def _select_minutes(root: Path, minutes: tuple[int, int] | None, n_days: int) -> tuple[int, int]:
    total = n_days * MINUTES_PER_DAY
    if minutes is None:
        return 0, total
    try:
        start, end = (int(m) for m in minutes)
    except (TypeError, ValueError):
        raise TraceError(f"minutes must be (start, end), got {minutes!r}", path=str(root)) from None
    if not 0 <= start < end <= total:
        raise TraceError(f"minutes {start}:{end} out of range: the selected days span minutes 0:{total}",
                         path=str(root))
    return start, end


class _FunctionFilter:
    """Decides row by row whether a function is selected, without holding unselected rows."""

    def __init__(self, root: Path, functions: FunctionSelection, first_file: Path) -> None:
        self.root, self.spec = root, functions
        self.names: set[str] | None = None
        self.positions: range | None = None
        if isinstance(functions, slice):
            s = functions
            if any(v is not None and not isinstance(v, int) for v in (s.start, s.stop, s.step)):
                raise TraceError(f"function slice must hold integers, got {s!r}", path=str(root))
            if s.step == 0:
                raise TraceError("function slice step cannot be zero", path=str(root))
            if any(v is not None and v < 0 for v in (s.start, s.stop, s.step)):
                # Negative bounds count from the end: only then is a counting pass needed.
                self.positions = range(_count_rows(first_file))[s]
            else:
                self.positions = range(s.start or 0, sys.maxsize if s.stop is None else s.stop, s.step or 1)
        elif functions is not None:
            iterable = isinstance(functions, Iterable) and not isinstance(functions, str)
            names = list(functions) if iterable else [None]
            if not all(isinstance(f, str) for f in names):
                raise TraceError("functions must be a slice or a list of HashFunction strings",
                                 path=str(root))
            self.names = set(names)
            if not self.names:
                raise TraceError("the function list is empty", path=str(root))

    def check_first_file(self, n_rows: int, first_file: Path) -> None:
        s = self.spec
        if not isinstance(s, slice):
            return
        if s.stop is not None and s.stop > n_rows or s.start is not None and s.start >= n_rows:
            raise TraceError(f"function slice {_describe_selection(s)} is out of range: the file has "
                             f"{n_rows} functions", path=str(first_file))
        if not range(n_rows)[s]:
            raise TraceError(f"function slice {_describe_selection(s)} selects nothing", path=str(first_file))

    def check_names(self, found_names: set[str]) -> None:
        if self.names is not None and (missing := self.names - found_names):
            shown = ", ".join(sorted(missing)[:3]) + (", ..." if len(missing) > 3 else "")
            raise TraceError(f"{len(missing)} requested functions are not in the selected days: {shown}",
                             path=str(self.root))


def _count_rows(path: Path) -> int:
    with CsvFile(path, ()) as f:
        return sum(1 for _ in f.rows())


class _Table:
    """Selected functions in order of first appearance, with their per-day count blocks."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str, str], int] = {}
        self.triggers: list[str] = []
        self.blocks: list[tuple[int, list[int], list[np.ndarray]]] = []  # (out offset, funcs, rows)
        self.where: list[tuple[str, int]] = []  # (file, line) where each function first appears

    def add(self, key: tuple[str, str, str], trigger: str, where: tuple[str, int]) -> int:
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.index)
            self.triggers.append(trigger)
            self.where.append(where)
        return i

    def counts(self, n_minutes: int) -> np.ndarray:
        out = np.zeros((len(self.index), n_minutes), np.int32)
        for offset, funcs, rows in self.blocks:
            if not funcs:
                continue
            idx = np.asarray(funcs)
            block = np.stack(rows)
            cols = slice(offset, offset + block.shape[1])
            out[idx, cols] = block  # one row per function and day: later duplicates were dropped on reading
        return out


def _parse_counts(f: CsvFile, row: list[str], positions: list[int], span: slice | None) -> np.ndarray:
    try:
        arr = np.array(row[span] if span is not None else [row[p] for p in positions], dtype=np.int64)
        if arr.size == 0 or (arr.min() >= 0 and arr.max() <= _INT32_MAX):
            return arr
    except (ValueError, OverflowError):
        pass
    # Slow path, only for bad rows: find the first offending column to name it.
    for p in positions:
        text = row[p]
        try:
            value = int(text)
        except ValueError:
            raise f.error(f"not an integer count: {text!r}", f.header[p]) from None
        if value < 0:
            raise f.error(f"negative count: {text!r}", f.header[p])
        if value > _INT32_MAX:
            raise f.error(f"count too large: {text!r}", f.header[p])
    raise f.error("unreadable counts")  # numpy and int() disagree: not expected in practice


def _read_invocations(path: Path, day_i: int, window: tuple[int, int], start: int, table: _Table,
                      sel: _FunctionFilter, found_names: set[str], anomalies: Anomalies) -> int:
    """Reads one day file into `table`; returns its number of data rows."""
    lo, hi = window
    with CsvFile(path, KEY_COLUMNS + MINUTE_COLUMNS) as f:
        io, ia, ifn = (f.index[c] for c in KEY_COLUMNS)
        it = f.index.get("Trigger")
        positions = [f.index[c] for c in MINUTE_COLUMNS[lo:hi]]
        # Minute columns are normally adjacent and in order: then a plain slice of the row is enough.
        adjacent = positions and positions == list(range(positions[0], positions[0] + len(positions)))
        span = slice(positions[0], positions[0] + len(positions)) if adjacent else None
        funcs: list[int] = []
        rows: list[np.ndarray] = []
        first_line: dict[tuple[str, str, str], int] = {}  # selected functions met in this file
        n = 0
        for n, row in enumerate(f.rows(), start=1):
            key = (row[io], row[ia], row[ifn])
            if sel.positions is not None:
                chosen = (n - 1) in sel.positions if day_i == 0 else key in table.index
            else:
                chosen = sel.names is None or key[2] in sel.names
            if not chosen:
                continue
            if key in first_line:
                _listed_again(anomalies, "duplicated function rows", f, key, first_line[key])
                continue
            first_line[key] = f.line
            found_names.add(key[2])
            i = table.add(key, row[it] if it is not None else "unknown", (f.path, f.line))
            if positions:
                funcs.append(i)
                rows.append(_parse_counts(f, row, positions, span))
        table.blocks.append((day_i * MINUTES_PER_DAY + lo - start, funcs, rows))
        return n


def _listed_again(anomalies: Anomalies, what: str, f: CsvFile, key: tuple[str, str, str], first: int) -> None:
    anomalies.add(what, f.error(f"function {key[2]} (app {key[1]}) is listed again, first at line {first}",
                                "HashFunction"), "only the first row of each function is used, the others are ignored")


def _read_durations(paths: list[Path], keys: dict[tuple[str, str, str], int],
                    anomalies: Anomalies) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles (ms) per selected function from the first file that has it, median for the rest."""
    pct = np.full((len(keys), len(PERCENTILE_COLUMNS)), np.nan)
    pool: list[list[float]] = []  # every row of the first file: the fallback, whatever the selection
    missing = len(keys)
    for path in paths:
        if not path.is_file():
            continue
        first = not pool
        seen: dict[int, int] = {}  # selected functions met in this file -> line
        with CsvFile(path, KEY_COLUMNS + PERCENTILE_COLUMNS) as f:
            io, ia, ifn = (f.index[c] for c in KEY_COLUMNS)
            for row in f.rows():
                i = keys.get((row[io], row[ia], row[ifn]))
                if i is not None:
                    if i in seen:
                        _listed_again(anomalies, "duplicated function rows in a durations file", f,
                                      (row[io], row[ia], row[ifn]), seen[i])
                        continue
                    seen[i] = f.line
                wanted = i is not None and np.isnan(pct[i, 0])
                if not (first or wanted):
                    continue
                values = nonnegative_durations(f, row, PERCENTILE_COLUMNS, anomalies)
                if first:
                    pool.append(values)
                if wanted:
                    pct[i] = values
                    missing -= 1
        if missing == 0:
            break
    lacking = np.isnan(pct[:, 0])
    if lacking.any():
        if not pool:
            raise TraceError("no duration percentiles for any function (function_durations_percentiles "
                             "files missing or empty)", path=str(paths[0].parent))
        pct[lacking] = np.median(np.array(pool), axis=0)
    # Percentiles must be a valid inverse CDF: non-decreasing (negative values were refused on reading).
    pct = np.maximum.accumulate(pct, axis=1)
    return pct, lacking


def _read_memory(paths: list[Path], apps: set[tuple[str, str]],
                 anomalies: Anomalies) -> tuple[dict[tuple[str, str], float], float]:
    """AverageAllocatedMb per selected app (first file that has it), and the median of all known apps."""
    found: dict[tuple[str, str], float] = {}
    pool: list[float] = []
    for path in paths:
        if not path.is_file():  # the last two days of the real trace have no memory file
            continue
        first = not pool
        seen: dict[tuple[str, str], int] = {}  # selected apps met in this file -> line
        with CsvFile(path, ("HashOwner", "HashApp", "AverageAllocatedMb")) as f:
            io, ia = f.index["HashOwner"], f.index["HashApp"]
            for row in f.rows():
                key = (row[io], row[ia])
                if key in apps:
                    if key in seen:
                        anomalies.add("duplicated app rows in a memory file", f.error(
                            f"app {key[1]} is listed again, first at line {seen[key]}", "HashApp"),
                            "only the first row of each app is used, the others are ignored")
                        continue
                    seen[key] = f.line
                wanted = key in apps and key not in found
                if first or wanted:
                    (mb,) = f.floats(row, ("AverageAllocatedMb",), nonnegative=True)
                    if first:
                        pool.append(mb)
                    if wanted:
                        found[key] = mb
        if len(found) == len(apps):
            break
    return found, float(np.median(pool)) if pool else DEFAULT_MEMORY_MB


def nonnegative_durations(f: CsvFile, row: list[str], columns: Sequence[str], anomalies: Anomalies) -> list[float]:
    """Finite durations; a negative one is an anomaly, clipped to 0. Also used by the 2021 loader."""
    values = f.floats(row, columns)
    for name, v in zip(columns, values, strict=True):
        if v < 0:
            anomalies.add("negative durations", f.error(f"negative duration: {row[f.index[name]]!r}", name),
                          "clipped to 0")
            return [max(x, 0.0) for x in values]
    return values


def _describe_selection(functions: FunctionSelection) -> str:
    if functions is None:
        return "all"
    if isinstance(functions, slice):
        parts = (functions.start, functions.stop) + ((functions.step,) if functions.step is not None else ())
        return ":".join("" if v is None else str(v) for v in parts)
    return f"{len(functions)} names"


def load_azure2019(path: str | Path, days: Iterable[int] | None = None, functions: FunctionSelection = None,
                   minutes: tuple[int, int] | None = None, strict: bool = False) -> MinuteCountWorkload:
    """Load an Azure Functions 2019 trace directory (original layout) as per-minute counts.

    days: day numbers (1..14) concatenated in time, None = every day present. functions: a slice over
    the rows of the first day's invocations file, or HashFunction names. minutes: (start, end) in
    minutes since the first selected day began, end exclusive. strict: an anomaly (see the module
    docstring) raises TraceError instead of being counted in `describe()["warnings"]`.
    """
    anomalies = Anomalies(strict)
    root = Path(path)
    if not root.is_dir():
        raise TraceError("not a directory" if root.exists() else "no such directory", path=str(root))
    day_list = _select_days(root, days)
    start, end = _select_minutes(root, minutes, len(day_list))
    first_file = root / INVOCATIONS_FILE.format(day_list[0])
    sel = _FunctionFilter(root, functions, first_file)

    table = _Table()
    found_names: set[str] = set()
    for day_i, day in enumerate(day_list):
        lo = max(start - day_i * MINUTES_PER_DAY, 0)
        hi = min(end - day_i * MINUTES_PER_DAY, MINUTES_PER_DAY)
        if lo >= hi:
            if day_i > 0:
                continue  # outside the minute window
            lo = hi = 0  # the first day is read anyway: its row order defines function slices
        n = _read_invocations(root / INVOCATIONS_FILE.format(day), day_i, (lo, hi), start, table, sel,
                              found_names, anomalies)
        if day_i == 0:
            sel.check_first_file(n, first_file)
    sel.check_names(found_names)
    if not table.index:
        raise TraceError("the selection holds no function", path=str(root))

    keys = list(table.index)
    duration_files = [root / DURATIONS_FILE.format(d) for d in day_list]
    pct, lacking = _read_durations(duration_files, table.index, anomalies)
    missing_durations = int(lacking.sum())
    if missing_durations:
        i = int(np.flatnonzero(lacking)[0])
        _missing("functions without a duration row", anomalies, table, i, keys,
                 f"has no row in {' / '.join(p.name for p in duration_files)}",
                 "the median percentiles of the first durations file are used", missing_durations)
    app_keys = {(o, a) for o, a, _ in keys}
    memory_files = [root / MEMORY_FILE.format(d) for d in day_list]
    memory, median_mb = _read_memory(memory_files, app_keys, anomalies)

    app_index: dict[str, int] = {}
    apps = np.array([app_index.setdefault(a, len(app_index)) for _, a, _ in keys], np.int32)
    mem = np.array([memory.get((o, a), median_mb) for o, a, _ in keys], np.float64)
    missing_memory = sum((o, a) not in memory for o, a, _ in keys)
    if missing_memory:
        i = next(k for k, (o, a, _) in enumerate(keys) if (o, a) not in memory)
        _missing("functions whose app has no memory row", anomalies, table, i, keys,
                 f"belongs to app {keys[i][1]}, which has no row in {' / '.join(p.name for p in memory_files)}",
                 f"the median of the memory file ({median_mb:g} MB) is used", missing_memory)
    owner_index: dict[str, int] = {}
    owners = np.array([owner_index.setdefault(o, len(owner_index)) for o, _, _ in keys], np.int32)
    ftable = FunctionTable(names=[k[2] for k in keys], apps=apps, app_names=list(app_index), memory_mb=mem,
                           cold_start_s=np.full(len(keys), np.nan), triggers=table.triggers, tenants=owners,
                           tenant_names=list(owner_index))
    description = {"format": "azure2019", "path": str(root), "days": day_list,
                   "function_selection": _describe_selection(functions),
                   "missing_durations": missing_durations, "missing_memory": missing_memory,
                   "memory_fallback_mb": median_mb}
    if anomalies.counts:
        description["warnings"] = anomalies.warnings()
    return MinuteCountWorkload(ftable, table.counts(end - start), pct, start_minute=start,
                               description=description)


def _missing(kind: str, anomalies: Anomalies, table: _Table, i: int, keys: list, what: str, fallback: str,
             n: int) -> None:
    """An anomaly about selected function `i`, located at its first line in an invocations file."""
    path, line = table.where[i]
    anomalies.add(kind, TraceError(f"function {keys[i][2]} {what}", path=path, line=line, column="HashFunction"),
                  fallback, n)
