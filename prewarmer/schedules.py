"""Warm-floor rules: per function (selected by name globs and labels) a cron schedule of minimum warm counts,
an optional cold-start target and an optional idle-memory budget; their file format, checks and evaluation.

The file (`--schedule-file`, YAML or JSON; the PrewarmPolicy resource carries the same spec):

    rules:
      - selector: {matchNames: ["fn-*"], matchLabels: {team: a}}
        schedule:
          - {cron: "0 8 * * 1-5", duration: "10h", timeZone: "Europe/Berlin", minWarm: 2}
        target: {coldStartPct: 2.0}
        budget: {idleGbSecondsPerHour: 50}

Times: a policy's `now` plus the observation's `epoch_s` is read as a Unix time (seconds since 1970-01-01 UTC),
which is what the live sidecar's clock is (`--clock-epoch`, default the wall clock at start). Replay has no
dates: a trace minute m stands for 1970-01-01 00:00 UTC + m minutes, as the load test's `--clock-epoch`
(`60 x start minute`) makes it live. Cron fields are read in the entry's time zone.

Evaluation is vectorized: `RuleIndex` matches functions to rules once (when functions or rules change), keeps
each schedule entry's active intervals for a week ahead (cron is expanded once per week, not per tick), and
caches the floor of every function until the next interval boundary.
"""

from __future__ import annotations

import calendar
import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from prewarmer.units import parse_duration

#: Longest window a schedule entry may hold (a year): longer is a standing floor, better said as "* * * * *".
MAX_DURATION_S = 366 * 86400.0


class ScheduleError(ValueError):
    """A bad rules file: the message names the file and the field (`rules.yaml: rules[0].schedule[1].cron: ...`)."""


# ---------------------------------------------------------------------------------------------------- cron
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
# (name, low, high, names)
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
           ("day of week", 0, 7, _DAYS))


@dataclass(frozen=True)
class Cron:
    """A standard 5-field cron expression (minute hour day-of-month month day-of-week), as Kubernetes CronJobs
    take it: numbers, names (jan, mon), `*`, ranges `a-b`, steps `*/n` `a-b/n` `a/n`, lists, and the macros
    @hourly @daily @weekly @monthly @yearly. When both day fields are restricted a day matches either
    (Vixie cron); 7 is Sunday too."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    @classmethod
    def parse(cls, text: str) -> Cron:
        expr = _MACROS.get(text.strip().lower(), text)
        parts = expr.split()
        if len(parts) != 5:
            raise ValueError(f"{text!r}: expected 5 fields (minute hour day-of-month month day-of-week) or a macro "
                             f"like @daily, got {len(parts)}")
        sets = [_parse_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(text=text, minutes=tuple(sorted(sets[0])), hours=tuple(sorted(sets[1])), days=frozenset(sets[2]),
                   months=frozenset(sets[3]), weekdays=weekdays, any_day=parts[2].startswith(("*", "?")),
                   any_weekday=parts[4].startswith(("*", "?")))

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        in_month, in_week = d.day in self.days, (d.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def fires(self, zone: ZoneInfo, start: float, stop: float) -> np.ndarray:
        """Unix times in [start, stop] at which the expression fires, read in `zone` (a local time skipped by a
        daylight-saving change fires at the instant zoneinfo gives it with fold=0; a repeated one fires once)."""
        first = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
        last = datetime.fromtimestamp(stop, zone).date()
        minutes = np.asarray(self.minutes, np.float64) * 60.0
        out = []
        d = first
        while d <= last:
            if self.day_matches(d):
                for h in self.hours:
                    # Offsets change on the hour in every zone that matters here: one conversion per hour.
                    base = datetime(d.year, d.month, d.day, h, tzinfo=zone).timestamp()
                    out.append(base + minutes)
            d += timedelta(days=1)
        if not out:
            return np.empty(0)
        t = np.unique(np.concatenate(out))
        return t[(t >= start) & (t <= stop)]


def _parse_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    out: set[int] = set()
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name} field {text!r}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if rng in ("*", "?"):
            a, b = low, high
        elif "-" in rng:
            x, _, y = rng.partition("-")
            a, b = _value(x, name, low, high, names, text), _value(y, name, low, high, names, text)
            if a > b:
                raise ValueError(f"{name} field {text!r}: range {rng!r} runs backwards")
        else:
            a = _value(rng, name, low, high, names, text)
            b = high if step_text else a
        out.update(range(a, b + 1, step))
    return out


def _value(token: str, name: str, low: int, high: int, names: dict[str, int], field_text: str) -> int:
    t = token.strip().lower()
    if t in names:
        return names[t]
    if not t.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise ValueError(f"{name} field {field_text!r}: {token!r} is not a number{known}")
    v = int(t)
    if not low <= v <= high:
        raise ValueError(f"{name} field {field_text!r}: {v} is out of range {low}-{high}")
    return v


def zone_of(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. Europe/Berlin, UTC); ValueError naming it if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as UTC or Europe/Berlin)") from None


# ---------------------------------------------------------------------------------------------------- the format
class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Selector(_Spec):
    """Functions whose name matches any of `match_names` (fnmatch globs; none given: any name) and whose labels
    include every pair of `match_labels` (live only: trace functions have no labels). `{}` selects all."""

    match_names: list[str] = Field(default_factory=list)
    match_labels: dict[str, str] = Field(default_factory=dict)

    def matches(self, name: str, labels: dict[str, str]) -> bool:
        if self.match_names and not any(fnmatch.fnmatchcase(name, p) for p in self.match_names):
            return False
        return all(labels.get(k) == v for k, v in self.match_labels.items())


class WarmFloor(_Spec):
    """From each time `cron` fires (in `time_zone`) for `duration`: at least `min_warm` instances."""

    cron: str
    duration: str | float
    time_zone: str = "UTC"
    min_warm: int = Field(ge=0, le=100_000)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        Cron.parse(v)
        return v

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone_of(v)
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str | float) -> str | float:
        s = parse_duration(v)
        if not 0 < s <= MAX_DURATION_S:
            raise ValueError(f"{v!r} must be > 0 and at most 366d")
        return v

    @property
    def duration_s(self) -> float:
        return parse_duration(self.duration)


class ColdStartTarget(_Spec):
    """The share of a function's invocations that may start cold, in percent (over the last hour)."""

    cold_start_pct: float = Field(gt=0, le=100)


