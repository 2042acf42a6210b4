"""Sidecar side: read the shard streams this replica owns through one consumer group, at least once.

`read(shards)` returns the decoded entries of one batched XREADGROUP over all owned shard streams,
plus, when a shard is newly owned and every `claim_interval_s`, the entries other (dead) consumers
read but never acknowledged (XAUTOCLAIM; right after `take_over`, whatever their idle time).
Malformed entries go to the dead-letter stream and are acknowledged in the same MULTI, so they never
block the group. The caller processes a batch, then
`ack`s it; a batch that is never acked is re-delivered to the shard's next owner.

While there is a backlog, `read` also sends the next XREADGROUP before returning (read-ahead), so
Redis builds the next reply while the caller processes this one. Read-ahead entries are pending on
this consumer like a returned batch: the next `read` returns them, and if the consumer dies first
they are reclaimed like any unacked batch.

Bad input is refused, not absorbed: an entry the schema refuses, or whose `ts` is later than the
Redis clock (TIME, sampled every `clock_refresh_s` and extrapolated on the monotonic clock) plus
`max_ts_skew_s`, goes to the dead-letter stream with the reason. A dead letter keeps a truncated copy
of the entry (`dead_letter_value_bytes` per value, `DEAD_LETTER_MAX_FIELDS` fields), so a 1 MB field
costs Redis a few hundred bytes, and the dead-letter stream is capped at `dead_letter_maxlen` entries.
`dead_letter_rows` does the same for entries the caller refuses after decoding (e.g. an unknown function).

Redis being unreachable surfaces as one exception type, `StreamUnavailable`, on every method; the
same object works again once Redis is back (connections are re-made, lost groups re-created).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, DataError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from prewarmer.stream.events import (
    PHASE_START,
    PHASES,
    SCHEMA_VERSION,
    DecodedBatch,
    EventError,
    decode_batch,
)
from prewarmer.stream.keys import DEFAULT_PREFIX, DEFAULT_SHARDS, dead_letter_key, stream_key

#: Default for `max_ts_skew_s`: how far an event's `ts` may be ahead of the Redis clock. Five minutes, the
#: usual tolerance for unsynchronised clocks (Kerberos' default maximum clock skew).
DEFAULT_MAX_TS_SKEW_S = 300.0
#: A dead letter copies at most this many fields of the refused entry, each value cut to
#: `dead_letter_value_bytes` (keys to 64 bytes); `truncated` then holds the original field count and size.
DEAD_LETTER_MAX_FIELDS = 16
DEFAULT_DEAD_LETTER_VALUE_BYTES = 256

_COLUMNS = ("ids", "phase", "function", "namespace", "ts", "duration_ms", "startup_ms", "wait_ms", "cold", "status",
            "instance", "rejected")


class StreamUnavailable(Exception):
    """Redis could not be reached (refused, timed out, still loading); retry later with the same object."""


class _HiredisPackConnection(aioredis.Connection):
    """redis.asyncio packs commands in pure Python, which took about two thirds of the producer's
    time for a pipelined XADD batch; hiredis packs them in C (byte-identical RESP)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # Multi-word command names ("XINFO GROUPS") are split the way redis-py does it.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as e:
            raise DataError(str(e)) from None


def connect(url: str, socket_timeout: float = 5.0) -> aioredis.Redis:
    """A bytes client for the stream code. One immediate retry re-makes a connection that a Redis restart
    broke; anything longer is the caller's retry loop, so outages are reported at once instead of being
    hidden behind the client's default ten retries."""
    kwargs: dict[str, Any] = {}
    if url.startswith("redis://"):  # rediss:// and unix:// keep their own connection classes
        kwargs["connection_class"] = _HiredisPackConnection
    return aioredis.Redis.from_url(url, decode_responses=False, socket_timeout=socket_timeout,
                                   socket_connect_timeout=min(socket_timeout, 2.0), retry=Retry(NoBackoff(), 1),
                                   **kwargs)


def client_for(redis: str | aioredis.Redis, socket_timeout: float = 5.0) -> tuple[aioredis.Redis, bool]:
    """(client, made here): a URL gets a client of its own, which its maker closes; a client is shared."""
    if isinstance(redis, str):
        return connect(redis, socket_timeout), True
    return redis, False


