"""`prewarmer backtest`: its options (`add_backtest_parser`, registered by `prewarmer.cli`) and its entry
point (`cmd_backtest`). Exit codes: 0, 2 for bad input (range, options, PromQL Prometheus rejected, an
empty result), 1 when Prometheus cannot be reached or does not answer as Prometheus.
"""

from __future__ import annotations

import argparse
import sys
import time

from prewarmer.backtest import presets, promapi, report, source
from prewarmer.backtest.runner import PolicyRun, run_policy, sample_interval_s
from prewarmer.units import parse_duration

DEFAULT_FORECASTERS = ("histogram",)


def add_backtest_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from prewarmer.cli import _add_model_args

    p = subparsers.add_parser(
        "backtest", help="replay what Prometheus recorded through the simulator with every policy",
        description="Read per-function invocation counts over a time range from a Prometheus HTTP API (OpenFaaS "
                    "gateway_function_invocation_total, Knative revision_request_count, or your PromQL), replay "
                    "them with every policy and report what each would have done (cold starts, waste, instances "
                    "over time), ranked, with per-function forecast quality.")
    g = p.add_argument_group("what to read")
    g.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    g.add_argument("--metrics", default="openfaas", choices=sorted(presets.PRESETS),
                   help="metric preset: openfaas (default) or knative")
    g.add_argument("--query", metavar="PROMQL", help="cumulative invocation counters to read instead of the preset's "
                                                     "(e.g. with label matchers)")
    g.add_argument("--function-label", action="append", default=[], metavar="LABEL",
                   help="label(s) naming a function, joined by '.' (repeatable; preset default)")
    g.add_argument("--histogram", metavar="METRIC|none", help="latency histogram for durations (preset default)")
    g.add_argument("--histogram-unit", metavar="S", type=float,
                   help="seconds per unit of its le bounds (preset default)")
    g.add_argument("--memory-query", metavar="PROMQL|none",
                   help="instant PromQL giving each function's memory in bytes, labelled like the counter")
    g.add_argument("--default-duration", default="100ms", metavar="TIME",
                   help="execution time of functions without histogram data (100ms)")
    g.add_argument("--default-memory", default=256.0, type=float, metavar="MB",
                   help="memory of functions without a memory metric (256)")
    g.add_argument("--start", metavar="TIME", help="range start: now-6h, a Unix time or 2026-01-31T12:00:00Z")
    g.add_argument("--end", metavar="TIME", help="range end (default: now)")
    g.add_argument("--range", dest="length", metavar="DURATION", help="range length ending at --end (default 1h)")
    g.add_argument("--step", default="15s", metavar="TIME",
                   help="query resolution, a divisor of a minute (15s); finer catches counter resets sooner")
    g.add_argument("--timeout", default="30s", metavar="TIME", help="per request to Prometheus (30s)")
    _add_model_args(p)
    r = p.add_argument_group("policies and report")
    r.add_argument("--policy", action="append", default=[], metavar="P",
                   help="policy spec as in replay (repeatable; default: the four baselines and marl; fixed always "
                        "runs)")
    r.add_argument("--rank-by", default="score", choices=report.RANK_KEYS,
                   help="score = cold_start_ratio + waste_ratio (default), or one metric")
    r.add_argument("--forecaster", action="append", default=[], metavar="NAME",
                   help="forecasters scored per function (repeatable; default histogram; last-value always)")
    r.add_argument("--k", default="1,5", metavar="LIST", help="'invoked within k minutes' windows scored (1,5)")
    r.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of the range forecasters warm up on before being scored on the rest (0.5)")
    r.add_argument("--show-functions", type=int, default=20, metavar="N", help="functions shown in the tables (20)")
    r.add_argument("--json", metavar="OUT", help="write the report here")
    r.add_argument("--plot", metavar="OUT.png", help="cold starts and instances over time per policy")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_backtest)
    return p


