"""What an agent sees at a control tick: per-function arrays, identical in replay and in the sidecar."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Observation:
    """State of every function at `now`; counts are deltas since the previous tick.

    Arrays are indexed by function (the order of the workload's FunctionTable). `idle_times`
    lists the idle gaps that ended during the tick, as (function index, seconds from the
    function's last completion to the next arrival), the input of idle-time histograms.
    """

    now: float
    dt: float
    arrivals: np.ndarray  # int64
    cold_starts: np.ndarray  # int64
    completions: np.ndarray  # int64
    timed_out: np.ndarray  # int64
    alive: np.ndarray  # instances holding memory: starting + idle + busy
    starting: np.ndarray
    busy: np.ndarray  # instances executing at least one request
    idle_warm: np.ndarray  # ready instances executing nothing
    in_flight: np.ndarray  # requests in the system now (waiting or executing)
    peak_in_flight: np.ndarray  # most requests in the system at once during the tick: instances it needed
    concurrency: np.ndarray  # float64 time-averaged requests in the system over the tick
    wasted_gb_s: np.ndarray  # float64 over the tick
    busy_gb_s: np.ndarray  # float64 over the tick
    memory_mb: np.ndarray  # float64 profile
    idle_time_func: np.ndarray  # int32
    idle_time_s: np.ndarray  # float64
    memory_used_gb: float = 0.0
    memory_cap_gb: float = float("inf")
    startup_s: np.ndarray | None = None  # float64 profile: median start-up time of a new instance
    epoch_s: float = 0.0  # trace time of now=0 (a slice starting at minute 720 has 43200), for time of day

    @property
    def n_functions(self) -> int:
        return len(self.arrivals)