@contextlib.contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn the ways Redis can be unreachable into StreamUnavailable; other Redis errors pass unchanged."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, TimeoutError) as e:
        raise StreamUnavailable(str(e) or type(e).__name__) from e


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """A batch is ~5 tracked containers per entry (reply lists, field dicts, tuples), all alive until the
    batch is dropped: the cyclic GC would scan and promote them many times per batch for nothing (~20%
    of the consumer's CPU). Refcounting still frees everything; collection resumes after the batch."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class SourceBatch(DecodedBatch):
    """A DecodedBatch plus the stream each id was read from (`streams[i]` goes with `ids[i]`)."""

    streams: list[bytes] = field(default_factory=list)
    claimed: int = 0  # entries in this batch that were taken over from other consumers


class RedisEventSource:
    """Consumer-group reader over owned shard streams. `batch_size` is XREADGROUP COUNT (per stream)."""

    def __init__(self, redis: str | aioredis.Redis, prefix: str = DEFAULT_PREFIX, n_shards: int = DEFAULT_SHARDS,
                 group: str = "prewarmer", consumer: str | None = None, batch_size: int = 1000,
                 block_ms: int | None = 1000, claim_min_idle_ms: int = 30_000, claim_interval_s: float | None = None,
                 dead_letter_maxlen: int = 10_000, prefetch: bool = True,
                 clock: Callable[[], float] = time.monotonic, max_ts_skew_s: float | None = DEFAULT_MAX_TS_SKEW_S,
                 dead_letter_value_bytes: int = DEFAULT_DEAD_LETTER_VALUE_BYTES, clock_refresh_s: float = 10.0) -> None:
        # The socket must outlive a blocking XREADGROUP, or the wait would look like an outage.
        self.redis, self._owns_client = client_for(redis, (block_ms or 0) / 1000 + 5.0)
        self.prefix = prefix
        self.n_shards = n_shards
        self.group = group
        self.consumer = consumer or socket.gethostname()
        self.batch_size = batch_size
        self.block_ms = block_ms or None  # BLOCK 0 would mean forever
        self.claim_min_idle_ms = claim_min_idle_ms
        self.claim_interval_s = claim_interval_s if claim_interval_s is not None else claim_min_idle_ms / 2000
        self.dead_letter_maxlen = dead_letter_maxlen
        self.prefetch = prefetch
        self._keys = [stream_key(s, prefix).encode() for s in range(n_shards)]
        self._dead_key = dead_letter_key(prefix)
        self._owned: tuple[int, ...] = ()
        self._groups_ready: set[int] = set()
        self._claim_cursor: dict[int, bytes] = {}  # shards due for XAUTOCLAIM, and where to resume
        self._taking_over: set[int] = set()  # shards whose next XAUTOCLAIM scan ignores the idle time
        self.clock = clock  # times the claim interval
        self._next_claim = self.clock() + self.claim_interval_s
        self.dead_lettered = 0
        self._prefetch: asyncio.Task[SourceBatch] | None = None
        self.max_ts_skew_s = max_ts_skew_s  # None: no bound on `ts`
        self.dead_letter_value_bytes = dead_letter_value_bytes
        self.clock_refresh_s = clock_refresh_s
        self._redis_clock: tuple[float, float] | None = None  # (Redis TIME, self.clock() when read)

    async def ensure_groups(self, shards: Iterable[int]) -> None:
        """Create the group on each shard stream (and the stream), reading from its start; idempotent."""
        shards = [s for s in shards]
        if not shards:
            return
        with unavailable_as_error():
            pipe = self.redis.pipeline(transaction=False)
            for s in shards:
                pipe.xgroup_create(self._keys[s], self.group, id="0", mkstream=True)
            for res in await pipe.execute(raise_on_error=False):
                if isinstance(res, Exception) and "BUSYGROUP" not in str(res):
                    raise res
        self._groups_ready.update(shards)

    def take_over(self, shards: Iterable[int]) -> None:
        """The caller just gained `shards` under a lease that guarantees nobody else may count their events: the
        next reads claim every entry pending on any consumer of them (a dead or stalled previous owner's), whatever
        its idle time, rather than after `claim_min_idle_ms`. Without such a lease, two live consumers would take
        each other's entries: use it only with one."""
        for s in shards:
            self._claim_cursor[s] = b"0-0"
            self._taking_over.add(s)

    async def read(self, shards: Iterable[int]) -> SourceBatch:
        """The next batch from the owned shards: reclaimed entries first, then new ones. Blocks up to
        `block_ms` when there is nothing; with no shards it just waits that long and returns empty."""
        owned = tuple(sorted(set(shards)))
        for s in set(owned) - set(self._owned):
            self._claim_cursor.setdefault(s, b"0-0")
        self._owned = owned
        if not owned and self._prefetch is None:
            await asyncio.sleep((self.block_ms or 0) / 1000)
            return SourceBatch()
        if self.clock() >= self._next_claim:
            self._next_claim = self.clock() + self.claim_interval_s
            for s in owned:
                self._claim_cursor.setdefault(s, b"0-0")
        try:
            with unavailable_as_error():
                try:
                    batch = await self._prefetched_or_read(owned)
                except ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    # Redis lost the group (restart without persistence, stream deleted): re-create, retry once.
                    self._groups_ready.clear()
                    batch = await self._read(owned)
        except StreamUnavailable:
            # Redis may come back without our groups, and a reply lost in flight leaves entries pending
            # on us that only XAUTOCLAIM hands back: redo both once it is reachable.
            self._groups_ready.clear()
            for s in owned:
                self._claim_cursor.setdefault(s, b"0-0")
            raise
        if self.prefetch and (len(batch) or batch.rejected) and not any(s in self._claim_cursor for s in owned):
            # A backlog: ask for the next batch now, so Redis builds it while the caller processes this one.
            self._prefetch = asyncio.get_running_loop().create_task(self._read_new(owned, None, []))
        return batch

    async def ack(self, batch: SourceBatch) -> int:
        """XACK every id of the batch, one command per stream, one round trip; returns how many were pending."""
        by_stream: dict[bytes, list[bytes]] = {}
        for key, entry_id in zip(batch.streams, batch.ids, strict=True):
            ids = by_stream.get(key)
            if ids is None:
                ids = by_stream[key] = []
            ids.append(entry_id)
        if not by_stream:
            return 0
        with unavailable_as_error():
            pipe = self.redis.pipeline(transaction=False)
            for key, ids in by_stream.items():
                pipe.xack(key, self.group, *ids)
            return sum(await pipe.execute())

    async def pending_count(self, shards: Iterable[int] | None = None) -> int:
        """Entries delivered to the group but not acked yet, on the given (default: last read) shards."""
        shards = self._owned if shards is None else tuple(shards)
        if not shards:
            return 0
        with unavailable_as_error():
            pipe = self.redis.pipeline(transaction=False)
            for s in shards:
                pipe.xpending(self._keys[s], self.group)
            results = await pipe.execute(raise_on_error=False)
        return sum(r["pending"] for r in results if not isinstance(r, Exception))

    async def lag(self, shards: Iterable[int] | None = None) -> int:
        """Entries not yet delivered to the group, summed over the given (default: last read) shards."""
        shards = self._owned if shards is None else tuple(shards)
        if not shards:
            return 0
        with unavailable_as_error():
            pipe = self.redis.pipeline(transaction=False)
            for s in shards:
                pipe.xinfo_groups(self._keys[s])
                pipe.xlen(self._keys[s])
            results = await pipe.execute(raise_on_error=False)
        total = 0
        group = self.group.encode()
        for groups, length in zip(results[::2], results[1::2], strict=True):
            if isinstance(groups, Exception) or isinstance(length, Exception):
                continue
            g = next((g for g in groups if g.get("name") == group), None)
            if g is None:
                total += length
                continue
            # Redis 7.0 counts trimmed-away entries in `lag` (and reports nil after XDEL): the stream's
            # length bounds what can still be delivered.
            lag = g.get("lag")
            total += length if lag is None else min(int(lag), length)
        return total

    async def close(self) -> None:
        """Drop any read-ahead (its entries stay pending and are reclaimed like an unacked batch)."""
        task, self._prefetch = self._prefetch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._owns_client:
            await self.redis.aclose()

    async def _read(self, owned: tuple[int, ...]) -> SourceBatch:
        missing = [s for s in owned if s not in self._groups_ready]
        if missing:
            await self.ensure_groups(missing)
            for s in missing:
                self._claim_cursor.setdefault(s, b"0-0")
        due = [s for s in owned if s in self._claim_cursor]
        claimed = await self._autoclaim(due) if due else []
        # Reclaimed entries are returned at once rather than after a blocking wait for new ones.
        return await self._read_new(owned, None if claimed else self.block_ms, claimed)

    async def _prefetched_or_read(self, owned: tuple[int, ...]) -> SourceBatch:
        task, self._prefetch = self._prefetch, None
        if task is not None:
            # Even if ownership changed meanwhile, these entries are pending on us now: hand them out.
            batch = await task
            if len(batch) or batch.rejected or not owned:
                return batch
        return await self._read(owned)

    async def _read_new(self, owned: tuple[int, ...], block: int | None,
                        claimed: list[tuple[bytes, list]]) -> SourceBatch:
        """XREADGROUP ">" on every owned stream, decoded together with `claimed` (XAUTOCLAIM's entries)."""
        out = SourceBatch(claimed=sum(len(entries) for _, entries in claimed))
        rejected: list[tuple[bytes, bytes, dict, EventError]] = []
        # Only a read that cannot block (read-ahead, or after a claim) pauses the GC: across a blocking
        # wait the pause would hold up collection process-wide for nothing.
        with _gc_paused() if block is None else contextlib.nullcontext():
            reply = await self.redis.xreadgroup(self.group, self.consumer, {self._keys[s]: b">" for s in owned},
                                                count=self.batch_size, block=block)
            now = await self.redis_now() if self.max_ts_skew_s is not None and (reply or claimed) else None
            self._merge(out, claimed + reply, rejected, now, self.max_ts_skew_s)
        if rejected:
            await self._dead_letter(rejected)
        return out

    async def redis_now(self) -> float:
        """The Redis server's clock (Unix seconds): TIME, re-read every `clock_refresh_s`, extrapolated
        in between on the local monotonic clock (immune to the local wall clock being wrong)."""
        sample = self._redis_clock
        if sample is None or self.clock() - sample[1] >= self.clock_refresh_s:
            sec, usec = await self.redis.time()
            sample = self._redis_clock = (sec + usec / 1e6, self.clock())
        return sample[0] + (self.clock() - sample[1])

    @staticmethod
    def _merge(out: SourceBatch, per_stream: list[tuple[bytes, list]],
               rejected: list[tuple[bytes, bytes, dict, EventError]], now: float | None = None,
               skew: float | None = None) -> None:
        max_ts = now + skew if now is not None and skew is not None else None
        for key, entries in per_stream:
            if not entries:
                continue
            decoded = decode_batch(entries, max_ts, now)
            if len(decoded) == len(entries) and not out.ids:
                # Common case (one stream with data, all well-formed): adopt the columns, no copying.
                for name in _COLUMNS:
                    setattr(out, name, getattr(decoded, name))
            else:
                for name in _COLUMNS:
                    getattr(out, name).extend(getattr(decoded, name))
            out.streams.extend([key] * len(decoded))
            rejected.extend((key, eid, f, err) for eid, f, err in decoded.rejected)

    async def _autoclaim(self, shards: list[int]) -> list[tuple[bytes, list]]:
        pipe = self.redis.pipeline(transaction=False)
        for s in shards:
            pipe.xautoclaim(self._keys[s], self.group, self.consumer,
                            0 if s in self._taking_over else self.claim_min_idle_ms,
                            start_id=self._claim_cursor[s], count=self.batch_size)
        out = []
        for s, (cursor, entries, *_deleted) in zip(shards, await pipe.execute(), strict=True):
            # Redis 7 drops entries trimmed away while pending from the PEL itself (the third element).
            entries = [(eid, f) for eid, f in entries if eid is not None]
            if entries:
                out.append((self._keys[s], entries))
            if cursor in (b"0-0", "0-0"):
                del self._claim_cursor[s]
                self._taking_over.discard(s)
            else:
                self._claim_cursor[s] = cursor  # more to scan: continue on the next read
        return out

    async def _dead_letter(self, rejected: list[tuple[bytes, bytes, dict, EventError | str]]) -> None:
        # MULTI: an entry is acked only together with its dead-letter copy.
        pipe = self.redis.pipeline(transaction=True)
        for key, entry_id, fields, err in rejected:
            error = err if isinstance(err, str) else _error_text(fields, err)
            pipe.xadd(self._dead_key, {**_truncated_copy(fields, self.dead_letter_value_bytes),
                                       b"error": _cut(error.encode(errors="replace"), 512), b"source_stream": key,
                                       b"source_id": entry_id},
                      maxlen=self.dead_letter_maxlen, approximate=True)
            pipe.xack(key, self.group, entry_id)
        await pipe.execute()
        self.dead_lettered += len(rejected)

    async def dead_letter_rows(self, batch: SourceBatch, rows: Iterable[int], reasons: Iterable[str]) -> int:
        """Refuse decoded entries `rows` of `batch` (e.g. a function the platform does not have): each goes to
        the dead-letter stream with its reason and is acked with it, in one MULTI. They must not be acked
        otherwise. Returns how many; Redis errors propagate (the entries then stay pending, re-delivered)."""
        rejected = []
        for r, reason in zip(rows, reasons, strict=True):
            fields = {b"v": SCHEMA_VERSION.encode(), b"phase": PHASES[batch.phase[r]].encode(),
                      b"function": batch.function[r].encode(), b"namespace": batch.namespace[r].encode(),
                      b"ts": repr(batch.ts[r]).encode()}
            if batch.phase[r] != PHASE_START:
                fields.update({b"duration_ms": repr(batch.duration_ms[r]).encode(),
                               b"startup_ms": repr(batch.startup_ms[r]).encode(),
                               b"wait_ms": repr(batch.wait_ms[r]).encode(),
                               b"cold": b"1" if batch.cold[r] else b"0", b"status": str(batch.status[r]).encode(),
                               b"instance": batch.instance[r].encode()})
            rejected.append((batch.streams[r], batch.ids[r], fields, reason))
        if rejected:
            with unavailable_as_error():
                await self._dead_letter(rejected)
        return len(rejected)


def _cut(value: bytes, limit: int) -> bytes:
    return value if len(value) <= limit else value[:limit] + b"...[%d bytes]" % len(value)


def _truncated_copy(fields: dict, value_bytes: int) -> dict:
    """The entry as the dead letter keeps it: at most DEAD_LETTER_MAX_FIELDS fields, long values cut (their
    original length noted). Small entries are copied unchanged; a cut one has `truncated` = fields/bytes."""
    copy: dict = {}
    size = 0
    for i, (k, v) in enumerate(fields.items()):
        kb = k if isinstance(k, bytes) else str(k).encode()
        vb = v if isinstance(v, bytes) else str(v).encode()
        size += len(kb) + len(vb)
        if i < DEAD_LETTER_MAX_FIELDS:
            key = _cut(kb, 64)
            if key in (b"error", b"source_stream", b"source_id", b"truncated"):
                key = b"field:" + key  # never let the entry overwrite the dead letter's own fields
            copy[key] = _cut(vb, value_bytes)
    if len(fields) > DEAD_LETTER_MAX_FIELDS or any(len(v) > value_bytes for v in copy.values()) or \
            any(len(k) > 64 for k in fields if isinstance(k, bytes)):
        copy[b"truncated"] = b"%d fields, %d bytes" % (len(fields), size)
    return copy


def _error_text(fields: dict, err: EventError) -> str:
    # The schema reports undecodable bytes against the whole entry; name the field for whoever reads
    # the dead letters.
    if err.field == "(entry)":
        for k, v in fields.items():
            try:
                k.decode()
                v.decode()
            except UnicodeDecodeError:
                return f"field {k.decode(errors='replace')!r}: not UTF-8 ({err})"
    return str(err)
