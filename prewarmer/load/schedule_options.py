"""The request schedule a `prewarmer loadtest` command line asks for: a trace slice (`--trace`, `--functions`,
`--minutes`, `--compress`), a generated workload (`--workload synthetic | azure-like`) or a saved schedule
(`--schedule`), checked for options that do not go together (`UsageError`).
"""

from __future__ import annotations

import argparse
import re

from prewarmer.load import schedule as sched_mod
from prewarmer.load.errors import UsageError
from prewarmer.units import parse_duration


def parse_functions(text: str | None) -> int | slice | list[str]:
    """auto[:N] -> N; START:STOP / N -> a slice of trace rows; anything else -> function names."""
    from prewarmer.workloads.detect import parse_slice

    spec = (text or "auto").strip()
    if spec == "auto" or spec.startswith("auto:"):
        n_text = spec.partition(":")[2] or "4"
        if not n_text.isdigit() or int(n_text) < 1:
            raise UsageError(f"--functions {text!r}: auto:N needs a positive N")
        return int(n_text)
    if re.fullmatch(r"\s*\d*\s*:\s*\d*\s*|\s*\d+\s*", spec):
        return parse_slice(spec)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--functions {text!r}: no function name")
    return names


def build_schedule(args: argparse.Namespace) -> sched_mod.Schedule:
    from prewarmer.workloads.detect import parse_minutes

    chosen = [n for n in ("trace", "workload", "schedule") if getattr(args, n)]
    if len(chosen) > 1:
        raise UsageError("give one of --trace, --workload, --schedule")
    duration = parse_duration(args.duration) if args.duration else None
    if duration is not None and not duration > 0:
        raise UsageError("--duration must be > 0")
    if args.compress is not None and not args.compress > 0:
        raise UsageError("--compress must be > 0")
    if args.schedule:
        if args.functions or args.minutes or args.compress or args.heavy:
            raise UsageError("--schedule is already built: --functions/--minutes/--compress/--heavy do not apply")
        s = sched_mod.Schedule.load(args.schedule)
        return s.truncated(duration) if duration else s
    if args.trace or args.workload == "azure-like":
        minutes = parse_minutes(args.minutes or "0:30")
        compress = args.compress or 30.0
        functions = parse_functions(args.functions)
        common = dict(compress=compress, seed=args.seed, duration_s=duration, include_heavy=args.heavy,
                      max_total_rps=args.max_rps, max_function_rps=args.max_function_rps)
        if args.trace:
            return sched_mod.from_trace(args.trace, functions=functions, minutes=minutes, **common)
        from prewarmer.workloads.base import MinuteCountWorkload
        from prewarmer.workloads.synthetic import azure_like

        w = azure_like(n_functions=200, duration_s=minutes[1] * 60.0, seed=args.seed)
        window = MinuteCountWorkload(w.functions, w.counts[:, minutes[0]:minutes[1]], w.duration_pct_ms,
                                     start_minute=minutes[0], description=w.describe())
        if isinstance(functions, list):
            missing = sorted(set(functions) - set(w.functions.names))
            if missing:
                raise UsageError(f"--functions: not in the azure-like workload: {', '.join(missing[:3])}")
            idx = [w.functions.names.index(n) for n in functions]
        elif isinstance(functions, slice):
            idx = list(range(len(w.functions)))[functions]
        else:
            return sched_mod.choose_and_build(window, functions, meta={"minutes": list(minutes)}, **common)
        sub = MinuteCountWorkload(w.functions.subset(idx), window.counts[idx], window.duration_pct_ms[idx],
                                  start_minute=minutes[0], description=w.describe())
        return sched_mod.choose_and_build(sub, None, meta={"minutes": list(minutes)}, **common)
    if args.functions or args.minutes:
        raise UsageError("--functions and --minutes select from a --trace (or --workload azure-like)")
    if args.compress not in (None, 1.0):
        raise UsageError("--compress applies to traces; the synthetic pattern is already in real time")
    return sched_mod.synthetic(duration_s=duration or 60.0, seed=args.seed, heavy_every_s=20.0 if args.heavy else None)