def cmd_backtest(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except promapi.PrometheusQueryError as e:
        print(f"prewarmer backtest: error: {e}", file=sys.stderr)
        return 2
    except promapi.PrometheusError as e:
        print(f"prewarmer backtest: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # BacktestInputError, bad options, bad policy specs
        print(f"prewarmer backtest: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prewarmer import report as replay_report
    from prewarmer.cli import replay_config
    from prewarmer.console import wide_console
    from prewarmer.forecast import FORECASTERS
    from prewarmer.forecast.cli import parse_ks
    from prewarmer.registry import DEFAULT_POLICIES, policy_factory

    err = Console(stderr=True, quiet=args.quiet)
    out = wide_console()
    # Everything the user typed is checked before Prometheus is asked anything.
    specs = list(dict.fromkeys(["fixed"] + (args.policy or list(DEFAULT_POLICIES))))
    factories = {s: policy_factory(s) for s in specs}
    forecasters = list(dict.fromkeys(args.forecaster or DEFAULT_FORECASTERS))
    unknown = [n for n in forecasters if n not in FORECASTERS]
    if unknown:
        raise ValueError(f"unknown forecaster {unknown[0]!r}: choose from {', '.join(FORECASTERS)}")
    ks = parse_ks(args.k)
    if not 0 < args.train_fraction < 1:
        raise ValueError(f"--train-fraction must be in (0, 1), got {args.train_fraction}")
    if args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    if not args.default_memory > 0:
        raise ValueError(f"--default-memory must be > 0 MB, got {args.default_memory}")
    default_ms = parse_duration(args.default_duration) * 1000.0
    if not 0 < default_ms < float("inf"):
        raise ValueError(f"--default-duration must be a positive duration, got {args.default_duration!r}")
    preset = presets.choose(args.metrics, args.query, args.function_label, args.histogram, args.histogram_unit,
                            args.memory_query)
    window = source.make_window(args.start, args.end, args.length, args.step)
    cfg = replay_config(args).model_copy(update={"sample_s": sample_interval_s(60.0 * window.minutes)})
    client = promapi.PrometheusClient(args.prometheus, timeout_s=parse_duration(args.timeout))

    t = time.perf_counter()
    data = source.read(client, preset, window, source.Defaults(default_ms, args.default_memory))
    for w in data.warnings:
        err.print(f"prewarmer backtest: warning: {w}")
    workload = data.workload()
    err.print(f"read {data.series} series of {preset.counter!r} from {client.url}: {len(data.names)} functions, "
              f"{workload.total_invocations():,} invocations over {window.minutes} min "
              f"({data.resets} counter resets, {data.new_series} series created in the range"
              + (f", {len(data.idle_functions)} functions without invocations left out" if data.idle_functions else "")
              + f"; {time.perf_counter() - t:.1f} s)")

    runs: dict[str, PolicyRun] = {}
    run_info: dict[str, dict] = {}
    for spec in specs:
        t = time.perf_counter()
        runs[spec] = run_policy(workload, factories[spec](), cfg)
        run_info[spec] = {"wall_s": round(time.perf_counter() - t, 3), "events": runs[spec].result.events}
        err.print(f"  {spec}: {run_info[spec]['wall_s']:.1f} s")
    metrics = replay_report.with_ratios({s: r.result for s, r in runs.items()})
    ranking = report.rank(metrics, args.rank_by)
    functions = report.function_rows(data, runs)
    quality = report.forecast_quality(workload, forecasters, ks, args.train_fraction)

    report.print_ranking(ranking, args.rank_by, out)
    replay_report.print_table(metrics, out)
    report.print_functions(functions, specs, out, args.show_functions)
    report.print_forecast(quality, out, args.show_functions)
    if args.json:
        report.write_json(args.json, {"source": data.describe(), "replay_model": cfg.describe(),
                                      "reference": "fixed keep-alive 10 min", "rank_by": args.rank_by,
                                      "ranking": ranking, "policies": metrics, "functions": functions,
                                      "forecast": quality, "runs": run_info, "warnings": data.warnings})
        err.print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot, data, runs, ranking)
        err.print(f"wrote {args.plot}")
    return 0
