"""Per-request records of an open-loop run and their summary (the results JSON of a Locust run).

Locust keeps response times in rounded buckets; here every latency is kept, so percentiles are exact
(numpy's linear interpolation over all samples). Latencies count from the intended send time
(`timing`). Metric names follow BENCHMARKS.md: `invocations`, `cold_starts`, `cold_start_rate`,
`p50_latency_ms`, `p99_latency_ms`, `throughput_rps`, plus `errors` and the send lag.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prewarmer.load.timing import latency_ms, send_lag_ms

RESULTS_FORMAT = "prewarmer-loadtest-results"


def parse_ms(value: str | None, scale: float = 1.0) -> float:
    """A numeric timing header (X-Duration-Seconds, X-Prewarmer-Startup-Ms) times `scale`; NaN if absent or bad."""
    try:
        x = float(value) * scale if value is not None else math.nan
    except ValueError:
        return math.nan
    return x if math.isfinite(x) and x >= 0 else math.nan


def parse_cold(value: str | None) -> int:
    """X-Cold-Start header -> 1 cold, 0 warm, -1 absent or unreadable."""
    if value is None:
        return -1
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return 1
    if v in ("0", "false", "no"):
        return 0
    return -1


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _clean(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


class Recorder:
    """What happened to each request of a schedule: when it went out, when it finished, how."""

    def __init__(self, t: Sequence[float], func: Sequence[int], names: Sequence[str], duration_s: float,
                 meta: dict | None = None, metered_from_s: float = 0.0) -> None:
        # Requests sent before `metered_from_s` are a warm-up (`prewarmer loadtest --warmup`): recorded, kept in
        # `requests`, left out of every metric.
        self.metered_from_s = float(metered_from_s)
        self.t = np.asarray(t, np.float64)
        self.func = np.asarray(func, np.int32)
        self.names = list(names)
        self.duration_s = float(duration_s)
        self.meta = dict(meta or {})
        n = len(self.t)
        self.lag_ms = np.full(n, np.nan)
        self.latency_ms = np.full(n, np.nan)
        self.status = np.zeros(n, np.int32)  # HTTP status; 0 = no response (not sent, failed, unfinished)
        self.cold = np.full(n, -1, np.int8)
        # What the gateway said of each request: its time at the gateway and the start-up it waited for (ms).
        self.gateway_ms = np.full(n, np.nan)
        self.startup_ms = np.full(n, np.nan)
        self.wait_ms = np.full(n, np.nan)  # arrival to the start of execution (start-up or queue), as the gateway says
        self.errors: dict[int, str] = {}
        self.started_unix: float | None = None
        self.finished = False  # every request was sent and answered (or failed)

    def sent(self, i: int, intended_s: float, sent_s: float) -> None:
        self.lag_ms[i] = send_lag_ms(intended_s, sent_s)

    def done(self, i: int, intended_s: float, done_s: float, status: int, cold: int, error: str | None = None,
             gateway_ms: float = math.nan, startup_ms: float = math.nan, wait_ms: float = math.nan) -> None:
        self.latency_ms[i] = latency_ms(intended_s, done_s)
        self.status[i] = status
        self.cold[i] = cold
        self.gateway_ms[i] = gateway_ms
        self.startup_ms[i] = startup_ms
        self.wait_ms[i] = wait_ms
        if error:
            self.errors[i] = error

    @property
    def completed(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.latency_ms)))

    def summary(self, include_requests: bool = True) -> dict:
        metered = self.t >= self.metered_from_s
        sent = ~np.isnan(self.lag_ms) & metered
        done = ~np.isnan(self.latency_ms) & metered
        answered = (self.status > 0) & metered
        ok = answered & (self.status < 400)
        failed = sent & ~ok  # error status, transport failure, or no answer before the end
        invocations = int(answered.sum())
        cold_starts = int(((self.cold == 1) & metered).sum())
        lat = self.latency_ms[ok]
        lag = self.lag_ms[sent]
        ends = (self.t[done] * 1000.0 + self.latency_ms[done]) / 1000.0
        span = max(self.duration_s, float(ends.max()) if len(ends) else 0.0) - self.metered_from_s
        doc = {
            "format": RESULTS_FORMAT,
            "started_unix": self.started_unix,
            "duration_s": self.duration_s,
            "warmup_s": self.metered_from_s,
            "warmup_requests": int((~metered).sum()),
            "span_s": round(span, 3),
            "finished": self.finished,
            "scheduled": int(metered.sum()),
            "sent": int(sent.sum()),
            "invocations": invocations,
            "cold_starts": cold_starts,
            "cold_start_rate": cold_starts / invocations if invocations else 0.0,
            "cold_header_missing": int((answered & (self.cold < 0)).sum()),
            "errors": int(failed.sum()),
            "throughput_rps": float(ok.sum()) / span if span > 0 else 0.0,
            "p50_latency_ms": _clean(_pct(lat, 50)),
            "p90_latency_ms": _clean(_pct(lat, 90)),
            "p99_latency_ms": _clean(_pct(lat, 99)),
            "max_latency_ms": _clean(float(lat.max()) if len(lat) else None),
            "mean_latency_ms": _clean(float(lat.mean()) if len(lat) else None),
            "send_lag_p50_ms": _clean(_pct(lag, 50)),
            "send_lag_p99_ms": _clean(_pct(lag, 99)),
            "send_lag_max_ms": _clean(float(lag.max()) if len(lag) else None),
            "per_function": self._per_function(answered, ok, failed, metered),
            "error_samples": dict(list({str(i): e for i, e in self.errors.items()}.items())[:20]),
            "meta": self.meta,
        }
        if include_requests:
            doc["requests"] = {
                "names": self.names,
                "t": [round(float(x), 6) for x in self.t],
                "function": self.func.tolist(),
                "lag_ms": [_clean(x) for x in self.lag_ms],
                "latency_ms": [_clean(x) for x in self.latency_ms],
                "status": self.status.tolist(),
                "cold": self.cold.tolist(),
                "gateway_ms": [_clean(x) for x in self.gateway_ms],
                "startup_ms": [_clean(x) for x in self.startup_ms],
                "wait_ms": [_clean(x) for x in self.wait_ms],
            }
        return doc

    def _per_function(self, answered: np.ndarray, ok: np.ndarray, failed: np.ndarray, metered: np.ndarray) -> dict:
        out = {}
        for j, name in enumerate(self.names):
            mine = (self.func == j) & metered
            inv = int((answered & mine).sum())
            cold = int(((self.cold == 1) & mine).sum())
            lat = self.latency_ms[ok & mine]
            first = np.flatnonzero(answered & mine)
            out[name] = {
                "scheduled": int(mine.sum()),
                "invocations": inv,
                "cold_starts": cold,
                "cold_start_rate": cold / inv if inv else 0.0,
                "first_cold": bool(self.cold[first[0]] == 1) if len(first) else None,
                "errors": int((failed & mine).sum()),
                "p50_latency_ms": _clean(_pct(lat, 50)),
                "p99_latency_ms": _clean(_pct(lat, 99)),
                "max_latency_ms": _clean(float(lat.max()) if len(lat) else None),
            }
        return out


def write_json(path: str | Path, doc: dict) -> None:
    """Atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def per_second(results: dict, duration_s: float | None = None) -> dict[str, list[float]]:
    """Time series from a results document's requests: sent, completed and cold starts per second."""
    req = results["requests"]
    t = np.asarray(req["t"], np.float64)
    lat = np.array([np.nan if x is None else x for x in req["latency_ms"]], np.float64)
    cold = np.asarray(req["cold"])
    n = max(1, math.ceil(duration_s if duration_s is not None else results.get("span_s") or 1.0))
    done_t = t + np.nan_to_num(lat, nan=np.inf) / 1000.0
    bins = np.arange(n + 1, dtype=np.float64)
    sent = np.histogram(t, bins)[0]
    completed = np.histogram(done_t[np.isfinite(done_t)], bins)[0]
    colds = np.histogram(t[cold == 1], bins)[0]
    return {"t": bins[:-1].tolist(), "requests": sent.tolist(), "completed": completed.tolist(),
            "cold_starts": colds.tolist()}
