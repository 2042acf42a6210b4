"""Whether Redis and the platform answer, and whether the loop must stop: what the up/holding gauges and probes say.

While either is unreachable the loop keeps running and holds the last setting it applied. Each outage and each
recovery is logged once, on the change, so a long outage does not flood the logs.
"""

from __future__ import annotations

import logging

from prewarmer.actuators.base import ActuatorAuthError
from prewarmer.sidecar.logs import log
from prewarmer.sidecar.metrics import SidecarMetrics

logger = logging.getLogger("prewarmer.sidecar")


class Reachability:
    def __init__(self, metrics: SidecarMetrics) -> None:
        self.metrics = metrics
        self.redis_ok = True
        self.gateway_ok = True
        self.fatal: str | None = None  # why the loop must stop (credentials refused), or None

    def redis_down(self, what: str, err: Exception) -> None:
        if self.redis_ok:
            log(logger, "redis unavailable, holding last settings", logging.WARNING, during=what, error=str(err))
        self.redis_ok = False

    def redis_back(self) -> None:
        if not self.redis_ok:
            log(logger, "redis reachable again")
        self.redis_ok = True

    def gateway_down(self, err: Exception) -> None:
        if self.gateway_ok:
            log(logger, "platform unavailable, holding last settings", logging.WARNING, error=str(err))
        self.gateway_ok = False

    def gateway_back(self) -> None:
        if not self.gateway_ok:
            log(logger, "platform reachable again")
        self.gateway_ok = True

    def credentials_refused(self, err: ActuatorAuthError) -> None:
        """Fatal: retrying with credentials the platform refuses would only hammer it (and may lock the account)."""
        self.metrics.actuator_errors.labels("ActuatorAuthError").inc()
        self.gateway_ok = False
        self.fatal = f"the platform refused the credentials: {err}"
        log(logger, "stopping: credentials refused", logging.ERROR, error=str(err))

    def publish(self) -> None:
        """The up and holding gauges, set at the end of every iteration."""
        self.metrics.redis_up.set(1 if self.redis_ok else 0)
        self.metrics.gateway_up.set(1 if self.gateway_ok else 0)
        self.metrics.holding.set(0 if self.redis_ok and self.gateway_ok else 1)
