"""Live must match the simulator: a real load test (gateway, worker processes, Locust) and the replay of its
exact schedule agree on cold starts per function (`prewarmer loadtest --simulate`), and the check fails
when the replay is given the wrong platform."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from test_loadtest import parse

from prewarmer.load import schedule as S
from prewarmer.load.cli import cmd_loadtest
from prewarmer.load.simulate import agree, predict, worker_startups, workload_of_run

KEEP_ALIVE_S = 2.0


def short_schedule() -> S.Schedule:
    """30 s: an echo every 3 s (beyond the 2 s keep-alive: cold each time), a cpu every 1.5 s (warm after its
    first call), and bursts of three concurrent io calls at 1 s and 15 s (scale-out: cold, then released)."""
    periodic = np.arange(0.5, 30.0, 3.0)
    steady = np.arange(0.2, 30.0, 1.5)
    bursts = np.array([1.0, 1.01, 1.02, 15.0, 15.01, 15.02])
    t = np.concatenate([periodic, steady, bursts])
    func = np.concatenate([np.zeros(len(periodic)), np.ones(len(steady)), np.full(len(bursts), 2)]).astype(int)
    order = np.argsort(t, kind="stable")
    return S.Schedule(t=t[order], func=func[order], kind=func[order],
                      functions=[S.Deployment("echo", "echo", 128), S.Deployment("cpu", "cpu", 128),
                                 S.Deployment("io", "io", 128)],
                      kinds=["echo", "cpu:5", "io:500"], duration_s=30.5, meta={"source": "test", "compress": 1.0})


def test_replay_of_a_load_test_predicts_its_cold_starts_and_fails_on_the_wrong_keep_alive(tmp_path, capsys):
    sched = short_schedule()
    path = sched.save(tmp_path / "schedule.json")
    out = tmp_path / "report.json"
    args: argparse.Namespace = parse(["--schedule", str(path), "--gateway-keep-alive", f"{KEEP_ALIVE_S:g}s",
                                      "--simulate", "--json", str(out), "--workdir", str(tmp_path / "work")])
    assert cmd_loadtest(args) == 0, capsys.readouterr().err
    assert "predicted" in capsys.readouterr().out  # the table of predicted beside measured
    doc = json.loads(out.read_text())
    sim = doc["simulated"]["baseline"]
    assert sim["policy"] == f"fixed:{KEEP_ALIVE_S:g}s"
    measured = sim["measured_cold_starts"]
    assert measured >= 10 + 1 + 6 - 2  # every echo call, the first cpu call, both bursts (a little slack)
    assert sim["agree"], sim
    for name, f in sim["per_function"].items():
        assert abs(f["predicted"] - f["measured"]) <= 1, (name, f)

    # Shown to fail: replayed as a platform with a 10x longer keep-alive, the prediction disagrees.
    results = json.loads((tmp_path / "work" / "baseline" / "results.json").read_text())
    # Replay took the workers' own start-ups from the gateway's log: one for every cold start at least.
    results["workers"] = worker_startups(tmp_path / "work" / "baseline" / "gateway.log")
    assert len(results["workers"]["startup_ms"]) >= measured
    assert set(results["workers"]["function"]) == set(sim["per_function"])
    wrong = predict(sched, results, None, 10 * KEEP_ALIVE_S, 1.0)
    assert not wrong["agree"] and not agree(wrong["predicted_cold_starts"], measured)



def test_a_burst_beyond_the_gateways_workers_is_predicted_as_the_gateway_serves_it(tmp_path, capsys):
    """More requests at once than the gateway's 20 workers per function: 20 wait for the start-up of a worker each
    (cold); the 2 others of the burst and 6 sent 2.5 s later wait for a busy worker (capacity, not a start-up: warm).
    Replay is given the gateway's bound and queues them the same way. Before: replay had no bound and started a new
    instance for each (28 predicted), and the gateway counted the 2 as cold (22 measured) (issue 13)."""
    t = np.concatenate([np.linspace(0.5, 0.52, 22), np.linspace(3.0, 3.02, 6)])
    sched = S.Schedule(t=t, func=np.zeros(len(t), int), kind=np.zeros(len(t), int),
                       functions=[S.Deployment("io", "io", 128)], kinds=["io:4000"], duration_s=8.0,
                       meta={"source": "test", "compress": 1.0})
    path = sched.save(tmp_path / "schedule.json")
    out = tmp_path / "report.json"
    args = parse(["--schedule", str(path), "--gateway-keep-alive", "60s", "--simulate", "--json", str(out),
                  "--workdir", str(tmp_path / "work")])
    assert cmd_loadtest(args) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    workers = doc["config"]["max_workers"]
    assert workers == 20 < len(t)
    f = doc["simulated"]["baseline"]["per_function"]["io"]
    assert f["measured"] == f["predicted"] == workers, f
    # The 8 that queued waited seconds for a busy worker; replay runs them for their execution only (its own queue
    # gives them the wait), not for the wait as well.
    results = json.loads((tmp_path / "work" / "baseline" / "results.json").read_text())
    assert sum(1 for x in results["requests"]["wait_ms"] if x and x > 1000.0) >= len(t) - workers
    assert workload_of_run(sched, results, 1.0).duration.max() < 4.0 + 0.5


def test_worker_start_ups_are_read_from_the_gateways_log_and_fitted_to_the_starts_beside_them(tmp_path):
    """Three functions of own start-ups 40/60/80 ms, each slowed 20 ms by every other worker starting when it began
    (a gateway spawning processes on 2 cores) and 50 ms when the platform's scale-up started it rather than a
    request (the controller works at its tick on the same cores): the fit finds all three from the gateway's log."""
    from datetime import UTC, datetime

    from prewarmer.load.simulate import fit_startups, others_starting, worker_startups

    own = {"a": 0.04, "b": 0.06, "c": 0.08}
    rng = np.random.default_rng(3)
    spawn, names, startup, policy = [], [], [], []
    starting: list[float] = []  # ready times of the workers still starting
    t = 1_800_000_000.0
    for _ in range(300):
        t += float(rng.exponential(0.05))
        name = str(rng.choice(list(own)))
        prewarm = bool(rng.random() < 0.5)
        starting = [r for r in starting if r > t]
        dur = own[name] + 0.02 * len(starting) + 0.05 * prewarm
        starting.append(t + dur)
        spawn.append(t), names.append(name), startup.append(dur), policy.append(prewarm)
    lines = ["ts=2027-01-15T08:00:00.000 level=INFO event=gateway_start port=8080"]
    for k, (s, n, d) in enumerate(zip(spawn, names, startup, strict=True)):
        start = datetime.fromtimestamp(s, UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
        ts = datetime.fromtimestamp(s + d, UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
        reason = "prewarm" if policy[k] else "request"
        lines.append(f"ts={start} level=INFO event=worker_start function={n} worker={n}-{k} reason={reason}")
        lines.append(f"ts={ts} level=INFO event=worker_ready function={n} worker={n}-{k} pid=7 "
                     f"startup_ms={d * 1000:.3f} import_ms=1.000")
    lines.append("ts=2027-01-15T08:00:00.000 level=INFO event=worker_ready function=a startup_")  # cut short
    log = tmp_path / "gateway.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")

    workers = worker_startups(log)
    assert len(workers["startup_ms"]) == 300 and workers["function"] == names and workers["by_policy"] == policy
    counts = others_starting(np.asarray(workers["spawn_s"]), np.asarray(workers["startup_ms"]) / 1000.0)
    assert counts.max() >= 3  # the fit had starts beside others to learn from
    # By hand: two spawned at once (the second counts the first), one beside both, one after all are ready.
    assert others_starting(np.array([1.0, 0.0, 0.0, 0.1]), np.array([0.1, 0.5, 0.2, 0.5])).tolist() == [0, 0, 1, 2]
    base, per, by_policy = fit_startups(workers, ["a", "b", "c", "d"])
    assert per == pytest.approx(0.02, abs=0.002)
    assert by_policy == pytest.approx(0.05, abs=0.003)
    assert base[:3] == pytest.approx([0.04, 0.06, 0.08], abs=0.003)
    assert np.isnan(base[3])  # no start-up logged: not made up here
    # Requests alone started them: no policy term to fit.
    alone = {k: [v for v, p in zip(values, policy, strict=True) if not p] for k, values in workers.items()}
    assert fit_startups(alone, ["a", "b", "c"])[2] == 0.0
    assert fit_startups({"function": [], "spawn_s": [], "startup_ms": []}, ["a"]) is None
    assert worker_startups(tmp_path / "missing.log") == {"function": [], "spawn_s": [], "startup_ms": [],
                                                          "by_policy": []}
