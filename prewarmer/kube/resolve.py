"""From PrewarmPolicy objects and function annotations to the rules the sidecar runs: which rule holds for which
function, and in which mode.

Each PrewarmPolicy is one `FunctionRule` (its spec without `mode`) plus a mode, `Auto` or `Preview`. Selectors are
matched here, against the functions the platform lists (names and labels), and every rule is handed on with the
exact names it selected: `ScheduledPolicy` then needs no labels, and one function is governed by one rule only.
When several policies select a function, the oldest (creationTimestamp, then name) wins. A function no policy
selects may carry the rule in its own annotations (`ANNOTATIONS`), on its Deployment, Knative Service or OpenFaaS
function.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from prewarmer.schedules import FunctionRule, RuleSet, field_problem

GROUP, VERSION, PLURAL, KIND = "prewarmer.io", "v1alpha1", "prewarmpolicies", "PrewarmPolicy"
MODES = ("Auto", "Preview")

ANNOTATION_PREFIX = "prewarmer.io/"
#: The annotations fallback: keys on a function's object and what each stands for in a PrewarmPolicy spec.
ANNOTATIONS = {
    "prewarmer.io/mode": "spec.mode: Auto | Preview (default Auto)",
    "prewarmer.io/schedule": "spec.schedule as JSON, e.g. [{\"cron\": \"0 8 * * 1-5\", \"duration\": \"10h\", "
                             "\"minWarm\": 2}]",
    "prewarmer.io/min-warm": "a warm floor that always holds (an integer); with a schedule, the floors add up as "
                             "windows do",
    "prewarmer.io/cold-start-pct": "spec.target.coldStartPct (a number)",
    "prewarmer.io/idle-gb-seconds-per-hour": "spec.budget.idleGbSecondsPerHour (a number)",
}
# `min-warm` as a schedule window: every day from midnight for 24 hours, i.e. always.
ALWAYS = {"cron": "0 0 * * *", "duration": "24h", "timeZone": "UTC"}


@dataclass(frozen=True)
class FunctionInfo:
    """What selectors and the annotations fallback read about one listed function."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass
class PolicySource:
    """One PrewarmPolicy as the watch last delivered it: its rule (None when the spec is invalid) and mode."""

    name: str
    namespace: str
    generation: int
    created: str
    mode: str
    rule: FunctionRule | None
    error: str | None = None  # why the spec was refused, one line


@dataclass(frozen=True)
class Assignment:
    """The rule that governs one function, where it came from and its mode."""

    function: str
    mode: str
    source: str  # "PrewarmPolicy/<name>" or "annotations"
    policy: str | None  # the PrewarmPolicy's name; None for annotations


@dataclass
class Resolution:
    """What the sidecar runs: the rules (one per governing source, with exact names) and who governs whom."""

    rules: RuleSet
    assignments: dict[str, Assignment]  # function -> its assignment
    selected: dict[str, list[str]]  # PrewarmPolicy name -> the functions it governs, sorted
    annotation_errors: dict[str, str]  # function -> why its annotations were ignored

    @property
    def preview(self) -> frozenset[str]:
        """The functions in Preview mode: decided as usual, never sent to the platform."""
        return frozenset(f for f, a in self.assignments.items() if a.mode == "Preview")


def one_line(exc: ValidationError) -> str:
    """A pydantic error as one line naming the fields: `schedule[0].cron: ...; ...`."""
    return "; ".join(field_problem(err) for err in exc.errors())


def parse_policy(obj: Mapping[str, Any]) -> PolicySource:
    """A PrewarmPolicy object (as the API returns it) as a PolicySource; an invalid spec keeps its error."""
    meta = obj.get("metadata") or {}
    spec = dict(obj.get("spec") or {})
    mode = spec.pop("mode", "Auto")
    source = PolicySource(name=str(meta.get("name")), namespace=str(meta.get("namespace") or ""),
                          generation=int(meta.get("generation") or 0), created=str(meta.get("creationTimestamp") or ""),
                          mode=str(mode), rule=None)
    if mode not in MODES:
        source.error = f"spec.mode: must be one of {', '.join(MODES)}, not {mode!r}"
        return source
    try:
        source.rule = FunctionRule.model_validate(spec)
    except ValidationError as exc:
        source.error = "spec." + one_line(exc) if exc.errors() else str(exc)
    return source


