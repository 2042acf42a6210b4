#!/usr/bin/env python3
"""The function-disjoint fold protocol: for each of K folds (functions grouped by owner), train on the
other folds' functions, replay the held-out fold, and tabulate every policy against fixed and hybrid.

    .venv/bin/python scripts/folds.py --trace ../shared/traces/azure2019-d01-sample1000 --out build/folds
    .venv/bin/python scripts/folds.py ... --policy 'marl:{model}' --policy 'marl:{model},waste_target=0.9'
    .venv/bin/python scripts/folds.py ... --cap 0.5          # under a memory cap of half fixed's peak

Training (`prewarmer train --folds K --holdout I --minutes TRAIN`) writes OUT/fold{I}.pt unless it is
already there; the evaluation (`prewarmer replay --folds K --fold I --minutes EVAL`, one worker) writes
OUT/fold{I}[-cap].json. By default training is on minutes 0:720 and evaluation on 720:1440, so every
figure is on functions and minutes the model has not seen. `{model}` in a policy spec is the fold's
model. The table (Markdown) goes to stdout and OUT/summary[-cap].md; ratios are per fold, then their
mean and worst (largest) over the folds. With several learned policies (candidate settings), each fold's
figure is also given for the candidate chosen on the other folds (the fewest comparisons of the bar missed
there, then the widest worst-fold margin on it, scores within 0.005 counting as a tie, then the lowest mean
ratio; the bar: lower cold, p75 and waste than fixed and hybrid), and the choice over all folds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

METRICS = ("cold_start_rate", "p75_function_cold_start_pct", "wasted_gb_s")
SHORT = {"cold_start_rate": "cold", "p75_function_cold_start_pct": "p75", "wasted_gb_s": "waste"}
CAPPED_METRICS = ("cold_start_rate", "p75_function_cold_start_pct", "throughput_rps", "timed_out", "wasted_gb_s")


def prewarmer(*args: str) -> None:
    cmd = [sys.executable, "-m", "prewarmer.cli", *args]
    print("$ prewarmer " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)


def label(template: str) -> str:
    """A policy's name in the table: its spec without the fold's model path."""
    return template.replace(":{model},", ":").replace(":{model}", "")


def run_fold(args: argparse.Namespace, fold: int) -> dict[str, dict[str, float]]:
    out = Path(args.out)
    model = out / f"fold{fold}.pt"
    common = ["--trace", args.trace, "--folds", str(args.folds)]
    if not model.exists() and any("{model}" in p for p in args.policy):
        if args.no_train:
            raise SystemExit(f"{model}: no model for fold {fold} and --no-train")
        prewarmer("train", *common, "--holdout", str(fold), "--minutes", args.train_minutes, "--episodes",
                  str(args.episodes), "--seed", str(args.seed), "--out", str(model), "--quiet",
                  *(["--config", args.config] if args.config else []))
    specs = {label(p): p.replace("{model}", str(model)) for p in args.policy}
    evaluate = [*common, "--fold", str(fold), "--minutes", args.eval_minutes, "--workers", "1", "--quiet",
                "--seed", str(args.eval_seed)]
    suffix = "" if args.cap is None else f"-cap{args.cap:g}"
    report = out / f"fold{fold}{suffix}.json"
    if args.cap is not None:
        peak_doc = out / f"fold{fold}-fixed-peak.json"
        if not peak_doc.exists():
            prewarmer("replay", *evaluate, "--policy", "fixed", "--json", str(peak_doc))
        peak = json.loads(peak_doc.read_text())["policies"]["fixed"]["peak_memory_gb"]
        evaluate += ["--memory-cap", f"{args.cap * peak:.0f}", "--deadline", args.deadline]
    have = {} if args.force or not report.exists() else json.loads(report.read_text())
    missing = [spec for spec in specs.values() if spec not in have.get("policies", {})]
    stale = [spec for spec in specs.values() if spec not in missing and not is_current(have, spec)]
    for spec in stale:
        print(f"{report}: {spec} was replayed with other settings than it has now: replaying it again",
              file=sys.stderr)
    missing += stale
    if missing:  # replay only the policies the report lacks (fixed always runs: replay compares against it)
        part = report.with_suffix(".part.json")
        prewarmer("replay", *evaluate, *[x for spec in missing for x in ("--policy", spec)], "--json", str(part))
        new = json.loads(part.read_text())
        if have:
            new["policies"] = {**have["policies"], **new["policies"]}
            new["runs"] = {**have.get("runs", {}), **new.get("runs", {})}
        report.write_text(json.dumps(new, indent=2) + "\n")
        part.unlink()
    doc = json.loads(report.read_text())["policies"]
    return {name: doc[spec] for name, spec in specs.items()}


def settings(desc: object) -> str:
    """A policy's description (`Policy.describe`) without what it learned while running, to compare settings."""
    def strip(x: object) -> object:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "price_now"}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return json.dumps(strip(desc), sort_keys=True, default=str)