class IdleBudget(_Spec):
    """The idle instance memory a function may hold, GB-seconds per hour (e.g. 1800 = half a GB all the time)."""

    idle_gb_seconds_per_hour: float = Field(gt=0)


class FunctionRule(_Spec):
    selector: Selector
    schedule: list[WarmFloor] = Field(default_factory=list)
    target: ColdStartTarget | None = None
    budget: IdleBudget | None = None

    @model_validator(mode="after")
    def _says_something(self) -> FunctionRule:
        if not self.schedule and self.target is None and self.budget is None:
            raise ValueError("a rule needs a schedule, a target or a budget")
        return self


class RuleSet(_Spec):
    rules: list[FunctionRule] = Field(default_factory=list)

    def by_labels(self) -> list[int]:
        """Rules that select by labels (they match nothing in replay, whose functions have none)."""
        return [i for i, r in enumerate(self.rules) if r.selector.match_labels]


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_problem(err: Mapping[str, Any]) -> str:
    """One pydantic error as `field.path[0].name: problem` (`unknown field` for a key the schema forbids)."""
    msg = "unknown field" if err["type"] == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")
    where = _where(tuple(err["loc"]))
    return f"{where}: {msg}" if where else msg


def parse_rules(doc: object, source: str = "rules") -> RuleSet:
    """A RuleSet from decoded YAML/JSON; ScheduleError `source: field.path: problem` on bad input."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ScheduleError(f"{source}: expected a mapping with 'rules', got {type(doc).__name__}")
    try:
        return RuleSet.model_validate(doc)
    except ValidationError as e:
        raise ScheduleError(f"{source}: {field_problem(e.errors()[0])}") from None


def load_rules(path: str | Path) -> RuleSet:
    """The rules of a YAML or JSON file; ScheduleError naming the file, the line (syntax) or the field."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleError(f"{path}: cannot read: {e.strerror if isinstance(e, OSError) else e}") from None
    try:
        doc = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ScheduleError(f"{path}{line}: not YAML or JSON: {getattr(e, 'problem', None) or e}") from None
    return parse_rules(doc, str(path))


# ---------------------------------------------------------------------------------------------------- evaluation
def _select_all(selectors: list[Selector], names: list[str], labels: list[dict[str, str]]) -> list[np.ndarray]:
    """The functions each selector takes (sorted indices), as `Selector.matches` says, without a Python call per
    function and rule: a glob's literal prefix narrows the names at numpy speed (most are `prefix*`), its regular
    expression decides among those, and labels are looked up by (key, value)."""
    n = len(names)
    arr = np.array(names, dtype=str) if n else np.zeros(0, dtype=str)
    by_label: dict[tuple[str, str], set[int]] = {}
    if any(s.match_labels for s in selectors):
        for i, lab in enumerate(labels):
            for kv in lab.items():
                by_label.setdefault(kv, set()).add(i)
    out = []
    for sel in selectors:
        if sel.match_names:
            hit = np.zeros(n, bool)
            for pattern in sel.match_names:
                prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
                cand = np.flatnonzero(np.char.startswith(arr, prefix)) if prefix else np.arange(n)
                if prefix == pattern:
                    cand = cand[arr[cand] == pattern]
                elif pattern != prefix + "*":
                    rx = re.compile(fnmatch.translate(pattern))
                    cand = cand[[rx.match(names[i]) is not None for i in cand]] if len(cand) else cand
                hit[cand] = True
        else:
            hit = np.ones(n, bool)
        for kv in sel.match_labels.items():
            keep = np.zeros(n, bool)
            keep[list(by_label.get(kv, ()))] = True
            hit &= keep
        out.append(np.flatnonzero(hit).astype(np.int64))
    return out


