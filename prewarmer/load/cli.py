"""The `prewarmer loadtest` command line: its options (`add_loadtest_parser`, registered by `prewarmer.cli`)
and its entry point (`cmd_loadtest`), which runs `prewarmer.load.loadtest` and maps its failures to exit
codes: 2 for bad input, 1 for a failed process, 130 when interrupted (every process stopped first).
"""

from __future__ import annotations

import argparse
import sys

from prewarmer.load import schedule as sched_mod
from prewarmer.load.errors import LoadTestError, UsageError
from prewarmer.load.loadtest import loadtest
from prewarmer.load.processes import terminate_as_interrupt
from prewarmer.load.services import DEFAULT_MAX_WORKERS
from prewarmer.workloads.base import TraceError


def add_loadtest_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "loadtest", help="open-loop load test of the local gateway, with and without the prewarmer",
        description="Replay a trace slice (or the built-in pattern) open-loop with Locust against a local gateway "
                    "started for the run; --compare POLICY runs it twice (gateway alone, then with the sidecar) "
                    "and reports cold_start_rate, throughput_rps, p50/p99 latency, errors, wasted_gb_s and ratios.")
    g = p.add_argument_group("schedule (default: --workload synthetic)")
    g.add_argument("--trace", metavar="PATH", help="Azure 2019 directory (or day file) or Azure 2021 CSV")
    g.add_argument("--workload", metavar="NAME", choices=["synthetic", "azure-like"],
                   help="synthetic: periodic echo, Poisson cpu, bursts of io (60 s); azure-like: generated trace")
    g.add_argument("--schedule", metavar="FILE", help="a saved schedule (JSON / .npz) instead of building one")
    g.add_argument("--functions", metavar="SPEC", default=None,
                   help="auto[:N] (default auto:4: a periodic function, then the busiest that fit the rate bounds), "
                        "START:STOP or N (trace rows), or NAME,NAME,... (trace function names)")
    g.add_argument("--minutes", metavar="A:B", help="trace minutes [A, B) (default 0:30)")
    g.add_argument("--compress", metavar="FACTOR", type=float, default=None,
                   help="time compression: t_real = t_trace / FACTOR (default 30 for traces, 1 for synthetic)")
    g.add_argument("--duration", metavar="S", help="replay at most this long, real time (synthetic: its length, 60s); "
                                                  "with --warmup, the metered part")
    g.add_argument("--warmup", metavar="DURATION",
                   help="trace time played before --minutes, unmetered, to both runs (e.g. 30m: minutes A-30:A "
                        "before A:B): policies and the gateway start the metered window with history")
    g.add_argument("--heavy", action="store_true", help="include the heavy (PyTorch) function: seconds of cold start")
    g.add_argument("--max-rps", type=float, default=sched_mod.DEFAULT_MAX_TOTAL_RPS,
                   help=f"bound on the total request rate (default {sched_mod.DEFAULT_MAX_TOTAL_RPS:g})")
    g.add_argument("--max-function-rps", type=float, default=sched_mod.DEFAULT_MAX_FUNCTION_RPS,
                   help=f"auto selection skips functions above this rate "
                        f"(default {sched_mod.DEFAULT_MAX_FUNCTION_RPS:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of the arrivals (0)")
    g.add_argument("--save-schedule", metavar="FILE", help="also write the schedule here (for plain locust runs)")
    r = p.add_argument_group("runs")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--compare", metavar="POLICY", help="baseline run, then a run with the sidecar using POLICY")
    mode.add_argument("--policy", metavar="POLICY", help="one run with the sidecar using POLICY (no baseline)")
    r.add_argument("--gateway-keep-alive", metavar="S",
                   help="the gateway's idle keep-alive (default: 10 minutes of trace time, 600s / FACTOR, the "
                        "BENCHMARKS.md baseline)")
    r.add_argument("--gateway-max-workers", metavar="N", type=int, default=DEFAULT_MAX_WORKERS,
                   help=f"the gateway's most workers per function ({DEFAULT_MAX_WORKERS}); replay is given the same "
                        "bound (further requests queue for a busy worker)")
    r.add_argument("--redis", metavar="URL", help="use this Redis instead of starting redis-server per run")
    r.add_argument("--samples", metavar="DIR", help="sample functions directory (default: the repository's functions/)")
    r.add_argument("--workdir", metavar="DIR", help="keep logs, schedule and results here (default: a temp dir, "
                                                    "removed at the end)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="OUT", help="write the report (BENCHMARKS.md metric names) here")
    o.add_argument("--plot", metavar="OUT.png|OUT.html", help="time series per run: requests/s, cold starts, "
                                                              "warm instances")
    o.add_argument("--simulate", action="store_true",
                   help="also replay each run's exact schedule through the simulator (start-up times measured from "
                        "the gateway, the gateway's keep-alive or the sidecar's policy) and print predicted beside "
                        "measured cold starts per function")
    o.add_argument("--simulate-only", action="store_true",
                   help="no live run: replay the schedule through the simulator as it is planned (each request at its "
                        "intended time, its planned work, a start-up of 0.3 s or --startup) for the gateway alone "
                        "and, with --compare / --policy, the policy, and print predicted cold starts per function")
    o.add_argument("--startup", metavar="DURATION",
                   help="with --simulate-only: the start-up replay gives every function, in real time (default 0.3s; "
                        "this gateway's processes start in 0.04-0.3 s, Kubernetes pods take seconds)")
    o.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_loadtest)
    return p


def cmd_loadtest(args: argparse.Namespace) -> int:
    try:
        with terminate_as_interrupt():
            loadtest(args)
    except (UsageError, TraceError, ValueError) as e:
        print(f"prewarmer loadtest: error: {e}", file=sys.stderr)
        return 2
    except LoadTestError as e:
        hint = "" if args.workdir else " (--workdir DIR keeps the logs)"
        print(f"prewarmer loadtest: error: {e}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"prewarmer loadtest: interrupted{f' ({e})' if str(e) else ''}; every process stopped",
              file=sys.stderr)
        return 130
    return 0
