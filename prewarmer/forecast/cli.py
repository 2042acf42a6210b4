"""`prewarmer forecast-eval`: compare forecasters on a trace (MAE, hit rates, update cost per tick).

`add_forecast_eval_parser(subparsers)` adds the sub-command to the main parser and
`cmd_forecast_eval(args)` runs it; bad input raises ValueError / TraceError for the main CLI to
report on one line. `python -m prewarmer.forecast.cli ...` runs the command on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_FORECASTERS = ("histogram", "holt-winters", "arima", "neural")


def add_forecast_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `forecast-eval` to the sub-commands of the main parser (handler: `args.func`)."""
    p = subparsers.add_parser(
        "forecast-eval", help="compare invocation forecasters on a trace",
        description="Warm forecasters up (and train the neural one) on the training minutes, then score them "
                    "minute by minute on the test minutes: MAE of the next-minute count, and accuracy / "
                    "precision / recall of 'invoked within the next k minutes' (prob_invoked(k) >= 0.5). The "
                    "last-value baseline is always included.")
    p.add_argument("--trace", required=True, metavar="PATH",
                   help="Azure Functions 2019 directory (or one of its invocation files) or a 2021 CSV")
    p.add_argument("--functions", metavar="SLICE", help="functions START:STOP or first N (default: all)")
    p.add_argument("--train-minutes", default="0:720", metavar="A:B", help="training minutes [A, B) (0:720)")
    p.add_argument("--test-minutes", default="720:1440", metavar="C:D",
                   help="test minutes [C, D), C >= B (720:1440)")
    p.add_argument("--k", default="1,5,10", metavar="LIST", help="hit-rate windows in minutes (1,5,10)")
    p.add_argument("--forecaster", action="append", default=[], metavar="NAME",
                   help="histogram | holt-winters | arima | neural | last-value (repeatable; default: the first four)")
    p.add_argument("--seed", type=int, default=0, help="seed of the neural training (0)")
    p.add_argument("--epochs", type=int, default=8, help="neural training epochs (8)")
    p.add_argument("--json", metavar="OUT", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_forecast_eval)


def parse_ks(text: str) -> list[int]:
    ks = []
    for part in text.split(","):
        try:
            k = int(part.strip())
        except ValueError:
            raise ValueError(f"bad --k {text!r}: {part.strip()!r} is not an integer") from None
        if k < 1:
            raise ValueError(f"bad --k {text!r}: windows must be >= 1 minute")
        ks.append(k)
    return sorted(set(ks))


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def print_table(results: dict, ks: list[int], console, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("forecaster")
    table.add_column("MAE", justify="right")
    for k in ks:
        for m in ("acc", "prec", "rec"):
            table.add_column(f"k={k} {m}", justify="right")
    table.add_column("update ms/tick", justify="right")
    table.add_column("fit s", justify="right")
    for name, r in results.items():
        cells = [name, _fmt(r["mae"], 4)]
        for k in ks:
            s = r[f"k={k}"]
            cells += [_fmt(s["accuracy"]), _fmt(s["precision"]), _fmt(s["recall"])]
        t = r["timing"]
        cells += [f"{t['update_ms_mean']:.2f}", f"{t['fit_s']:.1f}" if t["fit_s"] else "—"]
        table.add_row(*cells)
    console.print(table)
    first = next(iter(results.values()))
    console.print("base rate (invoked within k): " + ", ".join(
        f"k={k}: {_fmt(first[f'k={k}']['base_rate'])}" for k in ks))


def cmd_forecast_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from prewarmer.console import wide_console
    from prewarmer.forecast import FORECASTERS
    from prewarmer.forecast.evaluate import evaluate
    from prewarmer.workloads import detect

    train = detect.parse_minutes(args.train_minutes)
    test = detect.parse_minutes(args.test_minutes)
    if test[0] < train[1]:
        raise ValueError(f"--test-minutes {args.test_minutes} must start at or after the end of --train-minutes "
                         f"{args.train_minutes}: never score on minutes the forecasters were trained on")
    ks = parse_ks(args.k)
    names = list(dict.fromkeys(args.forecaster or DEFAULT_FORECASTERS))
    unknown = [n for n in names if n not in FORECASTERS]
    if unknown:
        raise ValueError(f"unknown forecaster {unknown[0]!r}: choose from {', '.join(FORECASTERS)}")
    if args.epochs < 1:
        raise ValueError("--epochs must be >= 1")
    functions = detect.parse_slice(args.functions) if args.functions else None
    span = (train[0], test[1])  # load only the minutes used; windows become relative to train[0]
    workload = detect.open_trace(args.trace, functions=functions, minutes=span)
    rel_train, rel_test = (train[0] - span[0], train[1] - span[0]), (test[0] - span[0], test[1] - span[0])

    err = Console(stderr=True)
    out = wide_console()
    err.print(f"{len(workload.functions)} functions, train minutes {train[0]}:{train[1]}, "
              f"test minutes {test[0]}:{test[1]}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, disable=args.quiet or not err.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def tick(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"{name:>13}", total=total)
            progress.update(tasks[name], completed=done)

        results = evaluate(workload, rel_train, rel_test, names, ks=ks, seed=args.seed, neural_epochs=args.epochs,
                           progress=tick)
    print_table(results, ks, out, f"forecast-eval: {Path(args.trace).name}, {len(workload.functions)} functions, "
                                  f"train {train[0]}:{train[1]}, test {test[0]}:{test[1]}")
    if args.json:
        doc = {"workload": workload.describe(), "train_minutes": list(train), "test_minutes": list(test), "ks": ks,
               "seed": args.seed, "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        err.print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `forecast-eval` on its own (the main `prewarmer` CLI wires the same parser)."""
    from prewarmer.workloads.base import TraceError

    parser = argparse.ArgumentParser(prog="prewarmer")
    add_forecast_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["forecast-eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cmd_forecast_eval(args)
    except (TraceError, ValueError) as e:
        print(f"prewarmer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
