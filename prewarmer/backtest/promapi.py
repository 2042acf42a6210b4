"""A small client of the Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`) on urllib.

Every failure becomes a `PrometheusError` with one line saying what went wrong: the server cannot be
reached, it is not a Prometheus API, or it rejected the query (Prometheus' own error message is kept).
Range queries longer than Prometheus' 11,000-points-per-series limit are split into several requests
and the pieces joined by series.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

#: Prometheus refuses range queries with more than 11,000 points per series; stay below it.
MAX_POINTS_PER_QUERY = 10_000


class PrometheusError(Exception):
    """A failed Prometheus request, as one line."""


class PrometheusUnreachable(PrometheusError):
    """No answer from the server (refused, timed out, DNS)."""


class PrometheusQueryError(PrometheusError):
    """The server answered with an error (bad PromQL, a limit, a timeout of the query)."""


@dataclass
class Series:
    """One series of a range query: its labels and its samples (unix seconds, value), time-ordered."""

    labels: dict[str, str]
    t: list[float]
    v: list[float]


class PrometheusClient:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PrometheusError(f"--prometheus {url!r} is not an http(s) URL, e.g. http://127.0.0.1:9090")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.warnings: list[str] = []

    def _call(self, endpoint: str, params: dict[str, str], expr: str) -> dict:
        """POST a query (form-encoded: long PromQL fits) and return its `data`."""
        body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/{endpoint}", data=body, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise PrometheusUnreachable(f"cannot reach Prometheus at {self.url}: {reason}") from None
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            head = raw[:80].decode(errors="replace").strip().replace("\n", " ")
            raise PrometheusError(f"{self.url} did not answer as a Prometheus HTTP API (HTTP {status}, "
                                  f"body starts {head!r})") from None
        if not isinstance(doc, dict) or "status" not in doc:
            raise PrometheusError(f"{self.url} did not answer as a Prometheus HTTP API (no 'status' in the reply)")
        if doc["status"] != "success":
            kind = doc.get("errorType", "error")
            raise PrometheusQueryError(f"Prometheus rejected the query {expr!r}: {kind}: {doc.get('error', '?')}")
        for w in doc.get("warnings") or []:
            self.warnings.append(f"Prometheus warning for {expr!r}: {w}")
        return doc.get("data") or {}

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series (vector results only)."""
        data = self._call("query", {"query": expr, "time": _fmt(at)}, expr)
        if data.get("resultType") != "vector":
            raise PrometheusQueryError(f"the query {expr!r} gives a {data.get('resultType')}, expected an instant "
                                       "vector")
        return [(r["metric"], float(r["value"][1])) for r in data.get("result", [])]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """A range query from `start` to `end` (inclusive) every `step` seconds, split as needed."""
        if not step > 0:
            raise ValueError(f"step must be > 0, got {step}")
        n_steps = int(math.floor((end - start) / step + 1e-9))
        by_key: dict[tuple, Series] = {}
        k0 = 0
        while k0 <= n_steps:
            k1 = min(n_steps, k0 + MAX_POINTS_PER_QUERY - 1)
            data = self._call("query_range", {"query": expr, "start": _fmt(start + k0 * step),
                                              "end": _fmt(start + k1 * step), "step": _fmt(step)}, expr)
            if data.get("resultType") != "matrix":
                raise PrometheusQueryError(f"the query {expr!r} gives a {data.get('resultType')}, expected a range "
                                           "vector")
            for r in data.get("result", []):
                labels = r["metric"]
                key = tuple(sorted(labels.items()))
                s = by_key.get(key)
                if s is None:
                    s = by_key[key] = Series(labels, [], [])
                for ts, val in r["values"]:
                    s.t.append(float(ts))
                    s.v.append(float(val))
            k0 = k1 + 1
        return list(by_key.values())


def _fmt(x: float) -> str:
    return f"{x:.3f}"
