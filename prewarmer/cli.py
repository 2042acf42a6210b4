"""The `prewarmer` command line: `replay` and `train` in the simulator, `run` the sidecar,
`gateway` and `loadtest` locally, `bench` speed."""

from __future__ import annotations

import argparse
import sys
import time

from prewarmer.units import parse_duration
from prewarmer.workloads.base import TraceError


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit code 2."""


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload (one of --trace / --workload; default: --workload azure-like)")
    g.add_argument("--trace", metavar="PATH",
                   help="Azure Functions 2019 directory (or one of its invocation files) or a 2021 CSV")
    g.add_argument("--workload", metavar="NAME", choices=["azure-like", "poisson"],
                   help="built-in seeded generator: azure-like (default) or poisson")
    g.add_argument("--days", metavar="LIST", help="2019 trace days, e.g. 1,2 or 1-3 (default: all present)")
    g.add_argument("--functions", metavar="SLICE",
                   help="trace: functions START:STOP or first N; azure-like: number of functions (200)")
    g.add_argument("--minutes", metavar="A:B", help="trace minutes [A, B) from the start, e.g. 720:1440")
    g.add_argument("--folds", metavar="K", type=int,
                   help="split the trace's functions into K function-disjoint folds by owner (docs/policies.md)")
    g.add_argument("--strict", action="store_true",
                   help="trace anomalies (a duplicated function row, a function without memory or duration row) "
                        "are errors instead of warnings with a count")
    g.add_argument("--duration", metavar="TIME", help="generated workload length, e.g. 6h (azure-like: 6h, "
                                                      "poisson: 1h)")
    g.add_argument("--function", metavar="SPEC", action="append", default=[],
                   help="poisson function, repeatable: name=api,rate=5,service=120ms,cold=1.2s,memory=256")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replay model (BENCHMARKS.md defaults)")
    g.add_argument("--seed", type=int, default=0, help="seed of arrivals, durations and start-up draws (0)")
    g.add_argument("--startup", default="constant:1s",
                   help="start-up time model: constant:1s | per-function | memory:base=0.5,per_gb=1 | "
                        "lognormal:median=1,sigma=0.5")
    g.add_argument("--concurrency", type=int, default=1, help="requests one instance serves at once (1)")
    g.add_argument("--memory-cap", metavar="GB", type=float, help="total memory for instances (default: none)")
    g.add_argument("--deadline", metavar="TIME", help="queued requests time out after this (with --memory-cap)")
    g.add_argument("--tenant-quota", metavar="SHARE", type=float,
                   help="with --memory-cap: one tenant (trace owner) holds at most this share of it, e.g. 0.25")
    g.add_argument("--max-instances", metavar="N", type=int, help="instances one function may have at most")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prewarmer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rp = sub.add_parser("replay", help="replay policies over the same arrivals and compare them",
                        description="Replay policies over the same arrivals; fixed (10 min) is always run "
                                    "as the reference of cold_start_ratio and waste_ratio.")
    _add_workload_args(rp)
    _add_model_args(rp)
    rp.add_argument("--policy", action="append", default=[], metavar="P",
                    help="fixed[:10m] | hybrid | kpa | always-warm | marl[:CHECKPOINT], any of them +bid "
                         "(repeatable; default: the four baselines and marl)")
    rp.add_argument("--online", action="store_true",
                    help="learned policies keep learning during the replay (per-function fallback to hybrid)")
    rp.add_argument("--schedule-file", metavar="RULES.yaml",
                    help="warm-floor rules (docs/schedules.md): each --policy P also runs under them, as P+schedule; "
                         "trace minute m is 1970-01-01 00:00 UTC + m minutes")
    rp.add_argument("--workers", type=int, default=0,
                    help="workers the functions are split across (default: all cores, or the Ray cluster's CPUs)")
    rp.add_argument("--engine", choices=["processes", "ray"], default="processes",
                    help="where the workers run: local processes (default) or Ray tasks (same report; needs "
                         "pip install 'prewarmer[ray]')")
    rp.add_argument("--address", metavar="ADDR",
                    help="with --engine ray: the Ray cluster to use (auto, HOST:PORT or ray://HOST:PORT; "
                         "default: start a local Ray instance with --workers CPUs)")
    rp.add_argument("--fold", metavar="I", type=int, help="with --folds K: replay fold I's functions only")
    rp.add_argument("--json", metavar="OUT", help="write the JSON report here")
    rp.add_argument("--plot", metavar="OUT.png", help="write the plot here")
    rp.add_argument("--series", metavar="OUT.csv",
                    help="write every policy's fleet per minute here: arrivals, cold starts, timeouts, instances "
                         "alive, peak memory (CSV)")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")
    rp.add_argument("--force", action="store_true",
                    help="run even when the replay is estimated to take more than an hour")

    tp = sub.add_parser("train", help="train the shared agent network (PPO) in the simulator",
                        description="Centralized training of the marl policy on an explicit training workload.")
    _add_workload_args(tp)
    tp.add_argument("--out", required=True, metavar="MODEL.pt", help="checkpoint to write (also periodically)")
    tp.add_argument("--episodes", type=int, default=200, help="PPO episodes (200; 0 = stop after cloning)")
    tp.add_argument("--clone-episodes", type=int, default=40,
                    help="episodes cloning the forecast-quantile rule before PPO (40)")
    tp.add_argument("--forecaster-steps", type=int, default=4000,
                    help="Adam steps fitting the peak forecaster (4000; 0 keeps it untrained)")
    tp.add_argument("--window-minutes", type=int, default=360, help="minutes replayed per episode (360)")
    tp.add_argument("--functions-per-episode", type=int, default=256, help="agents per episode (256)")
    tp.add_argument("--checkpoint-every", type=int, default=10, help="episodes between checkpoints (10)")
    tp.add_argument("--holdout", metavar="I", type=int,
                    help="with --folds K: train on every fold but I (its functions are never seen)")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--config", metavar="JSON", help="training config overrides, e.g. reward weights")
    tp.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint")
    tp.add_argument("--memory-cap", metavar="GB", type=float,
                    help="train under a memory budget shared by each episode's functions")
    tp.add_argument("--coordinated", action="store_true",
                    help="with --memory-cap: train the agents inside the +bid auction (compensation in the reward)")
    tp.add_argument("--plot", metavar="CURVE.png", help="learning curve (default: next to --out)")
    tp.add_argument("--quiet", action="store_true")

    from prewarmer.forecast.cli import add_forecast_eval_parser

    add_forecast_eval_parser(sub)

    bp = sub.add_parser("bench", help="benchmarks")
    bsub = bp.add_subparsers(dest="bench", required=True)
    br = bsub.add_parser("replay", help="simulated invocations per wall-second and peak RSS, per policy")
    br.add_argument("--trace", default=None, help="default: ../shared/traces/azure2019-d01-sample1000")
    br.add_argument("--policy", action="append", default=[], help="default: all four baselines")
    br.add_argument("--workers", default="1,2", help="worker counts to measure (1,2)")
    br.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is shown")
    br.add_argument("--json", metavar="OUT")
    bi = bsub.add_parser("inference", help="latency of one marl control tick for N functions (one core)")
    bi.add_argument("--functions", default="1000,10000", help="function counts (1000,10000)")
    bi.add_argument("--repeat", type=int, default=50)
    bi.add_argument("--random-model", action="store_true", help="untrained weights instead of the shipped ones")
    from prewarmer.gateway.cli import add_gateway_parser
    from prewarmer.load.cli import add_loadtest_parser
    from prewarmer.sidecar.bench import add_bench_parsers
    from prewarmer.sidecar.cli import add_run_parser

    add_bench_parsers(bsub)

    add_run_parser(sub)
    add_gateway_parser(sub)
    add_loadtest_parser(sub)
    from prewarmer.backtest.cli import add_backtest_parser

    add_backtest_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "forecast-eval":
            from prewarmer.forecast.cli import cmd_forecast_eval

            return cmd_forecast_eval(args)
        if args.command == "run":
            from prewarmer.sidecar.cli import cmd_run

            return cmd_run(args)
        if args.command == "loadtest":
            from prewarmer.load.cli import cmd_loadtest

            return cmd_loadtest(args)
        if args.command == "backtest":
            from prewarmer.backtest.cli import cmd_backtest

            return cmd_backtest(args)
        if args.command == "gateway":
            from prewarmer.gateway.cli import cmd_gateway

            return cmd_gateway(args)
        if args.command == "bench":
            from prewarmer.bench import cmd_bench_inference, cmd_bench_replay
            from prewarmer.sidecar.bench import cmd_bench_ingest, cmd_bench_tick

            run = {"replay": cmd_bench_replay, "inference": cmd_bench_inference, "tick": cmd_bench_tick,
                   "ingest": cmd_bench_ingest}[args.bench]
            return run(args)
    except (TraceError, UsageError, ValueError) as e:
        print(f"prewarmer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prewarmer: interrupted", file=sys.stderr)
        return 130
    return 0


def load_workload(args: argparse.Namespace):
    """The workload the workload arguments describe."""
    from prewarmer.workloads import detect, synthetic

    if args.trace and args.workload:
        raise UsageError("give either --trace or --workload, not both")
    if args.trace:
        if args.function or args.duration:
            raise UsageError("--function and --duration are for generated workloads, not --trace")
        days = _parse_days(args.days) if args.days else None
        workload = detect.open_trace(args.trace, days=days,
                                     functions=detect.parse_slice(args.functions) if args.functions else None,
                                     minutes=detect.parse_minutes(args.minutes) if args.minutes else None,
                                     strict=getattr(args, "strict", False))
        for warning in workload.describe().get("warnings", []):
            print(f"prewarmer: warning: {warning}", file=sys.stderr)
        return _select_folds(args, workload)
    if getattr(args, "folds", None) is not None:
        raise UsageError("--folds splits the functions of a --trace")
    if args.days or args.minutes:
        raise UsageError("--days and --minutes slice a --trace")
    name = args.workload or "azure-like"
    if name == "poisson":
        if args.functions:
            raise UsageError("--functions is not used by poisson: give --function specs")
        specs = args.function or ["name=api,rate=2,service=200ms,cold=1s,memory=256",
                                  "name=batch,rate=0.01,service=5s,cold=3s,memory=1024"]
        return synthetic.PoissonWorkload([synthetic.parse_poisson_function(s) for s in specs],
                                         parse_duration(args.duration or "1h"))
    if args.function:
        raise UsageError("--function is for --workload poisson")
    try:
        n = int(args.functions) if args.functions else 200
    except ValueError:
        raise UsageError(f"--functions for azure-like is a count, got {args.functions!r}") from None
    return synthetic.azure_like(n_functions=n, duration_s=parse_duration(args.duration or "6h"), seed=args.seed)


def _check_folds(args: argparse.Namespace) -> None:
    """--fold (replay) / --holdout (train) go with --folds, and name a fold that exists."""
    from prewarmer.workloads import folds

    which = "--holdout" if hasattr(args, "holdout") else "--fold"
    chosen = getattr(args, "holdout", getattr(args, "fold", None))
    if args.folds is None:
        if chosen is not None:
            raise UsageError(f"{which} needs --folds K")
        return
    if chosen is None:
        raise UsageError(f"--folds {args.folds} needs {which} I (the fold to "
                         f"{'hold out' if which == '--holdout' else 'replay'})")
    try:
        folds.check(args.folds, chosen, which)
    except folds.FoldError as e:
        raise UsageError(str(e)) from None


def _select_folds(args: argparse.Namespace, workload):
    """The workload's functions of the fold asked for (replay) or of every other fold (train)."""
    from prewarmer.workloads import folds

    if getattr(args, "folds", None) is None:
        return workload
    _check_folds(args)
    try:
        if hasattr(args, "holdout"):
            return folds.training(workload, args.folds, args.holdout)
        return folds.held_out(workload, args.folds, args.fold)
    except folds.FoldError as e:
        raise UsageError(str(e)) from None


