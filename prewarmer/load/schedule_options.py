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


def trace_functions(args: argparse.Namespace) -> int | slice | list[str]:
    """`--functions` for a trace; a name may be given by a unique prefix of at least 6 characters (`c21dffbc` for
    the trace's 64-character function hash)."""
    functions = parse_functions(args.functions)
    if not isinstance(functions, list) or not args.trace:
        return functions
    from prewarmer.workloads.detect import open_trace

    known = open_trace(args.trace, functions=None, minutes=(0, 1)).functions.names
    exact = set(known)
    out = []
    for name in functions:
        if name in exact:
            out.append(name)
            continue
        matches = [n for n in known if n.startswith(name)] if len(name) >= 6 else []
        if len(matches) != 1:
            why = "a prefix needs 6+ characters" if len(name) < 6 else (
                "no trace function starts with it" if not matches else f"{len(matches)} trace functions start with it")
            raise UsageError(f"--functions: {name!r} is not a function of {args.trace} ({why})")
        out.append(matches[0])
    return out


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
    warmup = getattr(args, "warmup", None)
    if warmup and not args.trace:
        raise UsageError("--warmup plays the trace minutes before --minutes: it needs --trace")
    if args.trace and warmup:
        return _with_warmup(args, parse_duration(warmup), duration)
    if args.trace or args.workload == "azure-like":
        minutes = parse_minutes(args.minutes or "0:30")
        compress = args.compress or 30.0
        functions = trace_functions(args)
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


def _with_warmup(args: argparse.Namespace, warmup_s: float, duration: float | None) -> sched_mod.Schedule:
    """The trace minutes [A - W, B) for --minutes A:B and --warmup W (trace time), the first W played unmetered.

    The functions are chosen on the metered window [A, B), as without a warm-up; both runs of --compare replay
    the same schedule, so the gateway alone and the sidecar get the same history before the metered window.
    `meta["warmup_s"]` (real seconds) is where metering starts; `--duration` bounds the metered part."""
    from prewarmer.workloads.detect import parse_minutes

    if args.heavy:
        raise UsageError("--warmup with --heavy is not supported (the rarest function could change)")
    minutes = parse_minutes(args.minutes or "0:30")
    w_min = warmup_s / 60.0
    if not warmup_s > 0 or abs(w_min - round(w_min)) > 1e-9:
        raise UsageError(f"--warmup {args.warmup!r}: a positive whole number of trace minutes (e.g. 30m)")
    start = minutes[0] - round(w_min)
    if start < 0:
        raise UsageError(f"--warmup {args.warmup!r}: the trace has only {minutes[0]} minute(s) before --minutes "
                         f"{minutes[0]}:{minutes[1]}; start the window later (e.g. --minutes "
                         f"{round(w_min)}:{round(w_min) + minutes[1] - minutes[0]})")
    compress = args.compress or 30.0
    common = dict(compress=compress, seed=args.seed, max_total_rps=args.max_rps,
                  max_function_rps=args.max_function_rps)
    metered = sched_mod.from_trace(args.trace, functions=trace_functions(args), minutes=minutes,
                                   duration_s=duration, **common)
    lead_s = warmup_s / compress
    # The metered window passed the rate bound (auto selection allows 1.5x of it); the warm-up has the same bound.
    full = sched_mod.from_trace(args.trace, functions=[d.source for d in metered.functions],
                                minutes=(start, minutes[1]), duration_s=None if duration is None else lead_s + duration,
                                **{**common, "max_total_rps": 1.5 * args.max_rps})
    if {d.name: d.sample for d in full.functions} != {d.name: d.sample for d in metered.functions}:
        raise UsageError("--warmup: the functions of the warm-up differ from the metered window's")
    full.meta.update({"warmup_s": lead_s, "warmup_minutes": round(w_min), "minutes": list(minutes),
                      "selection": metered.meta.get("selection")})
    return full
