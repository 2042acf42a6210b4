"""Agents: features, the marl policy, checkpoints and the training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prewarmer.actions import Actions
from prewarmer.agents import checkpoint
from prewarmer.agents.action_space import (
    FORECAST,
    FORECAST_HOLD_S,
    FORECAST_TAUS,
    HYBRID,
    KA10,
    KEEP,
    N_CHOICES,
    RELEASE,
    TRACKED,
    newsvendor_choice,
    teacher_choice,
    to_actions,
)
from prewarmer.agents.experts import ProvisioningTracker
from prewarmer.agents.features import FEATURE_NAMES, N_FEATURES, FeatureBuilder
from prewarmer.agents.marl import MARLPolicy
from prewarmer.agents.network import ActorCritic
from prewarmer.agents.train import TrainConfig, run_episode, train
from prewarmer.cli import main
from prewarmer.observation import Observation
from prewarmer.registry import policy_factory
from prewarmer.sim.replay import ReplayConfig, replay
from prewarmer.workloads.base import FunctionTable, MinuteCountWorkload


def obs_with(arrivals: np.ndarray, now: float, idle_warm: int = 0) -> Observation:
    n = len(arrivals)
    z = np.zeros(n, np.int64)
    return Observation(now=now, dt=60.0, arrivals=np.asarray(arrivals, np.int64), cold_starts=z.copy(),
                       completions=z.copy(), timed_out=z.copy(), alive=z + idle_warm, starting=z, busy=z,
                       idle_warm=z + idle_warm, in_flight=z, peak_in_flight=z,
                       concurrency=np.zeros(n), wasted_gb_s=np.zeros(n), busy_gb_s=np.zeros(n),
                       memory_mb=np.full(n, 256.0), idle_time_func=np.empty(0, np.int32),
                       idle_time_s=np.empty(0), startup_s=np.ones(n))


def periodic_workload(n: int = 12, minutes: int = 240, period: int = 10, memory_mb: float = 1024.0):
    counts = np.zeros((n, minutes), np.int32)
    for f in range(n):
        counts[f, (f % period)::period] = 1
    table = FunctionTable(names=[f"p{f}" for f in range(n)], apps=np.arange(n, dtype=np.int32),
                          app_names=[f"p{f}" for f in range(n)], memory_mb=np.full(n, memory_mb),
                          cold_start_s=np.full(n, np.nan))
    pct = np.tile(np.array([100, 100, 150, 200, 250, 300, 300], float), (n, 1))
    return MinuteCountWorkload(table, counts, pct)


def test_hazard_of_a_periodic_function() -> None:
    fb = FeatureBuilder(2)
    for m in range(100):
        feats = fb.update(obs_with(np.array([1 if m % 10 == 0 else 0, 0]), 60.0 * (m + 1)))
    assert feats.shape == (2, N_FEATURES) and np.isfinite(feats).all()
    # Last arrival at minute 90, now after minute 99: 9 ticks idle, the next one is due within a tick.
    h1 = FEATURE_NAMES.index("hazard_1")
    assert feats[0, h1] == pytest.approx(1.0)
    fb.update(obs_with(np.array([1, 0]), 6060.0))  # it came: right after, nothing is due for 9 ticks
    f2 = fb.update(obs_with(np.array([0, 0]), 6120.0))
    assert f2[0, h1] == pytest.approx(0.0)
    assert f2[1, h1] == pytest.approx(0.0)  # never invoked: rate fallback gives 0


def test_action_translation() -> None:
    obs = obs_with(np.zeros(3), 60.0)
    obs.idle_warm[:] = [0, 2, 0]
    acts, ka, pw = to_actions(np.array([RELEASE, RELEASE, KEEP]), obs, np.full(3, 600.0), np.zeros(3))
    assert list(acts.release_idle > 0) == [True, True, False]
    assert ka.tolist() == [0.0, 0.0, 600.0] and pw.tolist() == [0.0, 0.0, 0.0]
    hyb = Actions(keep_alive_s=np.array([66.0, 14400.0, 120.0]), surplus_keep_alive_s=np.array([66.0, 600.0, 120.0]),
                  prewarm_delay_s=np.array([540.0, 0.0, 0.0]))
    acts, ka, pw = to_actions(np.array([HYBRID, KEEP, HYBRID]), obs, np.full(3, 600.0), np.array([0.0, 30.0, 0.0]),
                              hyb)
    assert ka.tolist() == [66.0, 600.0, 120.0] and pw.tolist() == [540.0, 30.0, 0.0]
    assert np.isnan(acts.keep_alive_s[1]) and acts.prewarm_delay_s[0] == 540.0 and np.isnan(acts.prewarm_delay_s[1])
    # Forecast choices scale to the chosen quantile of the next peak; idle instances wait for the next decision.
    from prewarmer.forecast.peak import TAUS

    q = np.tile(np.arange(len(TAUS), dtype=float) + 2.5, (3, 1))  # quantile k predicts k + 2.5 instances
    first, last = FORECAST[0], FORECAST[-1]
    acts, ka, pw = to_actions(np.array([first, last, HYBRID]), obs, np.full(3, 600.0), np.full(3, 30.0), hyb, q)
    col = [TAUS.index(FORECAST_TAUS[0]), TAUS.index(FORECAST_TAUS[-1])]
    assert acts.scale_to.tolist() == [col[0] + 3, col[1] + 3, -1]
    assert acts.surplus_keep_alive_s.tolist()[:2] == [FORECAST_HOLD_S] * 2
    assert ka.tolist() == [max(66.0, FORECAST_HOLD_S), 14400.0, 120.0] and pw.tolist() == [0.0, 0.0, 0.0]
    # A forecast of no need trims to one instance while one is alive (its keep-alive decides), starts none.
    obs.alive[:] = [2, 0, 1]
    acts, _, _ = to_actions(np.full(3, first), obs, np.full(3, 600.0), np.zeros(3), hyb, np.zeros((3, len(TAUS))))
    assert acts.scale_to.tolist() == [1, 0, 1]
    # 'forecast tracked' stands for each function's tracked choice.
    tracked = np.array([last, HYBRID, KA10])
    acts, ka, _ = to_actions(np.full(3, TRACKED), obs, np.full(3, 600.0), np.zeros(3), hyb, q, tracked)
    assert acts.scale_to.tolist() == [col[1] + 3, -1, -1]
    assert ka.tolist() == [max(66.0, FORECAST_HOLD_S), 14400.0, 600.0]
    with pytest.raises(ValueError, match="tracked"):
        to_actions(np.full(3, TRACKED), obs, np.full(3, 600.0), np.zeros(3), hyb, q)


def test_newsvendor_quantile_prices_an_idle_instance_against_a_cold_start() -> None:
    # cold start costs 1, an idle GB-tick 0.1: a 128 MB function wants q(1/1.0125) -> the highest quantile,
    # a 2.5 GB one q(1/1.25 = 0.8) -> the nearest offered (0.75 or 0.85).
    choice = newsvendor_choice(np.array([128.0, 2560.0]), 1.0, 0.1)
    assert choice[0] == FORECAST[-1] and FORECAST_TAUS[choice[1] - FORECAST[0]] in (0.75, 0.85)


def test_teacher_rule_keeps_busy_functions_alive_while_warming_up_then_tracks() -> None:
    rate = np.array([5.0, 0.06, 0.05])
    assert teacher_choice(rate, warming_up=True).tolist() == [KA10, KA10, HYBRID]
    assert teacher_choice(rate, warming_up=False).tolist() == [TRACKED, TRACKED, HYBRID]


def test_tracker_falls_back_to_the_newsvendor_quantile_until_warm() -> None:
    from prewarmer.forecast.peak import TAUS

    tr = ProvisioningTracker(np.full(2, 1024.0), 0.1, warmup=10)
    for _ in range(5):
        tr.update(np.full(2, 3.0))
        tr.propose(np.tile(np.arange(len(TAUS), dtype=float), (2, 1)), np.zeros((2, 20)))
    assert tr.best().tolist() == newsvendor_choice(np.full(2, 1024.0), 1.0, 0.1).tolist()


def test_tracker_picks_the_option_that_cost_its_function_least() -> None:
    from prewarmer.forecast.peak import TAUS

    # Function 0 rises and falls smoothly and its forecast is right at q90 (q75 = need - 2 … q98 = need + 2):
    # q90 costs nothing, the keep-alive pool (largest of the last 10 peaks) idles on every way down.
    # Function 1 (128 MB: an idle instance is cheap) bursts to 40 every 10th tick; its forecast never sees
    # it coming (all quantiles 1): the keep-alive pool holds the burst's instances until the next one.
    ticks = 80
    need = np.zeros((2, ticks + 1))
    need[0] = 10 + np.round(6 * np.sin(np.arange(ticks + 1) / 4.0))
    need[1, ::10] = 40.0
    offsets = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0])  # per TAUS column: q90 -> +0
    assert TAUS[int(np.flatnonzero(offsets == 0)[0])] == 0.9
    tr = ProvisioningTracker(np.array([1024.0, 128.0]), 0.1, halflife=50, warmup=10)
    peaks = np.zeros((2, 20))
    for t in range(ticks):
        tr.update(need[:, t])
        peaks[:, 1:] = peaks[:, :-1]
        peaks[:, 0] = need[:, t]
        q = np.stack([need[0, t + 1] + offsets, np.ones(len(TAUS))])
        tr.propose(q, peaks)
    assert tr.best().tolist() == [FORECAST[FORECAST_TAUS.index(0.9)], KA10]


def _bursts_at_tick_start(lag: bool) -> ProvisioningTracker:
    """A function with 9 requests every 5th tick, early in it (start-ups take 15% of a tick), its forecast
    exactly right: the pool rises to 9 at each burst's tick and falls to 0 after it."""
    from prewarmer.forecast.peak import TAUS

    ticks = 60
    need = np.zeros(ticks + 1)
    need[5::5] = 9.0
    tr = ProvisioningTracker(np.array([1024.0]), 0.001, halflife=50, warmup=10, lag=lag)
    peaks = np.zeros((1, 20))
    for t in range(ticks):
        tr.update(need[t:t + 1], arrivals=need[t:t + 1], startup_share=np.array([0.15]), in_flight=np.zeros(1))
        peaks[:, 1:] = peaks[:, :-1]
        peaks[:, 0] = need[t]
        tr.propose(np.full((1, len(TAUS)), need[t + 1]), peaks)
    return tr