#: Replay speed the run-time guard assumes: simulated invocations per wall-second per policy, all workers
#: together (fixed keep-alive ran ~4.5e5/s over the shared 2019 day on the shared 2-core machine; learned
#: policies are slower). A replay estimated at more than REPLAY_GUARD_S needs --force.
REPLAY_RATE = 3e5
REPLAY_GUARD_S = 3600.0
#: Invocations per function-minute assumed for azure-like before generating it (measured: 14-28).
AZURE_LIKE_RATE_PER_MIN = 30.0


def _estimated_invocations(args: argparse.Namespace) -> float | None:
    """Invocations of a generated workload, estimated from the arguments alone (before generating it)."""
    from prewarmer.workloads import synthetic

    if args.trace:
        return None
    if (args.workload or "azure-like") == "poisson":
        specs = args.function or []
        duration = parse_duration(args.duration or "1h")
        rates = [synthetic.parse_poisson_function(s).rate_per_s for s in specs] if specs else [2.0, 0.01]
        return sum(rates) * duration
    try:
        n = int(args.functions) if args.functions else 200
    except ValueError:
        return None  # load_workload reports it
    return n * parse_duration(args.duration or "6h") / 60.0 * AZURE_LIKE_RATE_PER_MIN


def _guard_size(args: argparse.Namespace, invocations: float | None, policies: int, what: str) -> None:
    """Refuse (exit 2) a replay estimated to run for hours unless --force."""
    if invocations is None or args.force:
        return
    seconds = invocations * policies / REPLAY_RATE
    if seconds > REPLAY_GUARD_S:
        raise UsageError(f"this replay would run for about {seconds / 3600:.3g} h ({invocations:.3g} invocations x "
                         f"{policies} policies at ~{REPLAY_RATE:.0e} invocations/s); shorten {what}, or pass "
                         "--force to run it anyway")


