"""Policy specs, such as `fixed:20m`, `hybrid:range=2h`, `marl:model.pt` or `marl+bid`, to policy constructors.

One table says what each name builds and which parameters it takes. It sits above `policies/`,
`agents/` and `coord/` (it imports them; none of them imports it), so baselines never depend on the
learned agents or the coordinator. Learned agents are imported only when a `marl` spec is asked for:
torch takes a second to load and most commands never need it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prewarmer.policies.base import Policy
from prewarmer.policies.hybrid import HybridHistogramPolicy
from prewarmer.policies.keepalive import AlwaysWarmPolicy, KeepAlivePolicy
from prewarmer.policies.kpa import KnativePolicy
from prewarmer.schedules import RuleSet
from prewarmer.units import parse_duration

Maker = Callable[[], Policy]


@dataclass(frozen=True)
class PolicySpec:
    name: str
    #: (text after "name:", online learning on) -> a zero-argument constructor; ValueError on bad text.
    parse: Callable[[str, bool], Maker]
    usage: str


def _keywords(rest: str, table: dict[str, tuple[str, Callable[[str], object]]]) -> dict[str, object]:
    """`key=value,...` into constructor keywords through `table` (spec key -> (keyword, converter))."""
    out = {}
    for part in filter(None, rest.split(",")):
        if "=" not in part:
            raise ValueError(f"expected key=value, got {part!r}")
        key, value = (x.strip() for x in part.split("=", 1))
        if key not in table:
            raise ValueError(f"unknown parameter {key!r} (known: {', '.join(table)})")
        keyword, convert = table[key]
        out[keyword] = convert(value)
    return out


def _fixed(rest: str, online: bool) -> Maker:
    ka = parse_duration(rest or "10m")
    return lambda: KeepAlivePolicy(ka)


def _always_warm(rest: str, online: bool) -> Maker:
    if rest:
        raise ValueError("always-warm takes no parameters")
    return AlwaysWarmPolicy


_KPA = {"stable_window": ("stable_window_s", parse_duration), "grace": ("scale_to_zero_grace_s", parse_duration),
        "tick": ("tick_s", parse_duration), "target": ("target", float),
        "target_utilization": ("target_utilization", float), "panic_threshold_pct": ("panic_threshold_pct", float),
        "panic_window_pct": ("panic_window_pct", float), "container_concurrency": ("container_concurrency", int)}
_HYBRID = {"range": ("range_s", parse_duration), "bin": ("bin_s", parse_duration),
           "surplus": ("surplus_keep_alive_s", parse_duration), "cv_threshold": ("cv_threshold", float),
           "oob_threshold": ("oob_threshold", float), "head": ("head", float), "tail": ("tail", float),
           "hist_margin": ("hist_margin", float), "arima_margin": ("arima_margin", float)}


def _kpa(rest: str, online: bool) -> Maker:
    kw = _keywords(rest, _KPA)
    return lambda: KnativePolicy(**kw)


def _hybrid(rest: str, online: bool) -> Maker:
    kw = _keywords(rest, _HYBRID)
    return lambda: HybridHistogramPolicy(**kw)


def _price(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"price must be >= 0 cold starts per idle GB-minute, got {text!r}")
    return value


def _target(text: str) -> float | None:
    if text == "off":
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"expected on or off, got {text!r}")
    return text == "on"


def _floor_spec(text: str) -> float | str | None:
    """`off`, `inflight`, or a forecast quantile as `q50` / `q75` / ... (`MARLPolicy.floor`)."""
    if text in ("off", "inflight"):
        return None if text == "off" else text
    from prewarmer.forecast.peak import TAUS

    tau = int(text[1:]) / 100.0 if text[:1] == "q" and text[1:].isdigit() else None
    if tau not in TAUS:
        raise ValueError(f"floor must be off, inflight or a forecast quantile "
                         f"({', '.join(f'q{round(100 * t)}' for t in TAUS)}), got {text!r}")
    return tau


def _cap(text: str) -> float | str | None:
    return {"off": None, "priced": "priced"}[text] if text in ("off", "priced") else parse_duration(text)


_MARL = {"price": ("idle_price", _price), "cap": ("keep_alive_cap_s", _cap), "hold": ("hold_s", parse_duration),
         "cold_target": ("cold_target", _target), "waste_target": ("waste_target", _target),
         "cap_gaps": ("cap_gaps", int), "floor": ("floor", _floor_spec),
         "low": ("low", _on_off), "lag": ("lag", _on_off),
         "fair": ("fair", _target), "fair_window": ("fair_window_s", parse_duration), "fair_gb_s": ("fair_gb_s", float),
         "fair_budget": ("fair_budget", _target), "tick": ("tick_s", parse_duration),
         "timers": ("timers", _on_off)}


def _marl(rest: str, online: bool) -> Maker:
    """`marl[:CHECKPOINT][,price=P][,cap=DURATION|priced|off][,hold=DURATION][,cold_target=R|off]
    [,waste_target=W|off][,cap_gaps=N][,floor=qNN|inflight|off][,low=on|off][,lag=on|off]
    [,fair=SHARE|off][,fair_window=DURATION][,fair_gb_s=GB_S][,fair_budget=R|off][,tick=DURATION][,timers=on|off]`:
    the checkpoint, then inference-time settings."""
    from prewarmer.agents import checkpoint

    parts = rest.split(",") if rest else []
    paths = [x for x in parts if "=" not in x]
    if len(paths) > 1:
        raise ValueError(f"one checkpoint at most, got {', '.join(paths)}")
    kw = _keywords(",".join(x for x in parts if "=" in x), _MARL)
    path = paths[0] if paths else str(checkpoint.DEFAULT_CHECKPOINT)
    checkpoint.load(path)  # fail now, with a clear message, rather than inside a worker
    if online:
        from prewarmer.agents.online import OnlineMARLPolicy

        return lambda: OnlineMARLPolicy(path=path, **kw)
    from prewarmer.agents.marl import MARLPolicy

    return lambda: MARLPolicy(path=path, **kw)


def _floor(rest: str, online: bool) -> Maker:
    """`floor:SPEC`: the policy SPEC under a keep-alive floor (each function keeps the instances it used in the
    last 10 minutes: `prewarmer.agents.floored`)."""
    if not rest:
        raise ValueError("floor needs the policy it floors, e.g. floor:marl")
    from prewarmer.agents.floored import KeepAliveFloor

    inner = policy_factory(rest, online)
    return lambda: KeepAliveFloor(inner())


SPECS = {s.name: s for s in (
    PolicySpec("fixed", _fixed, "fixed[:KEEP_ALIVE] (default 10m)"),
    PolicySpec("hybrid", _hybrid, f"hybrid[:{'|'.join(_HYBRID)}=...]"),
    PolicySpec("kpa", _kpa, f"kpa[:{'|'.join(_KPA)}=...]"),
    PolicySpec("always-warm", _always_warm, "always-warm"),
    PolicySpec("marl", _marl, f"marl[:CHECKPOINT][,{'|'.join(_MARL)}=...]"),
    PolicySpec("floor", _floor, "floor:SPEC (SPEC under a 10-minute keep-alive floor)"),
)}
#: The static and reactive baselines (no checkpoint needed).
BASELINES = ("fixed", "hybrid", "kpa", "always-warm")
#: What `prewarmer replay` compares by default: the baselines and the learned agents, the product.
DEFAULT_POLICIES = (*BASELINES, "marl")
BID_SUFFIX = "+bid"


def policy_factory(spec: str, online: bool = False, rules: RuleSet | None = None) -> Maker:
    """A zero-argument constructor for the policy named by `spec` (checked now, built per run).

    `online` makes learned policies keep learning from what they observe (guarded against hybrid).
    A `+bid` suffix (e.g. `marl+bid`) coordinates the policy's agents under the memory budget.
    `rules` (warm floors, targets, budgets: `prewarmer.schedules`) wrap it in a `ScheduledPolicy`."""
    inner_spec = spec.removesuffix(BID_SUFFIX)
    name, _, rest = inner_spec.partition(":")
    entry = SPECS.get(name)
    if entry is None:
        raise ValueError(f"policy {spec!r}: unknown policy (known: {', '.join(SPECS)}, any of them {BID_SUFFIX})")
    try:
        make = entry.parse(rest, online)
    except ValueError as e:
        raise ValueError(f"policy {spec!r}: {e}") from None
    bid = spec.endswith(BID_SUFFIX)

    def build() -> Policy:
        policy = make()
        if bid:
            from prewarmer.coord.policy import CoordinatedPolicy

            policy.spec = inner_spec
            policy = CoordinatedPolicy(policy)
        policy.spec = spec
        if rules is not None:
            from prewarmer.policies.scheduled import ScheduledPolicy

            policy = ScheduledPolicy(policy, rules)
        return policy

    return build