def selects(rule: FunctionRule, function: FunctionInfo) -> bool:
    """Whether the rule's selector takes this function: a name glob matches (when given) and the labels match."""
    return rule.selector.matches(function.name, dict(function.labels))


def rule_from_annotations(function: FunctionInfo) -> tuple[str, FunctionRule] | None:
    """(mode, rule) from the function's `prewarmer.io/*` annotations; None when it has none of the rule keys.
    Raises ValueError naming the annotation when one is malformed."""
    notes = {k: v for k, v in function.annotations.items() if k.startswith(ANNOTATION_PREFIX)}
    unknown = sorted(set(notes) - set(ANNOTATIONS))
    if unknown:
        raise ValueError(f"annotation {unknown[0]}: unknown (known: {', '.join(ANNOTATIONS)})")
    keys = set(notes) - {"prewarmer.io/mode"}
    if not keys:
        return None
    mode = notes.get("prewarmer.io/mode", "Auto")
    if mode not in MODES:
        raise ValueError(f"annotation prewarmer.io/mode: must be one of {', '.join(MODES)}, not {mode!r}")
    spec: dict[str, Any] = {"selector": {"matchNames": [function.name]}, "schedule": []}
    if "prewarmer.io/schedule" in notes:
        try:
            schedule = json.loads(notes["prewarmer.io/schedule"])
        except ValueError as exc:
            raise ValueError(f"annotation prewarmer.io/schedule: not JSON ({exc})") from None
        if not isinstance(schedule, list):
            raise ValueError("annotation prewarmer.io/schedule: expected a JSON list of windows")
        spec["schedule"] = schedule
    if "prewarmer.io/min-warm" in notes:
        text = notes["prewarmer.io/min-warm"]
        if not text.strip().isdigit():
            raise ValueError(f"annotation prewarmer.io/min-warm: expected a whole number >= 0, got {text!r}")
        spec["schedule"] = [*spec["schedule"], {**ALWAYS, "minWarm": int(text)}]
    for key, (section, name) in {"prewarmer.io/cold-start-pct": ("target", "coldStartPct"),
                                 "prewarmer.io/idle-gb-seconds-per-hour": ("budget", "idleGbSecondsPerHour")}.items():
        if key in notes:
            try:
                spec[section] = {name: float(notes[key])}
            except ValueError:
                raise ValueError(f"annotation {key}: expected a number, got {notes[key]!r}") from None
    try:
        return mode, FunctionRule.model_validate(spec)
    except ValidationError as exc:
        raise ValueError(f"annotations prewarmer.io/*: {one_line(exc)}") from None


def with_names(rule: FunctionRule, names: list[str]) -> FunctionRule:
    """The rule with its selector narrowed to exactly these function names (labels already matched here)."""
    data = rule.model_dump(by_alias=True, exclude_none=True)
    data["selector"] = {"matchNames": names}
    return FunctionRule.model_validate(data)


def resolve(policies: Iterable[PolicySource], functions: Iterable[FunctionInfo]) -> Resolution:
    """Match every valid policy against the listed functions, oldest first; annotations for the rest."""
    ordered = sorted((p for p in policies if p.rule is not None), key=lambda p: (p.created, p.name))
    functions = sorted(functions, key=lambda f: f.name)
    assignments: dict[str, Assignment] = {}
    selected: dict[str, list[str]] = {p.name: [] for p in ordered}
    for policy in ordered:
        assert policy.rule is not None
        for function in functions:
            if function.name not in assignments and selects(policy.rule, function):
                assignments[function.name] = Assignment(function.name, policy.mode, f"{KIND}/{policy.name}",
                                                        policy.name)
                selected[policy.name].append(function.name)
    rules = [with_names(p.rule, selected[p.name]) for p in ordered if selected[p.name] and p.rule is not None]
    errors: dict[str, str] = {}
    for function in functions:
        if function.name in assignments:
            continue
        try:
            found = rule_from_annotations(function)
        except ValueError as exc:
            errors[function.name] = str(exc)
            continue
        if found is not None:
            mode, rule = found
            assignments[function.name] = Assignment(function.name, mode, "annotations", None)
            rules.append(rule)
    return Resolution(RuleSet(rules=rules), assignments, selected, errors)
