"""Parsing of durations given on the command line (`90`, `250ms`, `1.5s`, `10m`, `2h`)."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min|m|h|d|)\s*$")


def parse_duration(text: str | float, default_unit: str = "s") -> float:
    """Seconds in `text`; a bare number is in `default_unit`. `inf` is allowed."""
    if isinstance(text, int | float):
        return float(text) * _UNITS[default_unit]
    if text.strip().lower() in ("inf", "infinity", "never"):
        return float("inf")
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 250ms, 1.5s, 10m, 2h)")
    unit = m.group(2) or default_unit
    return float(m.group(1)) * _UNITS[unit]
