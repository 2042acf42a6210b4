"""Function-disjoint folds of a workload, grouped by owner: held-out sets for training and evaluation.

A function's fold is decided by its owner (the trace's HashOwner; its app when the trace has no owners)
alone: the first 8 bytes of SHA-256 of the owner's name, modulo the number of folds. So an owner's
functions (and apps) always share a fold, the assignment of a function never depends on which other
functions are loaded (the same owner falls in the same fold in a sample and in the full trace), and
folds hold about the same number of owners. `prewarmer train --folds K --holdout I` trains on every
fold but I; `prewarmer replay --folds K --fold I` replays fold I only.
"""

from __future__ import annotations

import hashlib

import numpy as np

from prewarmer.workloads.base import FunctionTable, MinuteCountWorkload, Workload


class FoldError(ValueError):
    """A fold selection that cannot be made; the message names the option."""


def check(folds: int, fold: int, option: str = "--fold") -> None:
    """Refuse a fold number outside [0, folds) or fewer than 2 folds, naming the option."""
    if folds < 2:
        raise FoldError(f"--folds must be at least 2, got {folds}")
    if not 0 <= fold < folds:
        raise FoldError(f"{option} must be in 0..{folds - 1} (--folds {folds}), got {fold}")


def owner_fold(owner: str, folds: int) -> int:
    """The fold of one owner: a stable hash of its name, independent of any other owner."""
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big") % folds


def fold_of(functions: FunctionTable, folds: int) -> np.ndarray:
    """(F,) int fold of every function, from its owner (or its app when the table has no owners)."""
    if functions.tenants is not None and functions.tenant_names:
        names, index = functions.tenant_names, functions.tenants
    else:
        names, index = functions.app_names, functions.apps
    per_group = np.array([owner_fold(name, folds) for name in names], np.int64)
    return per_group[np.asarray(index, np.int64)]


def select(workload: Workload, folds: int, keep: np.ndarray | list[int], what: str) -> Workload:
    """The workload restricted to the functions of the folds in `keep` (`what` names the selection
    in the description, e.g. "fold 2 of 4")."""
    if not isinstance(workload, MinuteCountWorkload):
        raise FoldError("--folds selects functions of a trace (--trace), not of a generated workload")
    idx = np.flatnonzero(np.isin(fold_of(workload.functions, folds), np.asarray(keep)))
    if len(idx) == 0:
        raise FoldError(f"{what}: no function of the workload falls in it")
    desc = {**workload.describe(), "folds": {"k": folds, "selection": what, "grouped_by": "owner"}}
    return MinuteCountWorkload(workload.functions.subset(idx), workload.counts[idx], workload.duration_pct_ms[idx],
                               start_minute=workload.start_minute, description=desc)


def held_out(workload: Workload, folds: int, fold: int) -> Workload:
    """The functions of fold `fold` only (what a model trained with `--holdout fold` never saw)."""
    check(folds, fold, "--fold")
    return select(workload, folds, [fold], f"fold {fold} of {folds}")


def training(workload: Workload, folds: int, holdout: int) -> Workload:
    """Every function but those of fold `holdout`."""
    check(folds, holdout, "--holdout")
    return select(workload, folds, [f for f in range(folds) if f != holdout],
                  f"all folds but {holdout} of {folds}")
