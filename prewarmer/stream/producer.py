"""Gateway side: buffer invocation events and write them to their shard streams in pipelined batches.

`emit` only appends to an in-memory buffer, so the request path never waits on (or fails because of)
Redis. A background task flushes the buffer every `flush_interval_s`, or sooner once `batch_size`
events are waiting. While Redis is unreachable the events stay buffered (bounded: the oldest are
dropped and counted) and the flusher retries with exponential backoff.

Delivery is at-least-once: if the connection breaks in the middle of a pipeline, some of its XADDs
may have been applied before the whole batch is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from prewarmer.stream.consumer import client_for
from prewarmer.stream.events import InvocationEvent
from prewarmer.stream.keys import DEFAULT_PREFIX, DEFAULT_SHARDS, shard_of, stream_key

log = logging.getLogger(__name__)

# One flush sends the buffer in pipelines of at most this many XADDs, so a backlog after an outage
# does not become one giant request.
_PIPELINE_MAX = 10_000


class RedisEventProducer:
    """Buffered, sharded XADD writer. Counters: `sent`, `dropped`, `failures`; `buffered` is the backlog."""

    def __init__(self, redis: str | aioredis.Redis, prefix: str = DEFAULT_PREFIX, n_shards: int = DEFAULT_SHARDS,
                 maxlen: int = 1_000_000, batch_size: int = 1000, flush_interval_s: float = 0.05,
                 max_buffer: int = 100_000, backoff_initial_s: float = 0.05, backoff_max_s: float = 5.0) -> None:
        self.redis, self._owns_client = client_for(redis)
        self.prefix = prefix
        self.n_shards = n_shards
        self.maxlen = maxlen
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._keys = [stream_key(s, prefix) for s in range(n_shards)]
        self._buf: deque[tuple[str, dict]] = deque()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.sent = 0
        self.dropped = 0
        self.failures = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def emit(self, event: InvocationEvent) -> None:
        """Queue one event; never raises because of Redis. After `close()` events are dropped (counted)."""
        if self._closed:
            self.dropped += 1
            return
        self._append(self._keys[shard_of(event.function, self.n_shards)], event.to_fields())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-producer-flush")
        if len(self._buf) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> int:
        """Write everything buffered now; returns how many were written. Redis errors are swallowed and
        the unwritten events stay buffered (oldest first) for the next flush."""
        written = 0
        async with self._lock:
            while self._buf:
                n = min(len(self._buf), _PIPELINE_MAX)
                chunk = [self._buf.popleft() for _ in range(n)]
                try:
                    await self._write(chunk)
                except RedisError as e:
                    self._requeue(chunk)
                    self.failures += 1
                    log.warning("event flush failed, %d events buffered: %s", len(self._buf), e)
                    return written
                written += n
                self.sent += n
        return written

    async def close(self) -> None:
        """Stop the background flusher and flush what Redis accepts; what it does not is dropped."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        self.dropped += len(self._buf)
        self._buf.clear()
        if self._owns_client:
            await self.redis.aclose()

    async def emit_fields_batch(self, entries: list[dict], shard: int | None = None) -> list[bytes]:
        """Write raw entries (any fields, even malformed) with one pipeline, unbuffered; returns their ids.

        The shard is `shard` if given, else the one of the entry's `function` (shard 0 when there is none).
        Redis errors propagate: this is for benchmarks and tests, not the request path.
        """
        pipe = self.redis.pipeline(transaction=False)
        for fields in entries:
            key = self._keys[shard] if shard is not None else self._keys[self._shard_of_fields(fields)]
            pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)
        return await pipe.execute()

    def _shard_of_fields(self, fields: dict) -> int:
        fn = fields.get("function", fields.get(b"function"))
        if isinstance(fn, bytes):
            try:
                fn = fn.decode()
            except UnicodeDecodeError:
                return 0
        return shard_of(fn, self.n_shards) if isinstance(fn, str) and fn else 0

    async def _write(self, chunk: list[tuple[str, dict]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key, fields in chunk:
            pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)
        await pipe.execute()

    def _append(self, key: str, fields: dict) -> None:
        if len(self._buf) >= self.max_buffer:
            self._buf.popleft()
            self.dropped += 1
        self._buf.append((key, fields))

    def _requeue(self, chunk: list[tuple[str, dict]]) -> None:
        # The failed chunk is older than anything emitted meanwhile: it goes back in front, and the
        # overflow (if any) is cut from its oldest end.
        overflow = len(chunk) + len(self._buf) - self.max_buffer
        if overflow > 0:
            self.dropped += overflow
            chunk = chunk[overflow:]
        self._buf.extendleft(reversed(chunk))

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                # While Redis is failing, a full buffer must not turn into a tight retry loop.
                await asyncio.sleep(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            failures = self.failures
            try:
                await self.flush()
            except Exception:  # the flusher must survive anything a flush throws
                log.exception("event flush crashed")
                self.failures += 1
            if self.failures != failures:
                backoff = min(self.backoff_max_s, max(self.backoff_initial_s, backoff * 2))
            else:
                backoff = 0.0
