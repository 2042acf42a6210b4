"""Per tick, per function: the Observation the live sidecar's policy saw beside the one replay's policy saw.

`prewarmer loadtest --simulate` compares cold starts per run; when they disagree, this finds the first tick and
the first field where the two policies' inputs part. It reads a load test kept with `--workdir DIR` and its
`--json REPORT` (for the replay's offset and the gateway's worker bound), replays the run's own schedule the way
`--simulate` does (`prewarmer.load.simulate`) with the policy wrapped to record each observation, and reads the
live observations from the sidecar's decision records (`DIR/prewarmer/decisions.jsonl`, the `obs` field).

    python scripts/live_vs_replay_ticks.py DIR REPORT [--function NAME] [--all] [--shards N]
                                                      [--substitute FIELD,...]

Prints how many function-ticks' `scale_to` differ, then per function the ticks where any compared field differs
(all ticks with `--all`), as `live / replay`, and which of a learned policy's features differ on how many ticks.
`--substitute` gives replay's policy the live values of the listed fields (`idle_times`: the live idle gaps):
leaving one field out of a full substitution shows how much of the disagreement that field makes (docs/live-vs-
replay.md, fix 8: `peak_in_flight`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

FIELDS = ("arrivals", "cold_starts", "completions", "in_flight", "peak_in_flight", "alive", "starting", "busy",
          "idle_warm", "concurrency", "busy_gb_s", "idle_gaps", "idle_gap_s", "startup_s", "desired")
# Float fields are compared within this relative tolerance (the sidecar's clock and the gateway's timings are
# real measurements; replay's are the same measurements replayed).
REL_TOL = 0.05


class Recording:
    """Wraps a policy: records every observation and the count the fleet holds after the actions."""

    def __init__(self, policy, names: list[str], live: dict[tuple[str, int], dict] | None = None,
                 substitute: tuple[str, ...] = ()) -> None:
        self.policy, self.names = policy, names
        self.rows: dict[tuple[str, int], dict] = {}
        self.tick_s = policy.tick_s
        self.live, self.substitute = live or {}, substitute

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def reset(self, functions, now):
        return self.policy.reset(functions, now)

    def decide(self, now: float, obs):
        k = int(round(now / self.tick_s))
        if self.substitute:
            obs = self._as_live(obs, k)
        actions = self.policy.decide(now, obs)
        gaps = np.bincount(obs.idle_time_func, minlength=len(self.names))
        gap_s = np.bincount(obs.idle_time_func, weights=obs.idle_time_s, minlength=len(self.names))
        last = getattr(self.policy, "last", None)
        feats = last.get("features") if isinstance(last, dict) else None
        for i, name in enumerate(self.names):
            self.rows[(name, k)] = {"features": None if feats is None else [float(x) for x in feats[i]],
                "now": now, "arrivals": int(obs.arrivals[i]), "cold_starts": int(obs.cold_starts[i]),
                "completions": int(obs.completions[i]), "in_flight": int(obs.in_flight[i]),
                "peak_in_flight": int(obs.peak_in_flight[i]), "alive": int(obs.alive[i]),
                "starting": int(obs.starting[i]), "busy": int(obs.busy[i]), "idle_warm": int(obs.idle_warm[i]),
                "concurrency": float(obs.concurrency[i]), "busy_gb_s": float(obs.busy_gb_s[i]),
                "idle_gaps": int(gaps[i]), "idle_gap_s": float(gap_s[i]),
                "startup_s": None if obs.startup_s is None else float(obs.startup_s[i]),
                "scale_to": None if actions.scale_to is None else int(actions.scale_to[i]),
                "prewarm": None if actions.prewarm is None else int(actions.prewarm[i])}
        return actions


    def _as_live(self, obs, k: int):
        """The replay's observation with the fields `substitute` replaced by what the live policy saw at tick k
        (functions the live record has no row for keep replay's values): which inputs make the decisions part."""
        changes = {}
        if "idle_times" in self.substitute:  # the gaps that ended in the tick, as the live observer logged them
            f, g = [np.asarray(obs.idle_time_func)], [np.asarray(obs.idle_time_s)]
            keep = np.ones(len(f[0]), bool)
            for i, name in enumerate(self.names):
                row = self.live.get((name, k))
                if row is not None and row.get("idle_times") is not None:
                    keep &= f[0] != i
                    f.append(np.full(len(row["idle_times"]), i, np.int32))
                    g.append(np.asarray(row["idle_times"], np.float64))
            f[0], g[0] = f[0][keep], g[0][keep]
            changes["idle_time_func"] = np.concatenate(f).astype(np.int32)
            changes["idle_time_s"] = np.concatenate(g)
        for field in self.substitute:
            if field == "idle_times":
                continue
            values = getattr(obs, field)
            if np.ndim(values) == 0:  # dt, now: the same for every function
                rows = [self.live[(name, k)] for name in self.names if (name, k) in self.live]
                changes[field] = type(values)(rows[0][field]) if rows and field in rows[0] else values
                continue
            out = np.array(values, copy=True)
            for i, name in enumerate(self.names):
                row = self.live.get((name, k))
                if row is not None and row.get(field) is not None:
                    out[i] = row[field]
            changes[field] = out
        return dataclasses.replace(obs, **changes)


def replay_rows(workdir: Path, report: dict, label: str = "prewarmer", live: dict | None = None,
                substitute: tuple[str, ...] = (), shards: int = 0) -> dict[tuple[str, int], dict]:
    """Replay's rows; `shards` > 0: one policy per group of functions that the sidecar's `shards` shards put
    together (each live shard runs a policy of its own), else one policy for all (as `--simulate` did)."""
    from prewarmer.load.schedule import Schedule
    from prewarmer.load.simulate import replay_of_run, shard_groups, worker_startups
    from prewarmer.registry import policy_factory
    from prewarmer.sim.replay import run_shard

    schedule = Schedule.load(workdir / "schedule.json")
    results = json.loads((workdir / label / "results.json").read_text())
    results["workers"] = worker_startups(workdir / label / "gateway.log")  # as the run kept them (`load.run`)
    sim = report["simulated"][label]
    compress = float(report["config"]["compress"])
    workload, cfg, _ = replay_of_run(schedule, results, compress, float(sim["offset_s"]),
                                     report["config"].get("max_workers"))
    names = list(schedule.names)
    rows: dict[tuple[str, int], dict] = {}
    for idx in shard_groups(names, shards if shards > 0 else None):
        rec = Recording(policy_factory(sim["policy"])(), [names[i] for i in idx], live, substitute)
        run_shard(workload, rec, cfg, idx=np.asarray(idx, np.int64))
        rows.update(rec.rows)
    return rows


def live_rows(workdir: Path, label: str = "prewarmer", tick_s: float = 60.0) -> dict[tuple[str, int], dict]:
    rows: dict[tuple[str, int], dict] = {}
    for line in (workdir / label / "decisions.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d.get("type") != "decision":
            continue
        k = int(round(d["policy_now"] / tick_s))
        row = {"now": d["policy_now"], "arrivals": d["arrivals"], "cold_starts": d["cold_starts"],
               "features": d.get("features"),
               "desired": d["desired"], "scale_to": d.get("scale_to"), "prewarm": d.get("prewarm"), **d.get("obs", {})}
        rows[(d["function"], k)] = row
        row.setdefault("now", d["policy_now"])
    return rows


def differs(a, b) -> bool:
    if a is None or b is None:
        return False
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) > REL_TOL * max(abs(a), abs(b), 1e-3)
    return a != b


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("report", type=Path)
    p.add_argument("--function", help="only this function (a prefix)")
    p.add_argument("--all", action="store_true", help="every tick, not only those that differ")
    p.add_argument("--shards", type=int, default=16, help="replay one policy per sidecar shard, as `--simulate` "
                   "does (the load test's sidecar runs 16); 0: one policy for all functions")
    p.add_argument("--substitute", default="", metavar="FIELD,...",
                   help="give replay's policy the live values of these Observation fields (e.g. startup_s,busy,"
                        "idle_warm) and count the ticks whose decisions still differ")
    args = p.parse_args(argv)
    report = json.loads(args.report.read_text())
    live = live_rows(args.workdir)
    substitute = tuple(x for x in args.substitute.split(",") if x)
    replay = replay_rows(args.workdir, report, live=live, substitute=substitute, shards=args.shards)
    decisions = [(name, k) for (name, k) in live if (name, k) in replay]
    parted = [(name, k) for name, k in decisions if differs(live[(name, k)].get("scale_to"),
                                                              replay[(name, k)].get("scale_to"))]
    print(f"scale_to differs on {len(parted)} of {len(decisions)} function-ticks"
          + (f" (replay given the live {', '.join(substitute)})" if substitute else ""))
    by_fn: dict[str, list[int]] = defaultdict(list)
    for name, k in sorted(set(replay) | set(live)):
        by_fn[name].append(k)
    first: dict[str, tuple[int, str]] = {}
    for name, ks in by_fn.items():
        if args.function and not name.startswith(args.function):
            continue
        print(f"== {name}: live / replay")
        for k in ks:
            lv, rp = live.get((name, k), {}), replay.get((name, k), {})
            bad = [f for f in FIELDS if f != "desired" and differs(lv.get(f), rp.get(f))]
            if bad and name not in first:
                first[name] = (k, bad[0])
            if not (bad or args.all):
                continue
            cells = []
            for f in FIELDS + ("scale_to", "prewarm"):
                a, b = lv.get(f), rp.get(f)
                if a is None and b is None:
                    continue
                mark = "*" if f in bad else ""
                cells.append(f"{mark}{f}={_fmt(a)}/{_fmt(b)}")
            print(f"  tick {k:4d} (live t={lv.get('now', float('nan')):.1f}): " + " ".join(cells))
    print("first difference per function (tick, field):", json.dumps(first))
    from prewarmer.agents.features import FEATURE_NAMES

    for name, ks in by_fn.items():
        if args.function and not name.startswith(args.function):
            continue
        count: dict[str, int] = defaultdict(int)
        first_f = None
        for k in ks:
            a, b = live.get((name, k), {}).get("features"), replay.get((name, k), {}).get("features")
            if a is None or b is None:
                continue
            for j, (x, y) in enumerate(zip(a, b, strict=True)):
                if abs(x - y) > 0.02 + 0.02 * abs(y):
                    count[FEATURE_NAMES[j]] += 1
                    if first_f is None:
                        first_f = (k, FEATURE_NAMES[j], round(x, 3), round(y, 3))
        if count or first_f:
            print(f"features of {name}: first differing (tick, feature, live, replay) {first_f}; ticks differing "
                  f"per feature {dict(sorted(count.items(), key=lambda kv: -kv[1]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
