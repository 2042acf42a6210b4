"""cpu: CPU-bound work, a SHA-256 chain of `?n=` rounds (default 30000, about 20 ms on one core)."""

import hashlib

DEFAULT_ROUNDS = 30_000
MAX_ROUNDS = 50_000_000


def handle(event, context):
    raw = event.query.get("n", str(DEFAULT_ROUNDS))
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"n must be an integer, got {raw!r}") from None
    if not 1 <= n <= MAX_ROUNDS:
        raise ValueError(f"n must be in 1..{MAX_ROUNDS}, got {n}")
    digest = hashlib.sha256(event.body).digest()
    sha256 = hashlib.sha256
    for _ in range(n - 1):
        digest = sha256(digest).digest()
    return {"statusCode": 200, "body": {"rounds": n, "sha256": digest.hex()}, "headers": {}}
