"""A local OpenFaaS-compatible gateway whose function instances are real worker processes.

For development and load tests of the prewarmer: `/function/{name}` invokes a function (a cold start
is a real process start and import), `/system/scale-function/{name}` is the prewarmer's actuator
target, `/metrics` counts cold starts and idle/busy GB-s exactly, and every invocation is emitted as
an event to Redis Streams. Modules: `config` (options, stack.yml), `workers` (the worker pool and
its scaling rules), `worker_main` (the worker process), `app` (HTTP), `metrics`, `cli`.

This package module stays import-light on purpose: every worker process imports it on its cold start.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("prewarmer.gateway")
_LOGFMT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_UNESCAPE = {"n": "\n", "t": "\t"}


def _logfmt_value(v: object) -> str:
    if isinstance(v, float):
        v = f"{v:.3f}"
    s = str(v)
    if s == "" or any(c in s for c in ' ="\\\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    return s


def parse_logfmt(line: str) -> dict[str, str]:
    """The fields of one log line (`log_event`'s and the `ts=` / `level=` before them), quoted values unescaped."""
    fields = {}
    for key, value in _LOGFMT_FIELD.findall(line):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), value[1:-1])
        fields[key] = value
    return fields


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """One structured log line, logfmt: `event=worker_ready function=echo worker=echo-1 startup_ms=84.210`."""
    if log.isEnabledFor(level):
        parts = [f"event={event}"] + [f"{k}={_logfmt_value(v)}" for k, v in fields.items() if v is not None]
        log.log(level, " ".join(parts))
