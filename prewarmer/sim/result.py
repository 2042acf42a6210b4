"""Outcome of a replay: the configuration it ran with, raw counters, and the BENCHMARKS.md metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from prewarmer.sim import engine as E
from prewarmer.sim.startup import StartupModel
from prewarmer.sim.state import SimState
from prewarmer.workloads.base import Workload


class ReplayConfig(BaseModel):
    """Replay model parameters (BENCHMARKS.md defaults); all of them go into the report."""

    seed: int = 0
    startup: StartupModel = Field(default_factory=StartupModel)
    container_concurrency: int = Field(1, ge=1)
    memory_cap_gb: float | None = Field(None, gt=0)
    queue_deadline_s: float | None = Field(None, gt=0)
    tenant_quota: float | None = Field(None, gt=0, le=1)  # share of the memory cap one tenant may hold
    max_instances: int | None = Field(None, ge=1)  # per function
    sample_s: float = Field(60.0, gt=0)
    chunk_s: float = Field(3600.0, gt=0)
    top_functions: int = Field(6, ge=0)

    model_config = {"arbitrary_types_allowed": True}

    def describe(self) -> dict:
        return {"seed": self.seed, "arrivals": "uniform within each minute (count traces)",
                "startup": self.startup.describe(), "container_concurrency": self.container_concurrency,
                "memory_cap_gb": self.memory_cap_gb, "queue_deadline_s": self.queue_deadline_s,
                "tenant_quota": self.tenant_quota, "max_instances": self.max_instances,
                "instance_selection": "most recently used idle instance",
                "memory": "app AverageAllocatedMb held for the instance's whole life"}


#: The engine's per-function counters summed over the fleet at every sample (`SimResult.counts_total`), in order.
SAMPLED_COUNTS = [E.F_ARRIVALS, E.F_COLD, E.F_TIMEOUT]
SAMPLED_NAMES = ("arrivals", "cold_starts", "timed_out")


@dataclass
class SimResult:
    """Raw outcome of one replay (possibly merged from shards); `metrics()` turns it into the report."""

    functions: np.ndarray  # global function indices, aligned with the per-function arrays
    fi: np.ndarray
    fs: np.ndarray
    lat_hist: np.ndarray
    horizon_s: float
    t_final: float
    sample_t: np.ndarray
    interval_peak_gb: np.ndarray  # peak memory within each sample interval
    alive_total: np.ndarray  # instances alive at each sample
    top: np.ndarray  # global indices of the sampled busiest functions
    alive_top: np.ndarray  # (samples, len(top))
    events: list[str] = field(default_factory=list)
    #: (samples, len(SAMPLED_COUNTS)) the fleet's arrivals, cold starts and timeouts so far at each sample.
    counts_total: np.ndarray = field(default_factory=lambda: np.zeros((0, len(SAMPLED_COUNTS)), np.int64))
    #: The shard's simulator, kept (parallel replay only) so that it can be run on to the merged end.
    state: SimState | None = field(default=None, repr=False, compare=False)

    def extend_to(self, t_end: float) -> None:
        """Run this shard on to t_end, a later shard's end: no arrivals, but instances still expire
        (or get prewarmed) and hold memory, exactly as in a single-process run that ends at t_end."""
        st = self.state
        if st is None or t_end <= self.t_final:
            return
        none_t = np.empty(0)
        st.advance(t_end, none_t, np.empty(0, np.int64), none_t, 0)
        st.touch_all(t_end)
        self.fi, self.fs, self.t_final = st.fi.copy(), st.fs.copy(), t_end
        self.interval_peak_gb[-1] = max(self.interval_peak_gb[-1], st.take_peak_memory_gb())

    # ------------------------------------------------------------------ merging shards
    @staticmethod
    def merge(parts: list[SimResult]) -> SimResult:
        if len(parts) == 1:
            return parts[0]
        top = np.concatenate([p.top for p in parts])
        return SimResult(
            functions=np.concatenate([p.functions for p in parts]),
            fi=np.concatenate([p.fi for p in parts]), fs=np.concatenate([p.fs for p in parts]),
            lat_hist=np.sum([p.lat_hist for p in parts], axis=0), horizon_s=parts[0].horizon_s,
            t_final=max(p.t_final for p in parts), sample_t=parts[0].sample_t,
            interval_peak_gb=np.sum([p.interval_peak_gb for p in parts], axis=0),
            alive_total=np.sum([p.alive_total for p in parts], axis=0),
            top=top, alive_top=np.concatenate([p.alive_top for p in parts], axis=1),
            counts_total=np.sum([p.counts_total for p in parts], axis=0),
            events=[e for p in parts for e in p.events])

    # ------------------------------------------------------------------ metrics
    def latency_percentile_ms(self, q: float) -> float:
        total = self.lat_hist.sum()
        if total == 0:
            return float("nan")
        b = int(np.searchsorted(np.cumsum(self.lat_hist), q * total, side="left"))
        lo = E.LAT_MIN_EXP + b / E.LAT_BINS_PER_DECADE
        return float(10 ** (lo + 0.5 / E.LAT_BINS_PER_DECADE))

    def metrics(self) -> dict[str, float | int]:
        fi, fs = self.fi, self.fs
        inv = int(fi[:, E.F_ARRIVALS].sum())
        cold = int(fi[:, E.F_COLD].sum())
        invoked = fi[:, E.F_ARRIVALS] > 0
        pct = 100.0 * fi[invoked, E.F_COLD] / fi[invoked, E.F_ARRIVALS]
        return {
            "invocations": inv,
            "cold_starts": cold,
            "cold_start_rate": cold / inv if inv else 0.0,
            "p75_function_cold_start_pct": float(np.percentile(pct, 75)) if len(pct) else 0.0,
            "wasted_gb_s": float(fs[:, E.S_WASTE].sum()),
            "busy_gb_s": float(fs[:, E.S_BUSY].sum()),
            "p50_latency_ms": self.latency_percentile_ms(0.50),
            "p99_latency_ms": self.latency_percentile_ms(0.99),
            "throughput_rps": int(fi[:, E.F_DONE].sum()) / self.horizon_s if self.horizon_s else 0.0,
            "timed_out": int(fi[:, E.F_TIMEOUT].sum()),
            "peak_memory_gb": float(self.interval_peak_gb.max()) if len(self.interval_peak_gb) else 0.0,
        }


def pick_top(workload: Workload, idx: np.ndarray, k: int) -> np.ndarray:
    """The k busiest of the functions `idx` (their instance counts are sampled for the report): by their
    per-minute counts, or the expected invocations of a workload generated while it replays."""
    if k <= 0:
        return np.empty(0, np.int64)
    per = getattr(workload, "counts", None)
    if per is not None:
        totals = per[idx].sum(axis=1)
    elif hasattr(workload, "function_weights"):
        totals = np.asarray(workload.function_weights())[idx]
    else:
        return idx[:k]
    return idx[np.argsort(-totals, kind="stable")[:k]]