def is_current(report: dict, spec: str) -> bool:
    """Whether `spec`'s figures in a fold's report were replayed with the settings `spec` has now. A spec names
    defaults, not values (`marl` is whatever the package's defaults are), so a report kept from before a default
    changed would be read as today's figures without this."""
    from prewarmer.registry import policy_factory

    run = report.get("runs", {}).get(spec, {})
    return "policy" in run and settings(run["policy"]) == settings(policy_factory(spec)().describe())


def ratio(a: float, b: float) -> float:
    return a / b if b else (1.0 if a == 0 else float("inf"))


def table(results: list[dict[str, dict[str, float]]], capped: bool, which: list[int] | None = None) -> str:
    names = list(results[0])
    metrics = CAPPED_METRICS if capped else METRICS
    lines = ["| fold | policy | " + " | ".join(metrics) + " | x fixed (" + " / ".join(SHORT.get(m, m) for m in METRICS)
             + ") | x hybrid |", "|---|---|" + "---:|" * (len(metrics) + 2)]
    for i, res in zip(which or range(len(results)), results, strict=True):
        for name in names:
            m = res[name]
            cells = [f"{100 * m[k]:.3f}%" if k == "cold_start_rate" else f"{m[k]:,.2f}" if "p75" in k
                     else f"{m[k]:,.0f}" if k != "throughput_rps" else f"{m[k]:.3f}" for k in metrics]
            vs = [" / ".join(f"{ratio(m[k], res[base][k]):.3f}" for k in METRICS) for base in ("fixed", "hybrid")]
            lines.append(f"| {i} | {name} | " + " | ".join(cells) + f" | {vs[0]} | {vs[1]} |")
    lines += ["", "| policy | vs | " + " | ".join(f"{SHORT[k]} mean / worst" for k in METRICS) + " |",
              "|---|---|" + "---:|" * len(METRICS)]
    for name in names:
        for base in ("fixed", "hybrid"):
            cells = []
            for k in METRICS:
                r = [ratio(res[name][k], res[base][k]) for res in results]
                cells.append(f"{sum(r) / len(r):.3f} / {max(r):.3f}")
            lines.append(f"| {name} | {base} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar(results: list[dict[str, dict[str, float]]], name: str, which: list[int] | None = None) -> str:
    """Where `name` fails the bar (lower cold, p75 and waste than fixed and hybrid on every fold); `which`
    numbers the folds of `results` (default 0, 1, ...)."""
    which = which or list(range(len(results)))
    misses = [f"fold {i}: {SHORT[k]} x{base} {ratio(res[name][k], res[base][k]):.3f}"
              for i, res in zip(which, results, strict=True) for base in ("fixed", "hybrid") for k in METRICS
              if res[name][k] >= res[base][k]]
    return f"{name}: meets the bar on every fold" if not misses else f"{name}: misses " + "; ".join(misses)


def bar_score(res: dict[str, dict[str, float]], name: str) -> float:
    """The largest of `name`'s ratios to fixed and hybrid in cold, p75 and waste on one fold: below 1 it
    meets the bar there, and the lower, the wider its margin."""
    return max(ratio(res[name][k], res[base][k]) for base in ("fixed", "hybrid") for k in METRICS)


def misses(results: list[dict[str, dict[str, float]]], name: str) -> int:
    """How many of the bar's comparisons (cold, p75, waste against fixed and hybrid, per fold) `name` fails."""
    return sum(res[name][k] >= res[base][k] for res in results for base in ("fixed", "hybrid") for k in METRICS)


def margin_key(results: list[dict[str, dict[str, float]]], name: str) -> tuple[float, ...]:
    """What candidates are ranked by: first the comparisons of the bar `name` fails on `results` (the bar is
    pass or fail on each), then its bar scores, worst first: the widest worst-fold margin, and on a tie there
    (e.g. a p75 that equals hybrid's on one fold whatever the setting) the better next-worst fold, and so on,
    never the order the candidates were given in. (Issue 14: the worst score alone chose a setting that
    missed fixed's cold starts on three folds by 2-4% over one that missed hybrid's waste on one fold by 8%.)"""
    return (float(misses(results, name)), *sorted((bar_score(r, name) for r in results), reverse=True))


#: Bar scores closer than this are a tie when candidates are ranked: a setting must not be chosen for one cold start
#: in 16,000 (session 16: by exact scores `cap=1h` ranked over `cap=90m` by one cold start on fold 0's worst ratio).
TIE = 0.005


def mean_ratio(results: list[dict[str, dict[str, float]]], name: str) -> float:
    """`name`'s mean ratio to fixed and hybrid over cold, p75 and waste on every fold (lower is better)."""
    return sum(ratio(res[name][k], res[base][k]) for res in results for base in ("fixed", "hybrid")
               for k in METRICS) / (6 * len(results))


def choose(results: list[dict[str, dict[str, float]]], learned: list[str]) -> str:
    """The candidate ranked first on `results`: the fewest misses of the bar; then `margin_key`'s bar scores, worst
    first, where scores within `TIE` of the best are a tie; then the lowest mean ratio (`mean_ratio`); then the
    order given."""
    fewest = min(misses(results, name) for name in learned)
    left = [name for name in learned if misses(results, name) == fewest]
    scores = {name: margin_key(results, name)[1:] for name in left}
    for pos in range(len(results)):
        best = min(scores[name][pos] for name in left)
        left = [name for name in left if scores[name][pos] <= best + TIE]
    return min(left, key=lambda name: mean_ratio(results, name))


def nested_selection(results: list[dict[str, dict[str, float]]], which: list[int], learned: list[str]) -> str:
    """For each fold, the candidate ranked first on the *other* folds (`choose`), and
    its figures on this one: no fold's figure is selected on that fold. Last, the choice over all folds (what
    ships)."""
    lines = ["| fold | chosen on the other folds | misses / worst bar score elsewhere | cold x fixed / x hybrid | "
             "p75 x fixed / x hybrid | waste x fixed / x hybrid |", "|---|---|---:|---:|---:|---:|"]
    for pos, fold in enumerate(which):
        others = [r for p, r in enumerate(results) if p != pos]
        best = choose(others, learned)
        res = results[pos]
        cells = [" / ".join(f"{ratio(res[best][k], res[base][k]):.3f}" for base in ("fixed", "hybrid"))
                 for k in METRICS]
        lines.append(f"| {fold} | {best} | {misses(others, best)} / {max(bar_score(r, best) for r in others):.3f} | "
                     + " | ".join(cells) + " |")
    overall = choose(results, learned)
    lines.append(f"\nOver all folds: {overall} ({misses(results, overall)} misses, worst bar score "
                 f"{max(bar_score(r, overall) for r in results):.3f})")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True)
    p.add_argument("--out", default="build/folds", help="models, reports and the summary (build/folds)")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--only", metavar="I,J", help="run these folds only (default: all)")
    p.add_argument("--train-minutes", default="0:720")
    p.add_argument("--eval-minutes", default="720:1440")
    p.add_argument("--episodes", type=int, default=20, help="PPO episodes of each fold's training (20, as shipped)")
    p.add_argument("--seed", type=int, default=0, help="training seed (0)")
    p.add_argument("--eval-seed", type=int, default=0, help="replay seed (0)")
    p.add_argument("--config", help="training config overrides (JSON file), as for prewarmer train")
    p.add_argument("--policy", action="append", default=[],
                   help="policy spec, {model} = the fold's model (default: fixed, hybrid, marl:{model})")
    p.add_argument("--cap", type=float, help="memory cap as a fraction of fixed's uncapped peak on the fold")
    p.add_argument("--deadline", default="30s", help="queue deadline under --cap (30s)")
    p.add_argument("--no-train", action="store_true", help="refuse to train a missing fold model")
    p.add_argument("--force", action="store_true", help="replay even when the fold's report is there")
    args = p.parse_args()
    base = ["fixed", "hybrid"]
    args.policy = list(dict.fromkeys(base + (args.policy or ["marl:{model}"])))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    which = [int(x) for x in args.only.split(",")] if args.only else list(range(args.folds))
    results = [run_fold(args, i) for i in which]
    text = table(results, args.cap is not None, which)
    learned = [label(x) for x in args.policy if x not in base]
    text += "\n\n" + "\n".join(bar(results, name, which) for name in learned) + "\n"
    if len(learned) > 1 and len(results) > 1 and args.cap is None:
        text += "\n" + nested_selection(results, which, learned) + "\n"
    if which != list(range(args.folds)):
        text = f"folds {which} of {args.folds} only\n\n" + text
    print(text)
    suffix = "" if args.cap is None else f"-cap{args.cap:g}"
    (Path(args.out) / f"summary{suffix}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
