"""Continuous learning for `marl`, guarded per function against the hybrid histogram policy.

The policy keeps updating the shared network from the outcomes it observes (PPO on the last
`update_every` ticks, small learning rate). A shadow hybrid policy runs on the same observations,
and its outcome is estimated from the idle gaps actually seen: with windows (prewarm p, keep-alive
k), a gap g is a cold start when g < p or g > p + k (g > k without prewarm), and it costs
min(g, p + k) - p idle seconds (plus the start-up when prewarmed). A function whose online
cold-start rate exceeds hybrid's estimate by `cold_margin`, or whose waste exceeds it by the
factor `1 + waste_margin`, is handed to hybrid for good, and the event is reported. The estimate
holds for functions whose instances serve one request at a time; functions that scaled out during
the window are judged on nothing (their scale-out waste is not comparable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prewarmer.actions import Actions
from prewarmer.agents.keep_alive import window_idle_s
from prewarmer.agents.marl import MARLPolicy
from prewarmer.agents.network import ActorCritic
from prewarmer.agents.train import TrainConfig, advantages, ppo_update, reward
from prewarmer.observation import Observation
from prewarmer.policies.base import pad
from prewarmer.policies.hybrid import HybridHistogramPolicy
from prewarmer.workloads.base import FunctionTable


class OnlineMARLPolicy(MARLPolicy):
    def __init__(self, model: ActorCritic | None = None, path: str | Path | None = None, update_every: int = 30,
                 lr: float = 1e-4, cold_margin: float = 0.05, waste_margin: float = 0.25, min_gaps: int = 20,
                 train_config: TrainConfig | None = None, seed: int = 0, **settings: float | None) -> None:
        super().__init__(model=model, path=path, sample=True, seed=seed, **settings)
        self.update_every, self.cold_margin, self.waste_margin, self.min_gaps = update_every, cold_margin, \
            waste_margin, min_gaps
        self.cfg = (train_config or TrainConfig()).model_copy(update={"lr": lr, "epochs": 1})
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.spec = "marl --online"
        self.events: list[str] = []
        self.updates = 0

    def reset(self, functions: FunctionTable, now: float) -> Actions:
        actions = super().reset(functions, now)
        n = len(functions)
        self.names = functions.names
        self.shadow = HybridHistogramPolicy()
        self.shadow_actions = self.shadow.reset(functions, now)
        self.fallback = np.zeros(n, bool)
        self.gaps = np.zeros(n)
        self.cold = np.zeros(n)
        self.hyb_cold = np.zeros(n)
        self.waste = np.zeros(n)
        self.hyb_waste = np.zeros(n)
        self.scaled_out = np.zeros(n, bool)
        self.tracking = np.zeros(n, bool)
        self.buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        return actions

    def grow(self, functions: FunctionTable, now: float) -> Actions:
        actions = super().grow(functions, now)
        n = len(functions)
        self.names = functions.names
        self.shadow.grow(functions, now)
        self.shadow_actions = self.shadow.current()
        for name in ("fallback", "scaled_out", "tracking"):
            setattr(self, name, pad(getattr(self, name), n, False))
        for name in ("gaps", "cold", "hyb_cold", "waste", "hyb_waste"):
            setattr(self, name, pad(getattr(self, name), n, 0.0))
        # The batch so far has one row per known function; start the next one with everyone in it.
        self.buffer = []
        self.last = {}
        return actions

    # ------------------------------------------------------------------ learning
    def _learn(self, obs: Observation) -> None:
        if self.last:
            r = reward(obs, self.cfg.reward)
            self.buffer.append((self.last["features"], self.last["choice"], self.last["logp"], r))
        if len(self.buffer) >= self.update_every:
            feats, choices, logps, rewards = (np.stack(x) for x in zip(*self.buffer, strict=True))
            roll = {"features": feats, "choices": choices, "logp": logps, "rewards": rewards}
            self.model.train()
            adv, ret, glob = advantages(self.model, roll, self.cfg.gamma, self.cfg.gae_lambda)
            ppo_update(self.model, self.opt, roll, adv, ret, glob, self.cfg, self.rng)
            self.model.eval()
            self.buffer.clear()
            self.updates += 1

    # ------------------------------------------------------------------ guard
    def _guard(self, obs: Observation) -> None:
        f, g = obs.idle_time_func, obs.idle_time_s
        pw = self.shadow_actions.prewarm_delay_s[f]
        ka = self.shadow_actions.keep_alive_s[f]
        cold = np.where(pw > 0, (g < pw) | (g > pw + ka), g > ka)
        idle_s = window_idle_s(g, pw, ka)
        startup = obs.startup_s[f] if obs.startup_s is not None else 1.0
        idle_s = idle_s + np.where((pw > 0) & (g >= pw), startup, 0.0)
        n = len(self.gaps)
        # Judge from each function's first idle gap on: its very first call is cold under any policy.
        self.tracking |= np.bincount(f, minlength=n) > 0
        self.gaps += np.bincount(f, minlength=n)
        self.hyb_cold += np.bincount(f, weights=cold.astype(float), minlength=n)
        self.hyb_waste += np.bincount(f, weights=idle_s * obs.memory_mb[f] / 1024.0, minlength=n)
        self.cold += np.where(self.tracking, obs.cold_starts, 0)
        self.waste += np.where(self.tracking, obs.wasted_gb_s, 0.0)
        self.scaled_out |= obs.alive > 1
        judged = (self.gaps >= self.min_gaps) & ~self.scaled_out & ~self.fallback
        rate, hyb_rate = self.cold / np.maximum(self.gaps, 1), self.hyb_cold / np.maximum(self.gaps, 1)
        worse_cold = rate > hyb_rate + self.cold_margin
        worse_waste = self.waste > (1 + self.waste_margin) * self.hyb_waste + 1.0
        for i in np.flatnonzero(judged & (worse_cold | worse_waste)):
            self.fallback[i] = True
            why = (f"cold-start rate {rate[i]:.1%} vs hybrid {hyb_rate[i]:.1%}" if worse_cold[i]
                   else f"waste {self.waste[i]:.0f} GB-s vs hybrid {self.hyb_waste[i]:.0f} GB-s")
            self.events.append(f"t={obs.now:.0f}s {self.names[i]}: falls back to hybrid ({why})")

    def decide(self, now: float, obs: Observation) -> Actions:
        self._learn(obs)
        self._guard(obs)
        self.shadow_actions = self.shadow.decide(now, obs)
        actions = super().decide(now, obs)
        if self.fallback.any():
            fb = self.fallback
            hyb = self.shadow_actions
            actions.keep_alive_s = np.where(fb, hyb.keep_alive_s, actions.keep_alive_s)
            actions.surplus_keep_alive_s = np.where(fb, hyb.surplus_keep_alive_s, actions.surplus_keep_alive_s)
            actions.prewarm_delay_s = np.where(fb, hyb.prewarm_delay_s, 0.0)
            if actions.prewarm is not None:
                actions.prewarm = np.where(fb, 0, actions.prewarm)
            actions.scale_to = np.where(fb, -1, actions.scale_to)
            actions.release_idle = np.where(fb, 0, actions.release_idle)
        return actions

    def describe(self) -> dict:
        return {**super().describe(), "online": True, "updates": self.updates,
                "fallbacks": int(self.fallback.sum()) if hasattr(self, "fallback") else 0}
