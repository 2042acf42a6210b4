"""The gateway's `/metrics` as a load test reads it: the Prometheus text parsed into totals and per-function
figures (`parse_gateway_metrics`: idle and busy GB-s, cold starts, workers by state), one read (`scrape`),
and a thread sampling it every second during a run (`Sampler`) for the warm-instance time series.
"""

from __future__ import annotations

import threading
import time

from prewarmer.load.services import http_get


def parse_gateway_metrics(text: str) -> dict:
    """Totals and per-function figures of the gateway's Prometheus text (function_name is name.namespace)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"idle_gb_s": 0.0, "busy_gb_s": 0.0, "cold_starts": 0.0, "workers": {"starting": 0, "idle": 0, "busy": 0},
           "functions": {}}
    wanted = {"prewarmer_gateway_idle_gb_seconds_total": "idle_gb_s",
              "prewarmer_gateway_busy_gb_seconds_total": "busy_gb_s",
              "prewarmer_gateway_cold_starts_total": "cold_starts"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            fn = s.labels.get("function_name", "").rsplit(".", 1)[0]
            per = out["functions"].setdefault(fn, {"idle_gb_s": 0.0, "busy_gb_s": 0.0, "cold_starts": 0.0,
                                                   "warm": 0, "starting": 0}) if fn else None
            if s.name in wanted:
                out[wanted[s.name]] += s.value
                if per is not None:
                    per[wanted[s.name]] += s.value
            elif s.name == "prewarmer_gateway_workers":
                state = s.labels.get("state", "")
                if state in out["workers"]:
                    out["workers"][state] += int(s.value)
                if per is not None:
                    per["warm" if state in ("idle", "busy") else "starting"] += int(s.value)
    out["functions"] = {k: v for k, v in out["functions"].items() if k}
    return out


def scrape(gateway: str) -> dict | None:
    status, body = http_get(f"{gateway}/metrics", timeout=5)
    if status != 200:
        return None
    try:
        return parse_gateway_metrics(body.decode())
    except ValueError:
        return None


class Sampler(threading.Thread):
    """Samples the gateway's /metrics every `interval` seconds: warm/starting instances, cold starts, GB-s."""

    def __init__(self, gateway: str, interval: float = 1.0) -> None:
        super().__init__(name="metrics-sampler", daemon=True)
        self.gateway, self.interval = gateway, interval
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            m = scrape(self.gateway)
            if m is not None:
                w = m["workers"]
                self.samples.append({"t": round(time.monotonic() - self.t0, 3), "unix": time.time(),
                                     "warm": w["idle"] + w["busy"], "busy": w["busy"], "starting": w["starting"],
                                     "cold_starts": m["cold_starts"],
                                     "idle_gb_s": m["idle_gb_s"], "busy_gb_s": m["busy_gb_s"],
                                     "functions": {name: {k: f[k] for k in ("idle_gb_s", "busy_gb_s", "cold_starts")}
                                                   for name, f in m["functions"].items()}})
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)

    def latest(self) -> dict | None:
        return self.samples[-1] if self.samples else None

    def at(self, unix: float) -> dict | None:
        """The first sample taken at or after `unix` (None if none was)."""
        return next((x for x in self.samples if x["unix"] >= unix), None)
