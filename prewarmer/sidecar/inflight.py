"""Requests in flight: reported as started (a `start` event) and not yet as ended.

The gateway reports a request when it arrives and again when it ends (`prewarmer.stream.events`). Between the
two the sidecar must already count it: the observer as an arrival and an in-flight request, the warm fleet as
an instance kept busy. `InFlight` keeps them (function, arrival in policy seconds) and pairs each `end` with its
`start` by function and arrival time, which both events carry identically.
"""

from __future__ import annotations

import numpy as np

#: A request reported as started this long ago (policy seconds) and never as ended is dropped (its `end` was
#: lost): it no longer keeps an instance busy in the fleet's model.
MAX_OPEN_S = 3600.0


class InFlight:
    def __init__(self) -> None:
        self.func = np.zeros(0, np.int64)
        self.arrival = np.zeros(0)
        self.fed = np.zeros(0, bool)  # the fleet's model runs it already (as a request with no end yet)
        self.counted = np.zeros(0)  # the observer has counted its busy time up to here

    def __len__(self) -> int:
        return len(self.func)

    def add(self, func: np.ndarray, arrival: np.ndarray) -> None:
        self.func = np.concatenate([self.func, np.asarray(func, np.int64)])
        self.arrival = np.concatenate([self.arrival, np.asarray(arrival, np.float64)])
        self.fed = np.concatenate([self.fed, np.zeros(len(func), bool)])
        self.counted = np.concatenate([self.counted, np.full(len(func), -np.inf)])

    def take(self, func: np.ndarray, arrival: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pair ended requests (function, arrival) with requests in flight and remove those.

        Returns, per ended request: whether it was in flight, whether the fleet's model runs it already, and up
        to when the observer counted its busy time (-inf when not in flight)."""
        m = len(func)
        found = np.zeros(m, bool)
        fed = np.zeros(m, bool)
        counted = np.full(m, -np.inf)
        if not m or not len(self.func):
            return found, fed, counted
        # Exact pairing on (function, bits of the arrival time); duplicates pair up in order.
        keys = np.concatenate([_keys(self.func, self.arrival), _keys(np.asarray(func, np.int64),
                                                                     np.asarray(arrival, np.float64))])
        _, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.ravel()
        n_open = len(self.func)
        rank = _rank_within(group[:n_open]), _rank_within(group[n_open:])
        open_key = group[:n_open] * (n_open + m) + rank[0]
        end_key = group[n_open:] * (n_open + m) + rank[1]
        order = np.argsort(open_key)
        pos = np.searchsorted(open_key[order], end_key)
        pos = np.minimum(pos, n_open - 1)
        hit = open_key[order][pos] == end_key
        rows = order[pos[hit]]
        found[hit] = True
        fed[hit] = self.fed[rows]
        counted[hit] = self.counted[rows]
        self._drop(rows)
        return found, fed, counted

    def expire(self, before: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Drop requests started before `before` (their `end` was lost); returns (function, arrival, fed)."""
        old = np.flatnonzero(self.arrival < before)
        out = self.func[old], self.arrival[old], self.fed[old]
        self._drop(old)
        return out

    def _drop(self, rows: np.ndarray) -> None:
        keep = np.ones(len(self.func), bool)
        keep[rows] = False
        self.func, self.arrival = self.func[keep], self.arrival[keep]
        self.fed, self.counted = self.fed[keep], self.counted[keep]


def _keys(func: np.ndarray, arrival: np.ndarray) -> np.ndarray:
    return np.stack([func, np.ascontiguousarray(arrival, np.float64).view(np.int64)], axis=1)


def _rank_within(group: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its group (0, 1, 2, ...)."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(g)]))
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(g)) - first
    return rank
