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
from prewarmer.forecast.peak import PeakQuantileNet


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


def sigmoid_form(body: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight transposed, bias) of each Linear of a Linear-Tanh-...-Linear stack, rewritten so that every Tanh
    becomes a sigmoid: tanh(z) = 2 sigmoid(2z) - 1, with the 2z folded into the layer before and the 2s - 1 into
    the layer after. torch's tanh is four times as slow as its sigmoid on the CPU (AVX2), and half the actor's
    time at 10k rows was its two tanh; the logits differ from `logits` by float rounding only (~1e-6)."""
    linears = list(body)[::2]
    if not all(isinstance(m, nn.Linear) for m in linears) or not all(isinstance(m, nn.Tanh) for m in list(body)[1::2]):
        raise TypeError("sigmoid_form takes Linear layers with a Tanh between each two")
    out = []
    for k, lin in enumerate(linears):
        w, b = lin.weight, lin.bias
        if k > 0:  # the input is s = sigmoid(2z) where the module has 2s - 1
            w, b = 2.0 * w, b - w.sum(dim=1)
        if k < len(linears) - 1:  # a Tanh follows: give the sigmoid 2z
            w, b = 2.0 * w, 2.0 * b
        out.append((w.t(), b))
    return out


def sigmoid_mlp(body: nn.Sequential, x: torch.Tensor,
                layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """`body(x)` for a Linear-Tanh-...-Linear stack through `sigmoid_form` (or its `layers`, computed before),
    the sigmoids in place; under no_grad."""
    layers = sigmoid_form(body) if layers is None else layers
    h = x
    for k, (w_t, b) in enumerate(layers):
        h = torch.addmm(b, h, w_t)
        if k < len(layers) - 1:
            h = h.sigmoid_()
    return h


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
        self._actor_form: tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def logits(self, local: torch.Tensor) -> torch.Tensor:
        return self.actor(local)

    def infer_logits(self, local: torch.Tensor) -> torch.Tensor:
        """`logits` for acting (no autograd; see `sigmoid_form`): equal to `logits` within float rounding."""
        # The rewritten weights are kept until a weight changes (training and loading change them in place,
        # which bumps their version): rewriting them took a fifth of the actor's time at 10k functions.
        key = tuple((id(p), p._version) for p in self.actor.parameters())
        if self._actor_form is None or self._actor_form[0] != key:
            self._actor_form = key, sigmoid_form(self.actor)
        return sigmoid_mlp(self.actor, local, self._actor_form[1])

    def value(self, local: torch.Tensor, global_summary: torch.Tensor) -> torch.Tensor:
        g = global_summary.expand(local.shape[0], -1) if global_summary.dim() == 2 and global_summary.shape[0] == 1 \
            else global_summary
        return self.critic(torch.cat([local, g], dim=1)).squeeze(1)
