"""The invocation event: Redis Stream entries that report invocations, emitted by the gateway.

An invocation is reported either by one entry when it ends (`phase` `done`, the default, and all of schema
version 1), or by two: `start` when it arrives at the gateway, so that consumers count it (and the instance it
keeps busy) while it runs, and `end` with its outcome when it completes. The `end` entry carries every field a
`done` entry does, and the same `ts` as its `start` (that is how the two are paired): a consumer that never
saw the `start` (dead-lettered, or trimmed away) treats an `end` as a `done`.

Entry fields (all strings, as Redis stores them):

| field         | meaning                                                        | example          |
|---------------|----------------------------------------------------------------|------------------|
| `v`           | schema version, "2" (version "1" entries are read as `done`)   | `2`              |
| `phase`       | `start`, `end` or `done` (default); version 2 only             | `start`          |
| `function`    | function name (non-empty)                                      | `echo`           |
| `namespace`   | platform namespace                                             | `openfaas-fn`    |
| `ts`          | arrival time at the gateway, Unix seconds (float)              | `1732412345.120` |
| `duration_ms` | execution time in the instance, excluding start-up (>= 0)      | `12.5`           |
| `startup_ms`  | time the request waited for a new instance (0 when warm, >= 0) | `850.0`          |
| `wait_ms`     | arrival to the start of execution (>= `startup_ms`; optional)  | `4012.0`         |
| `cold`        | `1` when the request started a new instance, else `0`          | `0`              |
| `status`      | HTTP status returned to the caller (100..599)                  | `200`            |
| `instance`    | id of the instance (worker, pod) that served it                | `echo-3`         |

A `start` entry has `v`, `phase`, `function`, `namespace` and `ts` only: its outcome is not known yet. The
other fields are required in `end` and `done` entries (`namespace`, `startup_ms`, `wait_ms` and `instance` have
defaults).

`wait_ms` is how a request queued at the platform's bound on instances (the gateway's `--max-workers`) is told
apart: warm (`startup_ms` 0), yet in the system for its wait as well as its execution. Consumers end it at
`ts + wait_ms + duration_ms`, as the simulator does; without it (producers of before the field) they assume it
waited for its start-up only, which undercounts the requests in flight at once during a queued burst.

`InvocationEvent` is the schema (pydantic); producers build events with it. The consumer decodes
whole batches with `decode_batch`, a hand-written fast path that accepts exactly what the schema
accepts and hands anything else to the schema for a precise error (which goes to the dead-letter
stream with the entry).

`ts` must also not be later than the Redis clock plus an allowed skew (`max_ts`, given by the consumer):
an event from the future (a wrong clock, or a forged entry dated in the year 3000) is refused rather than
fed to the policy. An entry refused for any reason is never lost: it goes to the dead-letter stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = "2"
_VERSIONS = ("1", "2")  # read; version 1 is version 2 without `phase` (every entry `done`)
PHASES = ("done", "start", "end")  # the codes of `DecodedBatch.phase` are the indices
PHASE_DONE, PHASE_START, PHASE_END = range(3)
_PHASE_CODE = {b"done": PHASE_DONE, b"start": PHASE_START, b"end": PHASE_END}
_OUTCOME = ("duration_ms", "startup_ms", "wait_ms", "cold", "status", "instance")  # absent from a `start` entry


class InvocationEvent(BaseModel):
    model_config = {"frozen": True, "extra": "forbid"}

    v: str = SCHEMA_VERSION
    phase: Literal["done", "start", "end"] = "done"
    function: str = Field(min_length=1, max_length=253)
    namespace: str = Field(default="default", max_length=253)
    ts: float = Field(gt=0, allow_inf_nan=False)
    duration_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    startup_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    wait_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # None: startup_ms (see the table)
    cold: bool | None = None
    status: int | None = Field(default=None, ge=100, le=599)
    instance: str = Field(default="", max_length=253)

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: str) -> str:
        if v not in _VERSIONS:
            raise ValueError(f"unknown schema version {v!r} (this build reads {', '.join(map(repr, _VERSIONS))})")
        return v

    @model_validator(mode="after")
    def _fields_of_phase(self) -> InvocationEvent:
        if "phase" in self.model_fields_set and self.v == "1":
            raise EventError("phase", "not in schema version 1 (use v=2)")
        if self.phase == "start":
            extra = [k for k in _OUTCOME if k in self.model_fields_set]
            if extra:
                raise EventError(extra[0], "not allowed in a start entry (its outcome is reported by the end entry)")
        else:
            missing = [k for k in ("duration_ms", "cold", "status") if getattr(self, k) is None]
            if missing:
                raise EventError(missing[0], f"Field required (in a {self.phase} entry)")
            if self.wait_ms is not None and self.wait_ms < self.startup_ms:
                raise EventError("wait_ms", f"{self.wait_ms!r} is less than startup_ms {self.startup_ms!r} (the "
                                            "start-up is part of the wait)")
        return self

    @classmethod
    def start(cls, function: str, namespace: str, ts: float) -> InvocationEvent:
        """The entry reporting an invocation as it arrives."""
        return cls(phase="start", function=function, namespace=namespace, ts=ts)

    def to_fields(self) -> dict[str, str]:
        """The Redis Stream entry for this event."""
        head = {"v": self.v, "phase": self.phase} if self.v != "1" else {"v": self.v}
        head.update(function=self.function, namespace=self.namespace, ts=repr(self.ts))
        if self.phase == "start":
            return head
        out = {**head, "duration_ms": repr(self.duration_ms), "startup_ms": repr(self.startup_ms),
               "cold": "1" if self.cold else "0", "status": str(self.status), "instance": self.instance}
        if self.wait_ms is not None:
            out["wait_ms"] = repr(self.wait_ms)
        return out

    @classmethod
    def from_fields(cls, fields: dict) -> InvocationEvent:
        """Validate one stream entry (bytes or str keys and values); raises EventError naming the field."""
        try:
            d = {_s(k): _s(v) for k, v in fields.items()}
        except UnicodeDecodeError as e:
            raise EventError("(entry)", f"not UTF-8: {e}") from None
        if "cold" in d and d["cold"] not in ("0", "1", "true", "false"):
            raise EventError("cold", f"must be 0 or 1, got {d['cold']!r}")
        try:
            return cls.model_validate(d)
        except EventError:
            raise
        except ValidationError as e:
            err = e.errors()[0]
            inner = (err.get("ctx") or {}).get("error")
            if isinstance(inner, EventError):  # raised by `_fields_of_phase`
                raise EventError(inner.field, inner.reason) from None
            name = ".".join(str(p) for p in err["loc"]) or "(entry)"
            raise EventError(name, err["msg"]) from None


class EventError(ValueError):
    """A malformed stream entry; `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class DecodedBatch:
    """Columns of the well-formed entries of one batch, and the rejected ones with their errors."""

    ids: list[bytes] = field(default_factory=list)
    phase: list[int] = field(default_factory=list)  # PHASE_DONE / PHASE_START / PHASE_END
    function: list[str] = field(default_factory=list)
    namespace: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    duration_ms: list[float] = field(default_factory=list)
    startup_ms: list[float] = field(default_factory=list)
    wait_ms: list[float] = field(default_factory=list)  # startup_ms where the entry has none
    cold: list[bool] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    instance: list[str] = field(default_factory=list)
    rejected: list[tuple[bytes, dict, EventError]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


_KNOWN = frozenset((b"v", b"phase", b"function", b"namespace", b"ts", b"duration_ms", b"startup_ms", b"wait_ms",
                    b"cold", b"status", b"instance"))
_KNOWN_START = frozenset((b"v", b"phase", b"function", b"namespace", b"ts"))


def decode_batch(entries: list[tuple[bytes, dict[bytes, bytes]]], max_ts: float | None = None,
                 now: float | None = None) -> DecodedBatch:
    """Decode XREADGROUP entries (bytes keys and values) into columns; malformed entries are set aside.

    The fast path is plain Python per entry (about 1 µs); only an entry it refuses goes through
    the pydantic schema, which produces the error message for the dead-letter stream. With `max_ts`
    (the Redis clock `now` plus the allowed skew), an entry whose `ts` is later is refused too.
    """
    out = DecodedBatch()
    limit = math.inf if max_ts is None else max_ts
    for entry_id, f in entries:
        try:
            v = f.get(b"v", b"1")
            phase = _PHASE_CODE[f[b"phase"]] if b"phase" in f and v == b"2" else PHASE_DONE
            fn = f[b"function"].decode()
            ts = float(f[b"ts"])
            if phase == PHASE_START:
                dur = st = wait = 0.0
                c, status, inst = b"0", 0, ""
                if not _KNOWN_START.issuperset(f):
                    raise ValueError
            else:
                dur = float(f[b"duration_ms"])
                st = float(f.get(b"startup_ms", b"0"))
                wait = float(f[b"wait_ms"]) if b"wait_ms" in f else st
                c = f[b"cold"]
                status = int(f[b"status"])
                inst = f.get(b"instance", b"").decode()
                if (not dur >= 0 or not st >= 0 or math.isinf(dur) or math.isinf(st) or not wait >= st
                        or math.isinf(wait) or c not in (b"0", b"1")
                        or not 100 <= status <= 599 or len(inst) > 253 or not _KNOWN.issuperset(f)):
                    raise ValueError
            if not fn or len(fn) > 253 or not ts > 0 or math.isinf(ts) or v not in (b"1", b"2") or \
                    (v == b"1" and b"phase" in f):
                raise ValueError
            ns = f.get(b"namespace", b"default").decode()
            if len(ns) > 253:
                raise ValueError
        except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError):
            try:
                ev = InvocationEvent.from_fields(f)
            except EventError as e:
                out.rejected.append((entry_id, f, e))
                continue
            phase = PHASES.index(ev.phase)
            fn, ns, ts, st, inst = ev.function, ev.namespace, ev.ts, ev.startup_ms, ev.instance
            wait = st if ev.wait_ms is None else ev.wait_ms
            dur, status = ev.duration_ms or 0.0, ev.status or 0
            c = b"1" if ev.cold else b"0"
        if ts > limit:
            out.rejected.append((entry_id, f, _future_error(ts, limit, now)))
            continue
        out.ids.append(entry_id)
        out.phase.append(phase)
        out.function.append(fn)
        out.namespace.append(ns)
        out.ts.append(ts)
        out.duration_ms.append(dur)
        out.startup_ms.append(st)
        out.wait_ms.append(wait)
        out.cold.append(c == b"1")
        out.status.append(status)
        out.instance.append(inst)
    return out


def _future_error(ts: float, max_ts: float, now: float | None) -> EventError:
    if now is None:
        return EventError("ts", f"{ts!r} is later than the latest accepted time {max_ts!r}")
    return EventError("ts", f"{ts!r} is {ts - now:.6g} s ahead of the Redis clock ({now:.3f}); at most "
                            f"{max_ts - now:.6g} s of clock skew is accepted")


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
