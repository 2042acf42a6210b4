"""Centralized training of the shared agent network in the replay simulator, in three phases.

Read top to bottom (`train`):
1. the peak forecaster: one replay of the training workload records every function's peak of
   requests in flight per tick; the quantile network is fitted to them (pinball loss);
2. behaviour cloning: episodes in which the hand-written rule (`action_space.teacher_choice`) acts;
   the actor learns to choose as the rule does (cross-entropy), the critic learns the returns;
3. PPO: each episode replays a random window of the training workload for a random subset of
   functions; every function's agent acts on its local features with the shared actor (sampling);
   rewards come from each function's own cold starts and waste; advantages use GAE with a critic
   that also sees the mean features of all agents (centralized value); then a few PPO epochs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from prewarmer.agents import checkpoint
from prewarmer.agents.action_space import N_CHOICES
from prewarmer.agents.marl import MARLPolicy
from prewarmer.agents.network import ActorCritic
from prewarmer.coord.policy import CoordinatedPolicy
from prewarmer.forecast import peak as peak_forecast
from prewarmer.observation import Observation
from prewarmer.platform import begin, tick
from prewarmer.policies.keepalive import KeepAlivePolicy
from prewarmer.sim.env import ReplayEnv
from prewarmer.sim.result import ReplayConfig
from prewarmer.workloads.base import MinuteCountWorkload, Workload


class RewardWeights(BaseModel):
    """Reward of one agent for one tick = -(penalties) + bonus, from its own function's outcomes."""

    cold_start: float = Field(1.0, ge=0, description="per cold start")
    latency_per_s: float = Field(0.0, ge=0, description="per second of start-up delay added to requests")
    sla_violation: float = Field(0.0, ge=0, description="per cold start whose delay exceeds sla_s")
    sla_s: float = Field(0.5, gt=0)
    waste_per_gb_min: float = Field(0.07, ge=0, description="per GB-minute held idle (energy); also the price "
                                                            "the agents score their provisioning options with")
    utilization_bonus: float = Field(0.0, ge=0, description="times busy / (busy + idle) memory over the tick")
    per_invocation: bool = Field(False, description="divide by the tick's invocations (at least 1), so a rare "
                                                    "function's cold start weighs like a busy one's cold-start rate")
    timeout: float = Field(1.0, ge=0, description="per request dropped at the queue deadline (under a budget)")
    decommit_compensation: float = Field(1.0, ge=0, description="times the compensation for awards lost to "
                                                                "higher bids (coordinated training)")


class TrainConfig(BaseModel):
    episodes: int = Field(200, ge=0, description="PPO episodes after the forecaster and the cloning (0: none)")
    forecaster_steps: int = Field(4000, ge=0, description="Adam steps fitting the peak forecaster (0: keep it)")
    clone_episodes: int = Field(40, ge=0, description="episodes of behaviour cloning of the rule before PPO")
    clone_epochs: int = Field(8, ge=1)
    clone_lr: float = Field(1e-3, gt=0)
    clone_coef: float = Field(0.5, ge=0, description="weight of the rule's cross-entropy kept in the PPO loss: PPO "
                                                     "departs from the rule only where the advantage pays for it")
    window_minutes: int = Field(360, ge=10)
    tick_s: float = Field(60.0, ge=10.0, le=60.0, description="the control period the agents act at (`marl`'s "
                                                              "`tick`); a checkpoint's policies take it by default")
    functions_per_episode: int = Field(256, ge=1)
    gamma: float = 0.95
    gae_lambda: float = 0.9
    lr: float = 3e-4
    clip: float = 0.2
    epochs: int = 3
    minibatch: int = 4096
    entropy: float = 0.01
    value_coef: float = 0.5
    hidden: int = 64
    seed: int = 0
    checkpoint_every: int = 10
    reward: RewardWeights = Field(default_factory=RewardWeights)
    # Training under a memory budget: the episode's instances share `memory_cap_gb` (its agents see the
    # pressure in their features, so the centralized critic does too); `coordinated` trains them inside
    # the auction of `<policy>+bid`, decommitment compensation entering their reward.
    memory_cap_gb: float | None = Field(None, gt=0)
    queue_deadline_s: float = Field(30.0, gt=0)
    coordinated: bool = False


def reward(obs: Observation, w: RewardWeights, compensation: np.ndarray | None = None) -> np.ndarray:
    startup = obs.startup_s if obs.startup_s is not None else np.ones(len(obs.arrivals))
    r = -w.cold_start * obs.cold_starts
    r -= w.timeout * obs.timed_out
    if compensation is not None:
        r += w.decommit_compensation * compensation
    r -= w.latency_per_s * obs.cold_starts * startup
    r -= w.sla_violation * obs.cold_starts * (startup > w.sla_s)
    r -= w.waste_per_gb_min * obs.wasted_gb_s / 60.0
    held = obs.busy_gb_s + obs.wasted_gb_s
    r += w.utilization_bonus * np.where(held > 0, obs.busy_gb_s / np.maximum(held, 1e-12), 0.0)
    if w.per_invocation:
        r = r / np.maximum(obs.arrivals, 1)
    return r.astype(np.float32)


