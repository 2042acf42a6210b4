"""`prewarmer run`: the sidecar, configured from flags over PREWARMER_* environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

from prewarmer.units import parse_duration

KINDS = ("openfaas", "knative", "deployment")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the live sidecar: read invocation events from Redis, scale a platform",
                       description="Run the sidecar: Redis Stream events -> per-function policy -> platform "
                                   "replicas. Every flag also reads PREWARMER_<FLAG> (e.g. PREWARMER_GATEWAY).")
    p.add_argument("--gateway", default=_env("PREWARMER_GATEWAY"), help="OpenFaaS gateway URL (kind openfaas)")
    p.add_argument("--kind", default=_env("PREWARMER_KIND", "openfaas"), choices=KINDS,
                   help="platform: openfaas (gateway REST API), knative (min-scale on the routed Revision), "
                        "deployment (Deployment scale subresource)")
    p.add_argument("--redis", default=_env("PREWARMER_REDIS_URL", "redis://127.0.0.1:6379/0"), help="Redis URL")
    p.add_argument("--policy", default=_env("PREWARMER_POLICY", "hybrid"),
                   help="fixed[:10m] | hybrid | kpa | marl[:PATH] (default hybrid)")
    p.add_argument("--online", action="store_true", default=_env("PREWARMER_ONLINE") == "1",
                   help="learned policies keep learning from what they observe (guarded against hybrid)")
    p.add_argument("--namespace", default=_env("PREWARMER_NAMESPACE"),
                   help="platform namespace (openfaas default openfaas-fn; knative/deployment: required)")
    p.add_argument("--edition", default=_env("PREWARMER_OPENFAAS_EDITION", "pro"), choices=("pro", "ce"),
                   help="OpenFaaS edition: ce clamps replicas to 1..5")
    p.add_argument("--basic-auth-user", default=_env("PREWARMER_BASIC_AUTH_USER"),
                   help="gateway user (default: /var/secrets/basic-auth-user if present, else admin)")
    p.add_argument("--basic-auth-password-file", default=_env("PREWARMER_BASIC_AUTH_PASSWORD_FILE"),
                   help="file holding the gateway password (default: /var/secrets/basic-auth-password)")
    p.add_argument("--knative-target", default=_env("PREWARMER_KNATIVE_TARGET", "revision"),
                   choices=("revision", "podautoscaler"),
                   help="where min-scale goes: the routed Revision (Serving >= 1.21) or its PodAutoscaler")
    p.add_argument("--label-selector", default=_env("PREWARMER_LABEL_SELECTOR"),
                   help="deployment kind: only Deployments matching this selector")
    p.add_argument("--max-replicas", type=int, default=int(_env("PREWARMER_MAX_REPLICAS", "20")),
                   help="never ask for more instances of one function (20)")
    p.add_argument("--dry-run", action="store_true", default=_env("PREWARMER_DRY_RUN") == "1",
                   help="decide and record, act on nothing (the platform is still read when reachable)")
    p.add_argument("--record", default=_env("PREWARMER_RECORD"), metavar="FILE.jsonl",
                   help="append every decision, prediction and scale request as JSON lines")
    p.add_argument("--interval", default=_env("PREWARMER_INTERVAL", "1s"),
                   help="control loop period, real time (1s)")
    p.add_argument("--time-scale", type=float, default=float(_env("PREWARMER_TIME_SCALE", "1")),
                   help="policy seconds per real second, for time-compressed load tests (1)")
    p.add_argument("--clock-epoch", type=float, default=None, metavar="SECONDS",
                   help="the time that policy time 0 stands for, read by the agents' time-of-day features "
                        "(default: the wall clock when the replicas first started; a load test replaying trace "
                        "minute A passes A x 60, as replay does)")
    p.add_argument("--replica-id", default=_env("PREWARMER_REPLICA_ID") or _env("HOSTNAME") or
                   f"{socket.gethostname()}-{os.getpid()}", help="this replica's name (default: pod name)")
    p.add_argument("--shards", type=int, default=int(_env("PREWARMER_SHARDS", "16")),
                   help="event stream shards; must match the producer (16)")
    p.add_argument("--prefix", default=_env("PREWARMER_STREAM_PREFIX", "prewarmer:events"),
                   help="stream key prefix")
    p.add_argument("--group", default=_env("PREWARMER_GROUP", "prewarmer"), help="consumer group")
    p.add_argument("--checkpoint-interval", default=_env("PREWARMER_CHECKPOINT_INTERVAL", "5s"),
                   help="state checkpoint (and event ack) period (5s)")
    p.add_argument("--claim-idle", default=_env("PREWARMER_CLAIM_IDLE", "30s"),
                   help="sweep up events left unacknowledged by a consumer that no longer owns their shard after "
                        "this (30s; a shard's new owner claims them at once)")
    p.add_argument("--lease-ttl", default=_env("PREWARMER_LEASE_TTL", "15s"),
                   help="a dead replica's shards move after this (15s)")
    p.add_argument("--metrics-host", default=_env("PREWARMER_METRICS_HOST", "0.0.0.0"))
    p.add_argument("--metrics-port", type=int, default=int(_env("PREWARMER_METRICS_PORT", "9464")),
                   help="/metrics, /healthz, /readyz (9464; 0 picks a free port)")
    p.add_argument("--budget-gb", type=float, default=_env("PREWARMER_BUDGET_GB"),
                   help="memory budget shared by all replicas for +bid policies (awarded through Redis)")
    p.add_argument("--tenant-quota", action="append", default=[], metavar="NAMESPACE=GB",
                   help="with --budget-gb: most memory one namespace may be awarded (repeatable)")
    p.add_argument("--unlisted-functions", default=_env("PREWARMER_UNLISTED_FUNCTIONS", "refuse"),
                   choices=("refuse", "admit"),
                   help="events of a function the platform does not list: refuse (dead-letter them, the default) "
                        "or admit (track it anyway)")
    p.add_argument("--max-functions", type=int, default=int(_env("PREWARMER_MAX_FUNCTIONS", "10000")),
                   help="functions tracked by this replica at most; events of any further one are dead-lettered "
                        "(10000)")
    p.add_argument("--watch-policies", action="store_true", default=_env("PREWARMER_WATCH_POLICIES") == "1",
                   help="take warm-floor rules from the PrewarmPolicy resources of --namespace (and the functions' "
                        "prewarmer.io/* annotations) through the Kubernetes API; Preview ones act on nothing "
                        "(docs/kubernetes.md)")
    p.add_argument("--schedule-file", default=_env("PREWARMER_SCHEDULE_FILE"), metavar="RULES.yaml",
                   help="warm-floor rules (YAML or JSON): per function a cron schedule of minimum warm counts, a "
                        "cold-start target, an idle-memory budget; re-read when it changes (docs/schedules.md)")
    p.add_argument("--max-event-skew", default=_env("PREWARMER_MAX_EVENT_SKEW", "5m"),
                   help="events whose ts is further ahead of the Redis clock are dead-lettered (5m)")
    p.add_argument("--log-level", default=_env("PREWARMER_LOG_LEVEL", "info"))


def _quotas(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        ns, sep, gb = item.partition("=")
        try:
            out[ns.strip()] = float(gb)
        except ValueError:
            sep = ""
        if not sep or not ns.strip() or out[ns.strip()] <= 0:
            raise ValueError(f"--tenant-quota: expected NAMESPACE=GB with GB > 0, got {item!r}")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis
    from aiohttp import web

    from prewarmer.registry import policy_factory
    from prewarmer.sidecar import logs
    from prewarmer.sidecar.metrics import SidecarMetrics, metrics_app
    from prewarmer.sidecar.platform import ReadOnlyActuator, build_actuator
    from prewarmer.sidecar.run import Sidecar, SidecarOptions

    logs.setup(args.log_level)
    rules = None
    if args.schedule_file:
        from prewarmer.schedules import load_rules

        rules = load_rules(args.schedule_file)  # bad rules stop the start with a one-line error naming the field
    make_policy = policy_factory(args.policy, online=args.online, rules=rules)
    if args.watch_policies:
        from prewarmer.kube import with_rules

        make_policy = with_rules(make_policy)
    actuator = build_actuator(args)
    if args.dry_run:
        actuator = ReadOnlyActuator(actuator)
    opts = SidecarOptions(
        replica_id=args.replica_id, prefix=args.prefix, n_shards=args.shards, group=args.group,
        interval_s=parse_duration(args.interval), checkpoint_interval_s=parse_duration(args.checkpoint_interval),
        claim_min_idle_ms=int(parse_duration(args.claim_idle) * 1000),
        lease_ttl_ms=int(parse_duration(args.lease_ttl) * 1000), time_scale=args.time_scale,
        clock_epoch_s=args.clock_epoch,
        namespace=args.namespace if args.kind != "openfaas" or args.namespace else None,
        policy_spec=args.policy, record=Path(args.record) if args.record else None, max_replicas=args.max_replicas,
        budget_gb=args.budget_gb,
        tenant_quota_gb=_quotas(args.tenant_quota) or None,
        unlisted_functions=args.unlisted_functions, max_functions=args.max_functions,
        max_ts_skew_s=parse_duration(args.max_event_skew))
    if opts.max_functions < 1:
        raise ValueError(f"--max-functions must be >= 1, got {opts.max_functions}")
    if not opts.max_ts_skew_s >= 0:
        raise ValueError(f"--max-event-skew must be >= 0, got {args.max_event_skew!r}")
    if opts.budget_gb is not None and not args.policy.endswith("+bid"):
        raise ValueError("--budget-gb coordinates +bid policies: use e.g. --policy hybrid+bid")
    if opts.budget_gb is not None and not opts.budget_gb > 0:
        raise ValueError(f"--budget-gb must be > 0, got {opts.budget_gb}")
    if opts.n_shards < 1:
        raise ValueError("--shards must be >= 1")

    async def main() -> int:
        redis = aioredis.Redis.from_url(args.redis, socket_timeout=5, socket_connect_timeout=5)
        metrics = SidecarMetrics()
        policies = None
        if args.watch_policies:
            from prewarmer.kube import policy_control

            # The file's rules hold whatever the cluster says; the policies' rules are added to them.
            policies = policy_control(args.namespace or "openfaas-fn", args.replica_id, metrics, base_rules=rules)
        rules_file = None
        if rules is not None and policies is None:
            from prewarmer.sidecar.rules import RulesFile

            rules_file = RulesFile(args.schedule_file, rules)
        sidecar = Sidecar(opts, make_policy, actuator, redis, metrics, policies=policies, rules_file=rules_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(metrics_app(metrics, sidecar.health, sidecar.ready))
        await runner.setup()
        site = web.TCPSite(runner, args.metrics_host, args.metrics_port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else args.metrics_port
        logs.log(logging.getLogger("prewarmer.sidecar"), "metrics listening", host=args.metrics_host,
                 port=port)
        try:
            await actuator.start()
            if policies is not None:
                await policies.start()
            await sidecar.run(stop)
        finally:
            await actuator.close()
            if policies is not None:
                await policies.close()
            await runner.cleanup()
            await redis.aclose()
        if sidecar.fatal:
            print(f"prewarmer run: {sidecar.fatal}", flush=True)
            return 1
        return 0

    return asyncio.run(main())