class _Entry:
    """One schedule entry's active intervals [start - lead, fire + duration), merged, for a window of time."""

    WINDOW_S = 7 * 86400.0

    def __init__(self, floor: WarmFloor, lead_s: float) -> None:
        self.cron, self.zone = Cron.parse(floor.cron), zone_of(floor.time_zone)
        self.duration, self.lead, self.min_warm = floor.duration_s, lead_s, int(floor.min_warm)
        self.w0 = self.w1 = -math.inf
        self.starts = self.ends = np.empty(0)

    def _cover(self, t: float) -> None:
        self.w0, self.w1 = t, t + max(self.WINDOW_S, 2 * self.duration)
        fires = self.cron.fires(self.zone, self.w0 - self.duration, self.w1 + self.lead)
        starts, ends = fires - self.lead, fires + self.duration
        if len(starts) > 1:  # merge overlapping windows
            new = np.concatenate([[True], starts[1:] > np.maximum.accumulate(ends)[:-1]])
            starts, ends = starts[new], np.maximum.reduceat(ends, np.flatnonzero(new))
        self.starts, self.ends = starts, ends

    def state(self, t: float) -> tuple[bool, float]:
        """(active at t, the next time that may change)."""
        if not self.w0 <= t < self.w1:
            self._cover(t)
        k = int(np.searchsorted(self.starts, t, side="right")) - 1
        if k >= 0 and t < self.ends[k]:
            return True, min(float(self.ends[k]), self.w1)
        nxt = float(self.starts[k + 1]) if k + 1 < len(self.starts) else math.inf
        return False, min(nxt, self.w1)


class RuleIndex:
    """A RuleSet bound to a table of functions: each function's floor at a time, and its target and budget.

    `lead_s`: a window's floor is in force from `lead_s` before it opens (instances are started in time)."""

    def __init__(self, rules: RuleSet, lead_s: float = 0.0) -> None:
        self.rules, self.lead_s = rules, lead_s
        self.entries = [[_Entry(f, lead_s) for f in r.schedule] for r in rules.rules]
        self.bind([], [])

    def bind(self, names: list[str], labels: list[dict[str, str]] | None = None) -> None:
        """Match the functions (names, and labels where known) to the rules; the strictest target and budget
        of the rules matching a function apply (NaN: none)."""
        n = len(names)
        labels = labels if labels and len(labels) == n else [{}] * n
        self.n = n
        self.members = _select_all([r.selector for r in self.rules.rules], names, labels)
        self.target_pct = np.full(n, np.nan)
        self.budget_gb_s_per_h = np.full(n, np.nan)
        for r, idx in zip(self.rules.rules, self.members, strict=True):
            if r.target is not None:
                self.target_pct[idx] = np.fmin(self.target_pct[idx], r.target.cold_start_pct)
            if r.budget is not None:
                self.budget_gb_s_per_h[idx] = np.fmin(self.budget_gb_s_per_h[idx], r.budget.idle_gb_seconds_per_hour)
        self.scheduled = np.zeros(n, bool)
        for r, idx in zip(self.rules.rules, self.members, strict=True):
            if r.schedule:
                self.scheduled[idx] = True
        self._valid = (math.inf, -math.inf)  # [from, until) of the cached floor
        self._floor = np.zeros(n, np.int64)

    def floor(self, t: float) -> np.ndarray:
        """Each function's warm floor at Unix time `t` (0: none): the largest `min_warm` of the entries of its
        rules whose window (with the lead) is open. Cached until the next window opens or closes."""
        lo, hi = self._valid
        if lo <= t < hi:
            return self._floor
        out = np.zeros(self.n, np.int64)
        until = math.inf
        for entries, idx in zip(self.entries, self.members, strict=True):
            value = 0
            for e in entries:
                active, nxt = e.state(t)
                until = min(until, nxt)
                if active:
                    value = max(value, e.min_warm)
            if value and len(idx):
                out[idx] = np.maximum(out[idx], value)
        self._floor, self._valid = out, (t, until)
        return out