def window(workload: Workload, m0: int, m1: int) -> Workload:
    """Minutes [m0, m1) of a per-minute workload (other workloads are used whole)."""
    if not isinstance(workload, MinuteCountWorkload):
        return workload
    return MinuteCountWorkload(workload.functions, workload.counts[:, m0:m1], workload.duration_pct_ms,
                               start_minute=workload.start_minute + m0, description=workload.describe())


def record_peaks(workload: Workload, seed: int = 0, tick_s: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """(peaks, arrivals), each (functions, ticks of `tick_s`): one replay of the workload under a 10-minute
    keep-alive.

    A function's peak of requests in flight hardly depends on the policy (without a memory cap), so
    one replay serves as the forecaster's training data."""
    env = ReplayEnv(workload, ReplayConfig(seed=seed, top_functions=0), tick_s=tick_s)
    env.reset()
    policy = KeepAlivePolicy(600.0)
    begin(policy, env, env.functions, 0.0)
    peaks, arrivals = [], []
    for now in env.tick_times():
        obs = tick(policy, env, now).obs
        peaks.append(obs.peak_in_flight)
        arrivals.append(obs.arrivals)
    obs = env.finish()
    peaks.append(obs.peak_in_flight)
    arrivals.append(obs.arrivals)
    return np.stack(peaks, axis=1), np.stack(arrivals, axis=1)


def idle_gb_tick_cost(cfg: TrainConfig) -> float:
    """An idle GB held one tick, priced in cold starts: how the agents score their provisioning options."""
    return cfg.reward.waste_per_gb_min / max(cfg.reward.cold_start, 1e-9)


def run_episode(model: ActorCritic, workload: Workload, idx: np.ndarray, cfg: TrainConfig, seed: int,
                sample: bool = True, teacher: bool = False) -> dict[str, np.ndarray]:
    """One rollout: per tick the features, choices, log-probs, values and the rewards that followed.

    `teacher`: the rule chooses (behaviour cloning data) instead of the actor."""
    capped = cfg.memory_cap_gb is not None
    env = ReplayEnv(workload, ReplayConfig(seed=seed, top_functions=0, memory_cap_gb=cfg.memory_cap_gb,
                                           queue_deadline_s=cfg.queue_deadline_s if capped else None),
                    idx=idx, tick_s=cfg.tick_s)
    env.reset()
    # Trained at the fixed price of the reward, with hybrid's windows as they are: the inference-time
    # settings (adaptive price, priced keep-alive cap) act on top of what the network learned.
    policy = MARLPolicy(model=model, sample=sample, seed=seed, teacher=True, teacher_acts=teacher,
                        cold_target=None, keep_alive_cap_s=None, lag=False, keep_logp=True, tick_s=cfg.tick_s)
    driver = CoordinatedPolicy(policy) if cfg.coordinated else policy
    begin(driver, env, env.functions, 0.0)
    feats, choices, logps, rules, rewards, colds, wastes, arrivals = [], [], [], [], [], [], [], []

    def outcome(obs: Observation) -> None:  # of the previous tick's choices
        rewards.append(reward(obs, cfg.reward, getattr(driver, "compensation", None)))
        colds.append(obs.cold_starts.sum())
        wastes.append(obs.wasted_gb_s.sum())
        arrivals.append(obs.arrivals.sum())

    for now in env.tick_times():
        decision = tick(driver, env, now)
        if feats:
            outcome(decision.obs)
        feats.append(policy.last["features"])
        choices.append(policy.last["choice"])
        logps.append(policy.last["logp"])
        rules.append(policy.last["rule"])
    if feats:
        outcome(env.finish())
    return {"features": np.stack(feats), "choices": np.stack(choices), "logp": np.stack(logps),
            "rules": np.stack(rules),
            "rewards": np.stack(rewards), "cold_starts": float(np.sum(colds)), "wasted_gb_s": float(np.sum(wastes)),
            "invocations": float(np.sum(arrivals))}


def advantages(model: ActorCritic, roll: dict[str, np.ndarray], gamma: float, lam: float) -> tuple[np.ndarray, ...]:
    """GAE over time for every agent at once; values come from the centralized critic."""
    feats = torch.from_numpy(roll["features"])  # (T, F, D)
    T, F, D = feats.shape
    with torch.no_grad():
        glob = feats.mean(dim=1, keepdim=True).expand(T, F, D)
        values = model.value(feats.reshape(T * F, D), glob.reshape(T * F, D)).reshape(T, F).numpy()
    rewards = roll["rewards"]
    adv = np.zeros((T, F), np.float32)
    last = np.zeros(F, np.float32)
    for t in range(T - 1, -1, -1):
        next_v = values[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, adv + values, glob.reshape(T * F, D).numpy()


def _flat(roll: dict, returns: np.ndarray, glob: np.ndarray) -> tuple[torch.Tensor, ...]:
    """(features, global summaries, choices, returns) of a rollout as flat (agent-tick) tensors."""
    T, F, D = roll["features"].shape
    return (torch.from_numpy(roll["features"].reshape(T * F, D)), torch.from_numpy(glob),
            torch.from_numpy(roll["choices"].reshape(-1).astype(np.int64)),
            torch.from_numpy(returns.reshape(-1).astype(np.float32)))


def _descend(model: ActorCritic, opt: torch.optim.Optimizer, n: int, epochs: int, cfg: TrainConfig,
             rng: np.random.Generator, step: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
             ) -> dict[str, float]:
    """Shuffled minibatch epochs over n samples; `step(indices)` gives the loss and stats to average."""
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, cfg.minibatch):
            loss, stats = step(order[start:start + cfg.minibatch])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            steps += 1
    return {k: v / max(steps, 1) for k, v in totals.items()}


def ppo_update(model: ActorCritic, opt: torch.optim.Optimizer, roll: dict, adv: np.ndarray, returns: np.ndarray,
               glob: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> dict[str, float]:
    x, g, a, ret = _flat(roll, returns, glob)
    old_logp = torch.from_numpy(roll["logp"].reshape(-1))
    rules = torch.from_numpy(roll["rules"].reshape(-1).astype(np.int64)) if "rules" in roll else None
    adv_t = torch.from_numpy(adv.reshape(-1))
    adv_t = (adv_t - adv_t.mean()) / (adv_t.std() + 1e-8)

    def step(mb: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model.logits(x[mb])
        logp_all = torch.log_softmax(logits, dim=1)
        logp = logp_all.gather(1, a[mb][:, None]).squeeze(1)
        ratio = torch.exp(logp - old_logp[mb])
        pg = -torch.min(ratio * adv_t[mb], torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip) * adv_t[mb]).mean()
        vl = ((model.value(x[mb], g[mb]) - ret[mb]) ** 2).mean()
        ent = -(torch.softmax(logits, dim=1) * logp_all).sum(dim=1).mean()
        loss = pg + cfg.value_coef * vl - cfg.entropy * ent
        if rules is not None and cfg.clone_coef > 0:
            loss = loss + cfg.clone_coef * torch.nn.functional.cross_entropy(logits, rules[mb])
        return loss, {"policy_loss": pg.item(), "value_loss": vl.item(), "entropy": ent.item()}

    return _descend(model, opt, len(x), cfg.epochs, cfg, rng, step)


def clone_update(model: ActorCritic, opt: torch.optim.Optimizer, roll: dict, returns: np.ndarray, glob: np.ndarray,
                 cfg: TrainConfig, rng: np.random.Generator) -> dict[str, float]:
    """Behaviour cloning step: the actor imitates the rule's choices, the critic fits the returns."""
    x, g, a, ret = _flat(roll, returns, glob)

    def step(mb: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model.logits(x[mb])
        ce = torch.nn.functional.cross_entropy(logits, a[mb])
        vl = ((model.value(x[mb], g[mb]) - ret[mb]) ** 2).mean()
        return ce + cfg.value_coef * vl, {"clone_loss": ce.item(), "value_loss": vl.item(),
                                          "agreement": (logits.argmax(dim=1) == a[mb]).float().mean().item()}

    return _descend(model, opt, len(x), cfg.clone_epochs, cfg, rng, step)


def sample_episode(workload: Workload, cfg: TrainConfig, rng: np.random.Generator,
                   ) -> tuple[Workload, np.ndarray, list[int]]:
    """A random window of the workload, a random subset of the functions invoked in it, and the window's minutes."""
    minutes = int(round(workload.horizon_s / 60))
    counts = getattr(workload, "counts", None)
    span = min(cfg.window_minutes, minutes)
    m0 = int(rng.integers(0, minutes - span + 1))
    w = window(workload, m0, m0 + span)
    pool = np.arange(len(workload.functions))
    if counts is not None:  # functions that are invoked in the window teach something
        active = np.flatnonzero(counts[:, m0:m0 + span].sum(axis=1) > 0)
        pool = active if len(active) else pool
    idx = np.sort(rng.choice(pool, size=min(cfg.functions_per_episode, len(pool)), replace=False))
    return w, idx, [m0, m0 + span]


def _episode_record(ep: int, minutes: list[int], idx: np.ndarray, roll: dict) -> dict:
    """What the history keeps of every cloning or PPO episode."""
    return {"episode": ep + 1, "window": minutes, "functions": len(idx),
            "reward_per_tick": float(roll["rewards"].sum() / roll["rewards"].size),
            "cold_start_rate": roll["cold_starts"] / max(roll["invocations"], 1.0)}


def pretrain(model: ActorCritic, workload: Workload, cfg: TrainConfig, rng: np.random.Generator,
             on_phase: Callable[[str, dict], None] | None = None) -> dict:
    """Phases 1 and 2: fit the peak forecaster, then clone the rule into the actor (and warm up the critic)."""
    out: dict = {}
    if cfg.forecaster_steps > 0:
        t0 = time.perf_counter()
        peaks, arrivals = record_peaks(workload, seed=cfg.seed, tick_s=cfg.tick_s)
        stats = peak_forecast.fit(model.forecaster, peaks, arrivals, workload.functions.memory_mb,
                                  steps=cfg.forecaster_steps, seed=cfg.seed)
        out["forecaster"] = {**stats, "taus": list(peak_forecast.TAUS), "wall_s": time.perf_counter() - t0}
        if on_phase is not None:
            on_phase("forecaster", out["forecaster"])
    opt = torch.optim.Adam([p for name, p in model.named_parameters() if not name.startswith("forecaster.")],
                           lr=cfg.clone_lr)
    clones = []
    for ep in range(cfg.clone_episodes):
        t0 = time.perf_counter()
        w, idx, minutes = sample_episode(workload, cfg, rng)
        roll = run_episode(model, w, idx, cfg, seed=int(rng.integers(1 << 31)), teacher=True)
        _, returns, glob = advantages(model, roll, cfg.gamma, cfg.gae_lambda)
        rec = {**_episode_record(ep, minutes, idx, roll), **clone_update(model, opt, roll, returns, glob, cfg, rng),
               "wall_s": time.perf_counter() - t0}
        clones.append(rec)
        if on_phase is not None:
            on_phase("clone", rec)
    out["clone"] = clones
    return out


def train(workload: Workload, cfg: TrainConfig, out: str | Path, resume: str | Path | None = None,
          on_episode: Callable[[int, dict], None] | None = None,
          on_phase: Callable[[str, dict], None] | None = None) -> list[dict]:
    """Train and write checkpoints to `out` (every `checkpoint_every` PPO episodes and at the end);
    returns the PPO history. A resumed run skips the phases its checkpoint has done."""
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give (and keep training on one core)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = ActorCritic(N_CHOICES, hidden=cfg.hidden)
    model.idle_gb_tick_cost.fill_(idle_gb_tick_cost(cfg))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict] = []
    first = 0
    pretraining: dict | None = None
    if resume is not None:
        model, doc = checkpoint.load(resume)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        if "optimizer" in doc:
            opt.load_state_dict(doc["optimizer"])
        history = list(doc["meta"].get("history", []))
        pretraining = doc["meta"].get("pretraining")
        first = len(history)
        rng = np.random.default_rng([cfg.seed, first])
    if pretraining is None:
        pretraining = pretrain(model, workload, cfg, rng, on_phase)

    def save() -> None:
        checkpoint.save(out, model, {"config": json.loads(cfg.model_dump_json()), "history": history,
                                     "pretraining": pretraining, "workload": workload.describe()}, opt)

    if first >= cfg.episodes:  # no PPO episode left (--episodes 0): keep what the pretraining learned
        save()
    for ep in range(first, cfg.episodes):
        t0 = time.perf_counter()
        w, idx, minutes = sample_episode(workload, cfg, rng)
        roll = run_episode(model, w, idx, cfg, seed=int(rng.integers(1 << 31)))
        adv, returns, glob = advantages(model, roll, cfg.gamma, cfg.gae_lambda)
        stats = ppo_update(model, opt, roll, adv, returns, glob, cfg, rng)
        rec = {**_episode_record(ep, minutes, idx, roll), "wasted_gb_s": roll["wasted_gb_s"],
               "wall_s": time.perf_counter() - t0, **stats}
        history.append(rec)
        if on_episode is not None:
            on_episode(ep + 1, rec)
        if (ep + 1) % cfg.checkpoint_every == 0 or ep + 1 == cfg.episodes:
            save()
    return history


def plot_curve(history: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["episode"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("reward_per_tick", "cold_start_rate", "wasted_gb_s"),
                              ("reward per agent-tick", "cold-start rate (training windows)", "wasted GB-s"),
                              strict=True):
        y = np.array([h[key] for h in history])
        ax.plot(ep, y, lw=0.8, alpha=0.5)
        if len(y) >= 5:
            k = max(2, len(y) // 20)
            ax.plot(ep[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), lw=2)
        ax.set_title(title)
        ax.set_xlabel("episode")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
