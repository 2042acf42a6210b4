"""`prewarmer gateway`: run the local OpenFaaS-compatible gateway until SIGTERM/SIGINT.

`add_gateway_parser(subparsers)` adds the sub-command to the main parser and `cmd_gateway(args)`
runs it (bad options raise ConfigError, a ValueError, for the main CLI to report on one line).
`python -m prewarmer.gateway` runs the same command on its own. Every option can also come from an
environment variable (see `config.OPTIONS`); the command line wins over the environment.

Shutdown: stop accepting connections, let in-flight requests finish (at most `--shutdown-timeout`),
stop every worker process, flush the buffered events to Redis; exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from prewarmer.gateway import log_event
from prewarmer.gateway.config import OPTIONS, ConfigError, GatewayConfig, load_config

DESCRIPTION = ("Local OpenFaaS-compatible gateway for development and load tests: every function instance is a "
               "real worker process (a cold start is a real process start), /system/scale-function sets the "
               "replica target the prewarmer drives, and each invocation is emitted to Redis Streams.")


def add_gateway_arguments(p: argparse.ArgumentParser) -> None:
    """The gateway's options; every default is None so that the environment can fill it in."""
    for opt in OPTIONS:
        p.add_argument(opt.flag, dest=opt.field, default=None, metavar=opt.metavar,
                       help=f"{opt.help} [env {opt.env}]")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                   help="log level (info) [env PREWARMER_LOG_LEVEL]")


def add_gateway_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `gateway` to the sub-commands of the main parser (handler: `args.func`)."""
    p = subparsers.add_parser("gateway", help="run a local OpenFaaS-compatible gateway with real worker processes",
                              description=DESCRIPTION)
    add_gateway_arguments(p)
    p.set_defaults(func=cmd_gateway)
    return p


def config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> GatewayConfig:
    return load_config({opt.field: getattr(args, opt.field, None) for opt in OPTIONS}, env)


def setup_logging(level: str | None) -> None:
    name = (level or os.environ.get("PREWARMER_LOG_LEVEL") or "info").upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level (PREWARMER_LOG_LEVEL): expected debug, info, warning or error, got {name!r}")
    # One line per event: `ts=... level=... event=... key=value ...` (logfmt).
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, name),
                        format="ts=%(asctime)s.%(msecs)03d level=%(levelname)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(cfg: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set or SIGTERM/SIGINT arrives, then shut down gracefully."""
    from aiohttp import web

    from prewarmer.gateway.app import create_app

    app = create_app(cfg)
    runner = web.AppRunner(app, shutdown_timeout=cfg.shutdown_timeout_s, access_log=None)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: (log_event("signal", signal=signal.Signals(s).name), stop.set()))
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as e:
            # Typically the port is taken; say which option to change.
            raise ConfigError(f"--port / --host: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
        listen = ",".join(f"{a[0]}:{a[1]}" for a in runner.addresses) or f"{cfg.host}:{cfg.port}"
        log_event("gateway_listening", address=listen, functions_dir=cfg.functions_dir)
        await stop.wait()
        log_event("gateway_stopping", shutdown_timeout_s=cfg.shutdown_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # stop accepting, drain in-flight requests, then stop workers, flush events


def cmd_gateway(args: argparse.Namespace) -> int:
    setup_logging(getattr(args, "log_level", None))
    cfg = config_from_args(args)
    asyncio.run(serve(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prewarmer.gateway", description=DESCRIPTION)
    add_gateway_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_gateway(args)
    except ConfigError as e:
        print(f"prewarmer gateway: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