def test_tracker_charges_a_pool_raised_at_the_tick_for_its_start_ups() -> None:
    # Without `lag`, the forecast's pool (ready at the tick, idle never) beats holding the burst's instances (the
    # keep-alive pool idles 4 ticks of 5). The forecast's new instances are ready only a start-up into the tick:
    # the burst's first requests wait for them, about 9 x 0.15 per burst; at a low idle price holding them wins.
    plain, tr = _bursts_at_tick_start(lag=False), _bursts_at_tick_start(lag=True)
    assert plain.best().tolist() == [FORECAST[0]]
    assert tr.best().tolist() == [KA10]
    # Only the forecast's start-ups were charged: the keep-alive pool already had the burst's instances.
    assert tr.short[0, -1] == plain.short[0, -1]
    assert tr.short[0, 0] > plain.short[0, 0] + 1.0


def _model(seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    return ActorCritic(N_CHOICES)


def test_inference_is_deterministic_and_batched() -> None:
    w = periodic_workload()
    m = _model()
    runs = [replay(w, lambda: MARLPolicy(model=m), ReplayConfig(seed=1)).metrics() for _ in range(2)]
    assert runs[0] == runs[1]
    pol = MARLPolicy(model=m)
    feats = np.random.default_rng(0).normal(size=(10_000, N_FEATURES)).astype(np.float32)
    a1, _ = pol.act(feats)
    a2, _ = pol.act(feats)
    assert a1.shape == (10_000,) and (a1 == a2).all()


def test_checkpoint_round_trip_and_clear_errors(tmp_path) -> None:
    m = _model(3)
    path = tmp_path / "m.pt"
    checkpoint.save(path, m, {"note": "test"})
    loaded, doc = checkpoint.load(path)
    x = torch.randn(5, N_FEATURES)
    assert torch.equal(loaded.logits(x), m.eval().logits(x)) and doc["meta"]["note"] == "test"

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")
    doc = torch.load(path, weights_only=True)
    doc["features"] = doc["features"][:-1]
    torch.save(doc, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="other features"):
        checkpoint.load(tmp_path / "other.pt")
    doc = torch.load(path, weights_only=True)
    doc["model"]["actor.0.weight"] = torch.zeros(3, 3)
    torch.save(doc, tmp_path / "shape.pt")
    with pytest.raises(checkpoint.CheckpointError, match="weights do not match"):
        checkpoint.load(tmp_path / "shape.pt")
    doc = torch.load(path, weights_only=True)
    doc["format"] = "prewarmer-marl-v1"
    torch.save(doc, tmp_path / "old.pt")
    with pytest.raises(checkpoint.CheckpointError, match="old.pt: a prewarmer-marl-v1 checkpoint.*retrain"):
        checkpoint.load(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="marl"):
        policy_factory(f"marl:{bad}")


def test_cli_rejects_a_corrupt_checkpoint(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    code = main(["replay", "--duration", "10m", "--functions", "5", "--policy", f"marl:{bad}", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt" in err[0]


def _greedy_reward(model: ActorCritic, w, idx, cfg: TrainConfig) -> float:
    roll = run_episode(model, w, idx, cfg, seed=123, sample=False)
    return float(roll["rewards"].mean())


def test_training_improves_reward_on_a_small_workload(tmp_path) -> None:
    # Big idle instances of functions called every 10 minutes: a fixed 10-minute keep-alive wastes a lot;
    # the reward (cold start 1, waste 0.03 per GB-minute) pays to release after each call and prewarm before the next.
    w = periodic_workload(n=16, minutes=180, period=10, memory_mb=4096.0)
    cfg = TrainConfig(episodes=12, window_minutes=120, functions_per_episode=16, checkpoint_every=6, seed=1,
                      minibatch=1024, epochs=4, lr=3e-3, forecaster_steps=50, clone_episodes=0)
    idx = np.arange(16)
    torch.manual_seed(cfg.seed)
    before = _greedy_reward(ActorCritic(N_CHOICES, hidden=cfg.hidden), w, idx, cfg)
    history = train(w, cfg, tmp_path / "m.pt")
    assert len(history) == 12
    model, doc = checkpoint.load(tmp_path / "m.pt")
    after = _greedy_reward(model, w, idx, cfg)
    assert after > before + 0.1 * abs(before), (before, after)
    # Resuming continues the same history.
    cfg2 = cfg.model_copy(update={"episodes": 14})
    history2 = train(w, cfg2, tmp_path / "m2.pt", resume=tmp_path / "m.pt")
    assert [h["episode"] for h in history2] == list(range(1, 15))


def test_cloning_teaches_the_rule_and_ppo_keeps_near_it(tmp_path) -> None:
    # Busy functions (tracked forecasts) and rare ones (hybrid): the actor must learn to tell them apart.
    rng = np.random.default_rng(0)
    n, minutes = 12, 150
    counts = np.zeros((n, minutes), np.int32)
    counts[:6] = rng.poisson(np.linspace(2, 20, 6)[:, None], (6, minutes))
    counts[6:, ::30] = 1
    table = FunctionTable(names=[f"f{i}" for i in range(n)], apps=np.arange(n, dtype=np.int32),
                          app_names=[f"f{i}" for i in range(n)], memory_mb=np.tile([256.0, 2048.0], n // 2),
                          cold_start_s=np.full(n, np.nan))
    pct = np.tile(np.array([2000, 2000, 4000, 6000, 8000, 10000, 10000], float), (n, 1))
    w = MinuteCountWorkload(table, counts, pct)
    cfg = TrainConfig(episodes=2, window_minutes=120, functions_per_episode=n, seed=2, minibatch=512,
                      forecaster_steps=300, clone_episodes=10, checkpoint_every=1)
    pre = []
    train(w, cfg, tmp_path / "m.pt", on_phase=lambda phase, rec: pre.append((phase, rec)))
    forecaster = [rec for phase, rec in pre if phase == "forecaster"][0]
    assert forecaster["samples"] > 0 and forecaster["coverage"][-1] > forecaster["coverage"][0]
    clones = [rec for phase, rec in pre if phase == "clone"]
    assert len(clones) == 10 and clones[-1]["agreement"] > 0.9 and clones[-1]["agreement"] > clones[0]["agreement"]
    model, doc = checkpoint.load(tmp_path / "m.pt")
    assert doc["meta"]["pretraining"]["clone"][-1]["agreement"] == clones[-1]["agreement"]
    roll = run_episode(model, w, np.arange(n), cfg, seed=5, sample=False)
    late = slice(30, None)  # after the forecaster's history has filled
    agree = (roll["choices"][late] == roll["rules"][late]).mean()
    assert agree > 0.9, agree
    assert (roll["rules"][late, :6] == TRACKED).all()
    # A rare function (one call every 30 ticks) is tracked in the five ticks from each call (its rate EWMA
    # 0.1, 0.09, … >= 0.06), else hybrid.
    rare = roll["rules"][late, 6:]
    assert set(np.unique(rare)) == {TRACKED, HYBRID} and abs((rare == TRACKED).mean() - 5 / 30) < 0.05


def test_online_learning_updates_and_guard_falls_back_to_hybrid() -> None:
    from prewarmer.agents.action_space import KA30
    from prewarmer.agents.online import OnlineMARLPolicy
    from prewarmer.sim.replay import run_shard

    # An agent that always keeps idle instances 30 minutes wastes far more than hybrid on functions called
    # every 10 minutes (hybrid learns to release and prewarm): the guard must hand them to hybrid.
    w = periodic_workload(n=6, minutes=240, period=10, memory_mb=2048.0)
    m = _model(5)
    with torch.no_grad():
        m.actor[-1].bias.fill_(-20.0)
        m.actor[-1].bias[KA30] = 20.0
    before = [p.detach().clone() for p in m.parameters()]
    pol = OnlineMARLPolicy(model=m, update_every=20, min_gaps=8, fair=None)  # the cold-share guard would hold them
    res = run_shard(w, pol, ReplayConfig(seed=2))
    assert pol.updates >= 5
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))
    assert pol.fallback.all(), pol.events
    assert len(res.events) == 6 and all("falls back to hybrid" in e and "waste" in e for e in res.events)
    # After the fallback the platform follows hybrid: the functions' waste is far below 30-minute keep-alive.
    fixed30 = replay(w, policy_factory("fixed:30m"), ReplayConfig(seed=2)).metrics()
    assert res.metrics()["wasted_gb_s"] < 0.8 * fixed30["wasted_gb_s"]


def test_reward_weights() -> None:
    from prewarmer.agents.train import RewardWeights, reward

    obs = obs_with(np.array([10, 0, 1]), 60.0)
    obs.cold_starts[:] = [2, 0, 1]
    obs.wasted_gb_s[:] = [0.0, 60.0 * 4, 0.0]  # 4 GB-minutes idle for the second function
    obs.busy_gb_s[:] = [30.0, 0.0, 0.0]
    w = RewardWeights(cold_start=1.0, waste_per_gb_min=0.5, latency_per_s=0.25, utilization_bonus=1.0)
    assert reward(obs, w).tolist() == pytest.approx([-2 - 0.5 + 1.0, -2.0, -1 - 0.25])
    per = reward(obs, w.model_copy(update={"per_invocation": True}))
    assert per.tolist() == pytest.approx([(-2 - 0.5 + 1.0) / 10, -2.0, -1.25])


def test_shipped_checkpoint_is_small_and_runs() -> None:
    assert checkpoint.DEFAULT_CHECKPOINT.stat().st_size < 5 * 1024 * 1024
    _, doc = checkpoint.load(checkpoint.DEFAULT_CHECKPOINT)
    assert "optimizer" not in doc and doc["meta"]["episodes"] > 0 and "prewarmer train" in doc["meta"]["note"]
    w = periodic_workload(n=8, minutes=120)
    m1 = replay(w, policy_factory("marl"), ReplayConfig(seed=4)).metrics()
    m2 = replay(w, policy_factory("marl"), ReplayConfig(seed=4)).metrics()
    assert m1 == m2 and m1["invocations"] == int(w.counts.sum())


def test_training_at_a_shorter_tick_records_its_peaks_and_its_policies_act_at_it(tmp_path) -> None:
    """`TrainConfig.tick_s`: the forecaster learns from peaks of that period, the episodes tick at it, and a
    `marl` policy of the checkpoint takes it by default (`tick=` overrides it)."""
    from prewarmer.agents.train import record_peaks

    w = periodic_workload(n=4, minutes=30, period=5, memory_mb=512.0)
    peaks, arrivals = record_peaks(w, tick_s=20.0)
    minute_peaks, minute_arrivals = record_peaks(w)
    assert peaks.shape[1] == 3 * minute_peaks.shape[1] - 2  # 90 ticks and the tail, against 30 and the tail
    assert arrivals.sum() == minute_arrivals.sum() > 0
    cfg = TrainConfig(episodes=1, window_minutes=20, functions_per_episode=4, seed=0, minibatch=256,
                      forecaster_steps=20, clone_episodes=1, tick_s=20.0)
    roll = run_episode(ActorCritic(N_CHOICES, hidden=cfg.hidden), w, np.arange(4), cfg, seed=0)
    assert roll["features"].shape[0] == 90  # one decision per 20-s tick of the 30 minutes
    train(w, cfg, tmp_path / "m.pt")
    assert policy_factory(f"marl:{tmp_path / 'm.pt'}")().tick_s == 20.0
    assert policy_factory(f"marl:{tmp_path / 'm.pt'},tick=60s")().tick_s == 60.0
    assert MARLPolicy().tick_s == 20.0  # the shipped checkpoint was trained at 20-s ticks
