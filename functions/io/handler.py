"""io: I/O-bound work; waits `?ms=` milliseconds (default 50) standing for a call to a downstream service."""

import time

DEFAULT_MS = 50.0
MAX_MS = 60_000.0


def handle(event, context):
    raw = event.query.get("ms", str(DEFAULT_MS))
    try:
        ms = float(raw)
    except ValueError:
        raise ValueError(f"ms must be a number, got {raw!r}") from None
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"ms must be in 0..{MAX_MS:g}, got {ms:g}")
    time.sleep(ms / 1000)  # the CPU is free meanwhile, as during a network round trip
    return {"statusCode": 200, "body": {"waited_ms": ms, "instance": context.hostname}, "headers": {}}
