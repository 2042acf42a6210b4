"""Policies: baselines and (later) learned agents, selected by a spec such as `fixed:20m`."""

from __future__ import annotations

from collections.abc import Callable

from prewarmer.policies.base import Policy
from prewarmer.policies.hybrid import HybridHistogramPolicy
from prewarmer.policies.keepalive import AlwaysWarmPolicy, KeepAlivePolicy
from prewarmer.policies.kpa import KnativePolicy
from prewarmer.units import parse_duration

BASELINES = ("fixed", "hybrid", "kpa", "always-warm")


def _params(rest: str) -> dict[str, str]:
    out = {}
    for part in filter(None, rest.split(",")):
        if "=" not in part:
            raise ValueError(f"expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def policy_factory(spec: str, online: bool = False) -> Callable[[], Policy]:
    """A zero-argument constructor for the policy named by `spec` (checked now, built per run).

    `online` makes learned policies keep learning from what they observe (guarded against hybrid).
    A `+bid` suffix (e.g. `marl+bid`) coordinates the policy's agents under the memory budget."""
    if spec.endswith("+bid"):
        from prewarmer.coord.policy import CoordinatedPolicy

        make_inner = policy_factory(spec[: -len("+bid")], online)

        def build_coordinated() -> Policy:
            policy = CoordinatedPolicy(make_inner())
            policy.spec = spec
            return policy

        return build_coordinated
    name, _, rest = spec.partition(":")
    try:
        if name == "fixed":
            ka = parse_duration(rest or "10m")
            make: Callable[[], Policy] = lambda: KeepAlivePolicy(ka)  # noqa: E731
        elif name == "always-warm":
            if rest:
                raise ValueError("always-warm takes no parameters")
            make = AlwaysWarmPolicy
        elif name == "kpa":
            p = _params(rest)
            kw = {}
            for key, conv in (("stable_window", "stable_window_s"), ("grace", "scale_to_zero_grace_s"),
                              ("tick", "tick_s")):
                if key in p:
                    kw[conv] = parse_duration(p.pop(key))
            for key in ("target", "target_utilization", "panic_threshold_pct", "panic_window_pct"):
                if key in p:
                    kw[key] = float(p.pop(key))
            if "container_concurrency" in p:
                kw["container_concurrency"] = int(p.pop("container_concurrency"))
            if p:
                raise ValueError(f"unknown parameter(s) {sorted(p)}")
            make = lambda: KnativePolicy(**kw)  # noqa: E731
        elif name == "hybrid":
            p = _params(rest)
            kw = {}
            for key, conv in (("range", "range_s"), ("bin", "bin_s"), ("surplus", "surplus_keep_alive_s")):
                if key in p:
                    kw[conv] = parse_duration(p.pop(key))
            for key in ("cv_threshold", "oob_threshold", "head", "tail", "hist_margin", "arima_margin"):
                if key in p:
                    kw[key] = float(p.pop(key))
            if p:
                raise ValueError(f"unknown parameter(s) {sorted(p)}")
            make = lambda: HybridHistogramPolicy(**kw)  # noqa: E731
        elif name == "marl":
            from prewarmer.agents import checkpoint
            from prewarmer.agents.marl import MARLPolicy

            path = rest or str(checkpoint.DEFAULT_CHECKPOINT)
            checkpoint.load(path)  # fail now, with a clear message, rather than inside a worker
            if online:
                from prewarmer.agents.online import OnlineMARLPolicy

                make = lambda: OnlineMARLPolicy(path=path)  # noqa: E731
            else:
                make = lambda: MARLPolicy(path=path)  # noqa: E731
        else:
            raise ValueError(f"unknown policy (known: {', '.join(BASELINES)}, marl[:PATH], any of them +bid)")
    except ValueError as e:
        raise ValueError(f"policy {spec!r}: {e}") from None

    def build() -> Policy:
        policy = make()
        policy.spec = spec
        return policy

    return build


__all__ = ["Policy", "KeepAlivePolicy", "AlwaysWarmPolicy", "KnativePolicy", "HybridHistogramPolicy",
           "policy_factory", "BASELINES"]
