"""The shared actor (local features only) and the centralized critic (local + global summary).

Every agent runs the same actor on its own function's features: decentralized execution. During
training the critic also sees a summary of all agents (the mean feature vector), which is the
"centralized" half of centralized training with decentralized execution. The peak forecaster whose
quantiles the agents read (and provision) travels in the same module, so one checkpoint holds all
that the agents learned.
"""

from __future__ import annotations

import torch
from torch import nn

from prewarmer.agents.features import N_FEATURES
from prewarmer.forecast.peak import PeakQuantileNet, mlp_inference


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


class ActorCritic(nn.Module):
    def __init__(self, n_actions: int, hidden: int = 64, n_features: int = N_FEATURES) -> None:
        super().__init__()
        self.n_features, self.n_actions, self.hidden = n_features, n_actions, hidden
        self.actor = mlp(n_features, n_actions, hidden)
        self.critic = mlp(2 * n_features, 1, hidden)
        self.forecaster = PeakQuantileNet()
        # What one idle GB held for a tick costs against a cold start, for the agents' scoring of their
        # provisioning options (`prewarmer.agents.experts`): set by training from its reward, saved with it.
        self.register_buffer("idle_gb_tick_cost", torch.tensor(0.07))

    def logits(self, local: torch.Tensor) -> torch.Tensor:
        return self.actor(local)

    def infer_logits(self, local: torch.Tensor) -> torch.Tensor:
        """`logits` for acting (no autograd), the same result to the bit (see `mlp_inference`)."""
        return mlp_inference(self.actor, local)

    def value(self, local: torch.Tensor, global_summary: torch.Tensor) -> torch.Tensor:
        g = global_summary.expand(local.shape[0], -1) if global_summary.dim() == 2 and global_summary.shape[0] == 1 \
            else global_summary
        return self.critic(torch.cat([local, g], dim=1)).squeeze(1)
