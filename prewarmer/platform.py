"""What a policy acts on, and the one control tick every driver runs.

A `Platform` is observed and acted on: `observe(now) -> Observation`, `apply(now, actions)`. The replay
simulator (`prewarmer.sim.env.ReplayEnv`) is one; the sidecar's live fleet over a real gateway
(`prewarmer.sidecar.agent.LivePlatform`) is the other. `tick()` is observe -> decide -> allocate ->
apply, and replay, training and the sidecar all call it, so a policy cannot meet a different protocol
live than in replay: the only things that differ are the clock (`now` is handed in), the event source
behind the platform and the actuator.

An `Allocator` runs the budget auction for policies that bid (`<policy>+bid`): in process
(`AuctionAllocator`, replay and training) or in Redis across sidecar replicas
(`prewarmer.coord.redis_budget.RedisAllocator`). It may return None when no award can be had this tick
(Redis unreachable): the policy then keeps its last awards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from prewarmer.actions import Actions
from prewarmer.coord.auction import Award, Bids, allocate
from prewarmer.observation import Observation
from prewarmer.policies.base import Policy
from prewarmer.workloads.base import FunctionTable


class Platform(Protocol):
    def observe(self, now: float) -> Observation:
        """The tick that ends at `now`: counts since the previous observation, state at `now`."""

    def apply(self, now: float, actions: Actions) -> None:
        """Take effect from `now` on."""


class Allocator(Protocol):
    def allocate(self, bids: Bids, n_functions: int, capacity_gb: float, held: np.ndarray) -> Award | None:
        """Award `bids` within `capacity_gb`; `held` is what each function was awarded last tick."""


@runtime_checkable
class BiddingPolicy(Protocol):
    """A policy whose actions need this tick's awards (see `prewarmer.coord.policy`)."""

    held: np.ndarray  # what each function was awarded at the last auction

    def bids(self, obs: Observation) -> Bids: ...

    def capacity(self, obs: Observation) -> float: ...

    def settle(self, actions: Actions, award: Award | None, obs: Observation) -> Actions: ...


class AuctionAllocator:
    """The auction in this process: every function of the run bids against every other."""

    def allocate(self, bids: Bids, n_functions: int, capacity_gb: float, held: np.ndarray) -> Award:
        return allocate(bids, n_functions, capacity_gb, held=held)


@dataclass
class Decision:
    """What one tick produced, for metrics, dry-run records, rewards and tests."""

    now: float
    obs: Observation
    actions: Actions


def tick(policy: Policy, platform: Platform, now: float, allocator: Allocator | None = None) -> Decision:
    """One control tick: observe, decide, allocate (bidding policies only), apply."""
    obs = platform.observe(now)
    actions = policy.decide(now, obs)
    if isinstance(policy, BiddingPolicy):
        bids = policy.bids(obs)
        award = (allocator or AuctionAllocator()).allocate(bids, obs.n_functions, policy.capacity(obs), policy.held)
        actions = policy.settle(actions, award, obs)
    platform.apply(now, actions)
    return Decision(now, obs, actions)


def begin(policy: Policy, platform: Platform, functions: FunctionTable, now: float) -> Actions:
    """A policy's first settings for `functions`, applied."""
    actions = policy.reset(functions, now)
    platform.apply(now, actions)
    return actions
