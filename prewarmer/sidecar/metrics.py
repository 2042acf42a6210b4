"""The sidecar's Prometheus metrics (own registry) and its /metrics, /healthz and /readyz endpoints.

Two sets in one exposition: the `prewarmer_*` metrics of the controller itself, in the prometheus-client
registry (one attribute of `SidecarMetrics` each: add a new one the same way), and, in `faas`, the
OpenTelemetry FaaS metrics of the invocations the sidecar reads from the event stream
(`faas_invocations_total`, `faas_errors_total`, `faas_timeouts_total`, `faas_coldstarts_total`,
`faas_init_duration_seconds`, by `faas_invoked_name`), one series per function, written by
`prewarmer.otel_faas` after the registry's (see there why, and docs/observability.md). The sidecar counts the
same events in both: `prewarmer_events_ingested_total` equals the sum of the three `faas_*` invocation outcomes.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from prewarmer.otel_faas import FaaSMetrics


class SidecarMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("prewarmer_events_ingested_total", "Invocation events folded into agent state",
                              registry=r)
        self.dead = Counter("prewarmer_events_dead_lettered_total", "Malformed events sent to the dead-letter stream",
                            registry=r)
        self.lag = Gauge("prewarmer_consumer_lag", "Stream entries not yet delivered to this replica's group",
                         registry=r)
        self.pending = Gauge("prewarmer_events_unacked", "Events read but not yet checkpointed and acknowledged",
                             registry=r)
        self.decisions = Counter("prewarmer_decisions_total", "Functions touched by each action verb", ["action"],
                                 registry=r)
        self.predictions = Counter(
            "prewarmer_predictions_total",
            "Warm-or-not decisions scored against the next tick: hit (warm and invoked), miss (cold and invoked), "
            "false_alarm (warm, not invoked), idle (cold, not invoked)", ["outcome"], registry=r)
        self.scale_requests = Counter("prewarmer_scale_requests_total", "Scale requests sent to the platform",
                                      registry=r)
        self.actuator_errors = Counter("prewarmer_actuator_errors_total", "Failed actuator calls", ["error"],
                                       registry=r)
        self.desired = Gauge("prewarmer_desired_instances", "Warm instances wanted, summed over owned functions",
                             registry=r)
        self.functions = Gauge("prewarmer_functions", "Functions owned by this replica", registry=r)
        self.shards = Gauge("prewarmer_owned_shards", "Event shards owned by this replica", registry=r)
        self.redis_up = Gauge("prewarmer_redis_up", "1 when the last Redis call succeeded", registry=r)
        self.gateway_up = Gauge("prewarmer_gateway_up", "1 when the last platform call succeeded", registry=r)
        self.holding = Gauge("prewarmer_holding_last_setting",
                             "1 while Redis or the platform is unreachable and the last safe setting is kept",
                             registry=r)
        self.checkpoints = Counter("prewarmer_checkpoints_total", "Shard checkpoints written with their acks",
                                   registry=r)
        self.fallbacks = Counter("prewarmer_online_fallbacks_total", "Functions an online learner handed to hybrid",
                                 registry=r)
        self.budget_used = Gauge("prewarmer_budget_used_gb", "Memory awarded across all replicas of the budget",
                                 registry=r)
        self.budget_price = Gauge("prewarmer_budget_price", "Value per GB-s of the best bid refused (0: no scarcity)",
                                  registry=r)
        self.tick_seconds = Histogram("prewarmer_control_tick_seconds", "Wall time of one control loop iteration",
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)
        # The events' own figures under the OTel names. The events say nothing of the trigger, so no faas_trigger;
        # and no faas_invoke_duration_seconds: one histogram per function for a figure the platform already
        # exports (e.g. gateway_functions_seconds), and which no prewarming decision changes.
        self.faas = FaaSMetrics(trigger=None, invoke_duration=False)
        # Functions governed by a PrewarmPolicy or annotations (`--watch-policies`); mode Preview: nothing sent.
        self.policy_predicted = Gauge("prewarmer_policy_predicted_replicas",
                                      "Instances the policy's model holds now, per governed function",
                                      ["function", "mode"], registry=r)
        self.policy_desired = Gauge("prewarmer_policy_desired_replicas",
                                    "Replicas asked of the platform (mode Preview: that would be asked), per governed "
                                    "function", ["function", "mode"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.faas.exposition()


def metrics_app(metrics: SidecarMetrics, health: callable, ready: callable) -> web.Application:
    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok, why = health()
        return web.Response(status=200 if ok else 503, text=why)

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(status=200 if ok else 503, text=why)

    app = web.Application()
    app.add_routes([web.get("/metrics", get_metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app
