"""The award rule shared by the in-process coordinator and the Redis one: a greedy auction by value per GB.

Each tick every agent announces what it wants to hold (one bid per instance: the k-th instance of
a function), with its expected value per GB-s (cold starts it would avoid × their cost, over the
horizon, per GB). The coordinator sorts all bids by value and awards them in that order while they
fit the budget: the global capacity, the bidder's tenant quota and the function's instance limit.
An award held last tick that loses out to higher-value bids is a decommitment: the holder is
compensated (`decommit_penalty` × its bid value), and the compensation enters its learning signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass
class Bids:
    """One row per instance asked for. `rank` is k for the k-th instance of that function (1-based)."""

    func: np.ndarray  # int64 function index
    rank: np.ndarray  # int64, 1..n per function
    value: np.ndarray  # float64 expected value per GB-s
    mem_gb: np.ndarray  # float64 memory of one instance
    tenant: np.ndarray  # int64 tenant index, -1 = none

    def __len__(self) -> int:
        return len(self.func)


@dataclass
class Award:
    instances: np.ndarray  # int64 per function: instances it may hold (beyond those executing)
    accepted: np.ndarray  # bool per bid
    price: float  # value per GB-s of the best bid refused for capacity (0 when everything fitted)
    decommitted: np.ndarray  # int64 per function: awards lost to higher-value bids this tick
    used_gb: float
    tenant_used_gb: np.ndarray  # float64 per tenant


def allocate(bids: Bids, n_functions: int, capacity_gb: float, tenant_quota_gb: np.ndarray | None = None,
             max_instances: np.ndarray | None = None, held: np.ndarray | None = None) -> Award:
    """Greedy by value (ties: lower rank, then function index, so every replica computes the same)."""
    order = np.lexsort((bids.func, bids.rank, -bids.value))
    quota = np.zeros(0) if tenant_quota_gb is None else np.asarray(tenant_quota_gb, np.float64)
    cap_f = np.full(n_functions, np.iinfo(np.int64).max) if max_instances is None else \
        np.asarray(max_instances, np.int64)
    accepted, count, tenant_used, used, price = _greedy(
        order, np.asarray(bids.func, np.int64), np.asarray(bids.mem_gb, np.float64),
        np.asarray(bids.value, np.float64), np.asarray(bids.tenant, np.int64), n_functions, float(capacity_gb),
        quota, cap_f)
    wanted = np.bincount(bids.func, minlength=n_functions)
    if held is None:
        decommitted = np.zeros(n_functions, np.int64)
    else:
        # Lost awards the agent still wanted: taken by higher bids, not given up.
        decommitted = np.maximum(np.minimum(held, wanted) - count, 0)
    return Award(count, accepted, price, decommitted, used, tenant_used)


@njit(cache=True)
def _greedy(order, func, mem, value, tenant, n_functions, capacity, quota, cap_f):
    accepted = np.zeros(len(func), np.bool_)
    count = np.zeros(n_functions, np.int64)
    tenant_used = np.zeros(len(quota))
    used = 0.0
    price = 0.0
    for j in order:
        f = func[j]
        m = mem[j]
        if count[f] >= cap_f[f]:
            continue
        k = tenant[j]
        if k >= 0 and len(quota) and tenant_used[k] + m > quota[k] + 1e-9:
            continue
        if used + m > capacity + 1e-9:
            if value[j] > price:
                price = value[j]
            continue
        accepted[j] = True
        count[f] += 1
        used += m
        if k >= 0 and len(quota):
            tenant_used[k] += m
    return accepted, count, tenant_used, used, price
