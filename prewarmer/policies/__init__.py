"""Baseline policies (keep-alive, hybrid histogram, Knative's KPA); specs are parsed in `prewarmer.registry`."""

from __future__ import annotations

from prewarmer.policies.base import Policy
from prewarmer.policies.hybrid import HybridHistogramPolicy
from prewarmer.policies.keepalive import AlwaysWarmPolicy, KeepAlivePolicy
from prewarmer.policies.kpa import KnativePolicy

__all__ = ["Policy", "KeepAlivePolicy", "AlwaysWarmPolicy", "KnativePolicy", "HybridHistogramPolicy"]
