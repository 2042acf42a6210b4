"""Saving and loading agent checkpoints, with clear errors for corrupt or mismatched files."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from prewarmer.agents.action_space import CHOICES
from prewarmer.agents.features import FEATURE_NAMES
from prewarmer.agents.network import ActorCritic

FORMAT = "prewarmer-marl-v3"  # v3: forecaster ensemble with seasonal inputs, tracked provisioning
DEFAULT_CHECKPOINT = Path(__file__).with_name("default_marl.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save(path: str | Path, model: ActorCritic, meta: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
    doc = {"format": FORMAT, "features": list(FEATURE_NAMES), "choices": list(CHOICES), "hidden": model.hidden,
           "model": model.state_dict(), "meta": meta}
    if optimizer is not None:
        doc["optimizer"] = optimizer.state_dict()
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(doc, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint behind


def load(path: str | Path) -> tuple[ActorCritic, dict]:
    """(model, the whole document) from a checkpoint, or CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        doc = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle/zip/runtime errors of many kinds for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if isinstance(doc, dict) and str(doc.get("format", "")).startswith("prewarmer-marl-") and doc["format"] != FORMAT:
        raise CheckpointError(f"{path}: a {doc['format']} checkpoint; this version reads {FORMAT}: retrain it")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a prewarmer MARL checkpoint (expected format {FORMAT!r})")
    if list(doc.get("features", [])) != list(FEATURE_NAMES):
        raise CheckpointError(f"{path}: trained on other features ({len(doc.get('features', []))}) than this "
                              f"version computes ({len(FEATURE_NAMES)}); retrain it")
    if list(doc.get("choices", [])) != list(CHOICES):
        raise CheckpointError(f"{path}: trained with other actions than this version offers; retrain it")
    model = ActorCritic(len(CHOICES), hidden=int(doc.get("hidden", 64)))
    try:
        model.load_state_dict(doc["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match the network ({str(e).splitlines()[0][:160]})") from None
    model.eval()
    return model, doc


def export_for_inference(src: str | Path, dst: str | Path, note: str = "") -> None:
    """Copy a training checkpoint without optimizer state and per-episode history (what ships)."""
    model, doc = load(src)
    meta = doc.get("meta", {})
    history = meta.get("history", [])
    pre = meta.get("pretraining") or {}
    clone = pre.get("clone") or []
    slim = {"config": meta.get("config"), "workload": meta.get("workload"), "episodes": len(history),
            "last_episode": history[-1] if history else None, "note": note,
            "pretraining": {"forecaster": pre.get("forecaster"), "clone_episodes": len(clone),
                            "clone_agreement": clone[-1]["agreement"] if clone else None}}
    save(dst, model, slim)