def _parse_days(text: str) -> list[int]:
    days: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip().lower().lstrip("d")
            if "-" in part:
                a, b = part.split("-")
                days.extend(range(int(a.lstrip("d")), int(b.lstrip("d")) + 1))
            else:
                days.append(int(part))
    except ValueError:
        raise UsageError(f"--days: expected e.g. 1,2 or 1-3 or d01-d03, got {text!r}") from None
    return days


def replay_config(args: argparse.Namespace):
    from prewarmer.sim.replay import ReplayConfig
    from prewarmer.sim.startup import parse_startup

    if args.deadline and args.memory_cap is None:
        raise UsageError("--deadline only applies with --memory-cap")
    if args.tenant_quota is not None and args.memory_cap is None:
        raise UsageError("--tenant-quota is a share of the memory cap: give --memory-cap too")
    if args.tenant_quota is not None and not 0 < args.tenant_quota <= 1:
        raise UsageError(f"--tenant-quota must be in (0, 1], got {args.tenant_quota}")
    if args.max_instances is not None and args.max_instances < 1:
        raise UsageError(f"--max-instances must be >= 1, got {args.max_instances}")
    return ReplayConfig(seed=args.seed, startup=parse_startup(args.startup), container_concurrency=args.concurrency,
                        memory_cap_gb=args.memory_cap,
                        queue_deadline_s=parse_duration(args.deadline) if args.deadline else None,
                        tenant_quota=args.tenant_quota, max_instances=args.max_instances)


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from prewarmer import report
    from prewarmer.registry import DEFAULT_POLICIES, policy_factory
    from prewarmer.sim.replay import default_workers, replay

    if args.concurrency < 1:
        raise UsageError("--concurrency must be >= 1")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 1 (or 0 for the default), got {args.workers}")
    if args.address and args.engine != "ray":
        raise UsageError("--address is the Ray cluster of --engine ray: give --engine ray too")
    _check_folds(args)
    specs = list(dict.fromkeys(["fixed"] + (args.policy or list(DEFAULT_POLICIES))))
    factories = {s: policy_factory(s, online=args.online) for s in specs}  # validate every spec before any work
    if args.schedule_file:
        from prewarmer.schedules import load_rules

        rules = load_rules(args.schedule_file)
        for i in rules.by_labels():
            print(f"prewarmer: warning: {args.schedule_file}: rules[{i}] selects by labels, which trace functions "
                  "do not have: it matches nothing in replay", file=sys.stderr)
        for s in args.policy or list(DEFAULT_POLICIES):
            factories[f"{s}+schedule"] = policy_factory(s, online=args.online, rules=rules)
        specs = list(factories)
    cfg = replay_config(args)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    _guard_size(args, _estimated_invocations(args), len(specs), "--duration or --functions")
    workload = load_workload(args)
    if args.trace:
        _guard_size(args, workload.total_invocations(), len(specs), "--minutes, --days or --functions")
    desc = workload.describe()
    console.print(f"workload: {desc.get('model', desc.get('format'))}, "
                  f"{len(workload.functions)} functions, {workload.horizon_s / 3600:.2f} h "
                  f"(loaded in {time.perf_counter() - t0:.1f} s)")
    workers = args.workers or default_workers()
    if args.engine == "ray":
        from prewarmer.sim import ray_engine

        try:
            ray = ray_engine.ensure_started(workers, args.address)
        except ray_engine.RayUnavailable as e:
            raise UsageError(str(e)) from None
        if args.address and not args.workers:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        console.print(f"engine: ray ({args.address or 'local'}), {workers} worker(s)")
    total = workload.total_invocations()
    results, runs = {}, {}
    show = not args.quiet and console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not show) as progress:
        for spec in specs:
            task = progress.add_task(f"{spec:>14}", total=total)
            t = time.perf_counter()
            results[spec] = replay(workload, factories[spec], cfg, workers=workers,
                                   progress=lambda n, task=task: progress.advance(task, n),
                                   engine=args.engine, address=args.address)
            runs[spec] = {"wall_s": round(time.perf_counter() - t, 3), "workers": workers, "engine": args.engine,
                          "policy": factories[spec]().describe(), "events": results[spec].events}
    metrics = report.with_ratios(results)
    report.print_table(metrics, Console())
    for spec, r in results.items():
        if r.events:
            console.print(f"{spec}: {len(r.events)} event(s), e.g. {r.events[0]}")
    workload_doc = {**desc, "replay_model": cfg.describe(),
                    "reference": "fixed keep-alive 10 min"}
    if args.json:
        report.write_json(args.json, workload_doc, metrics, runs)
        console.print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot, results, metrics, workload.functions.names)
        console.print(f"wrote {args.plot}")
    if args.series:
        report.write_series(args.series, results, metrics)
        console.print(f"wrote {args.series}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from prewarmer.agents.train import TrainConfig, plot_curve, train

    if not args.trace and not args.workload:
        raise UsageError("train needs its training data explicitly: --trace PATH or --workload NAME")
    _check_folds(args)
    overrides = {}
    if args.config:
        try:
            overrides = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"--config {args.config}: {e}") from None
    try:
        if args.coordinated and args.memory_cap is None:
            raise UsageError("--coordinated trains under a budget: give --memory-cap too")
        cfg = TrainConfig(**{"episodes": args.episodes, "clone_episodes": args.clone_episodes,
                             "forecaster_steps": args.forecaster_steps, "window_minutes": args.window_minutes,
                             "functions_per_episode": args.functions_per_episode, "seed": args.seed,
                             "checkpoint_every": args.checkpoint_every, "memory_cap_gb": args.memory_cap,
                             "coordinated": args.coordinated, **overrides})
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"training config: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    workload = load_workload(args)
    console = Console(stderr=True)
    console.print(f"training on {len(workload.functions)} functions, {workload.horizon_s / 3600:.1f} h: "
                  f"peak forecaster ({cfg.forecaster_steps} steps), {cfg.clone_episodes} cloning + {cfg.episodes} PPO "
                  f"episodes of {cfg.window_minutes} min x {cfg.functions_per_episode} agents")

    def on_phase(phase: str, rec: dict) -> None:
        if args.quiet:
            return
        if phase == "forecaster":
            cov = ", ".join(f"{c:.2f}" for c in rec["coverage"])
            console.print(f"peak forecaster: {rec['samples']:,} samples, pinball loss {rec['loss']:.3f}, "
                          f"coverage of q{list(rec['taus'])}: {cov} ({rec['wall_s']:.0f} s)")
        elif rec["episode"] % 5 == 0:
            console.print(f"cloning episode {rec['episode']}: agreement {rec['agreement']:.1%}, "
                          f"cold-start rate {rec['cold_start_rate']:.3%}")
    with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeRemainingColumn(), console=console, disable=args.quiet or not console.is_terminal) as bar:
        task = bar.add_task("train", total=max(cfg.episodes, 1), info="")

        def on_episode(ep: int, rec: dict) -> None:
            bar.update(task, completed=ep, info=f"reward/tick {rec['reward_per_tick']:.3f} "
                                                f"cold {rec['cold_start_rate']:.2%}")
            if not console.is_terminal and not args.quiet and (ep % 10 == 0 or ep == cfg.episodes):
                print(f"episode {ep}: reward/tick {rec['reward_per_tick']:.4f}, "
                      f"cold-start rate {rec['cold_start_rate']:.3%}", file=sys.stderr)

        history = train(workload, cfg, args.out, resume=args.resume, on_episode=on_episode, on_phase=on_phase)
    curve = args.plot or str(Path(args.out).with_suffix(".png"))
    if history:
        plot_curve(history, curve)
    console.print(f"wrote {args.out} and {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
