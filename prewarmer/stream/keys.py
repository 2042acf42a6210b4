"""Redis key names shared by the gateway (producer), the sidecar (consumer) and the coordinator.

Events are sharded by function over `n_shards` streams, `{prefix}:{shard}`, so that sidecar
replicas can own whole functions (an agent needs all of its function's events) by owning shards.
"""

from __future__ import annotations

import zlib

DEFAULT_PREFIX = "prewarmer:events"
DEFAULT_SHARDS = 16


def shard_of(function: str, n_shards: int = DEFAULT_SHARDS) -> int:
    """Stable across processes and versions (crc32, not Python's salted hash)."""
    return zlib.crc32(function.encode()) % n_shards


def stream_key(shard: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:{shard}"


def dead_letter_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:dead"


def clock_key(prefix: str, group: str) -> str:
    """The Unix time the sidecar replicas of `group` count policy time from (set once, by the first to start)."""
    return f"{prefix}:epoch:{group}"
