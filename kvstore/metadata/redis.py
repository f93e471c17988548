"""The cluster metadata backend: the registry and the block index in one Redis server.

Data model (``P`` is ``key_prefix``; a block key is its raw 16 bytes, never hex)::

    P:node:<node_id>     STRING  NodeInfo as JSON, SET with PX ttl   (live iff it exists)
    P:nodes              SET     node ids that registered or published, live or dead
    P:idx:<16 bytes>     HASH    node_id -> tier value ("hbm" | "dram" | "nvme")
    P:nodeidx:<node_id>  SET     the node's block keys (reverse map of its idx fields)

Invariants:
    * Liveness is the node key's TTL alone: a node that stops calling ``register``
      disappears from ``nodes`` and ``locate`` when Redis expires the key. Its idx fields
      linger (and count again if it registers again) until ``unregister``,
      ``replace_index`` or ``reap_dead`` removes them.
    * ``P:idx:<key>`` has field ``n`` iff ``P:nodeidx:<n>`` has member ``key``. Every
      write keeps both in one Lua script, so the pair never diverges, even on failure.
    * Every round trip is bounded by ``timeout_s``; a failure raises
      ``MetadataUnavailable`` and nothing partial is returned. redis-py reconnects on
      the next call, so a restarted Redis needs no new backend (the nodes re-register).

Round trips: ``register`` 1 (MULTI: SET PX + SADD), ``publish`` 1 (one EVAL applying the
changes in order, atomically), ``locate`` 1 (one EVAL: HGETALL per key, EXISTS once per
distinct holder), ``nodes`` 1 (one EVAL: SMEMBERS + GET). ``replace_index`` and
``unregister`` work in chunks of ``chunk_entries`` so that no script blocks Redis for
more than a few ms: ``replace_index`` makes 1 EVAL per chunk written, 1 SCARD, and only if
the node held other keys, 1 SSCAN per chunk of its set and 1 EVAL per chunk of stale
entries; ``unregister`` 1 EVAL (SPOP + HDEL) per chunk. Measured on one host with Redis
7.0: 1M entries take 4-5 s to replace and 3-4 s to unregister, about half of it Redis
busy; ``replace_index`` holds the new entries in memory while it runs. ``publish`` is one
script whatever its size (~3 ms of Redis per 5,000 changes), so keep batches modest.
A node must not ``publish`` while its own ``replace_index`` runs.

On a timeout the script may or may not have run; each one is atomic and idempotent, so
the caller can simply try again (``replace_index`` and ``unregister`` converge).

Scripts touch keys they compute (``P:idx:`` + member), so this works on a standalone or
Sentinel-managed Redis, not on Redis Cluster. Memory (Redis 7.0): ~190 bytes per block
key held by one node, ~70 more per extra node holding it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from kvstore.metadata.base import IndexChange, LinkInfo, MetadataUnavailable, NodeInfo, TierCapacity
from kvstore.metadata.memory import check_key, check_ttl
from kvstore.types import BlockKey, TierKind

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TIERS_BY_VALUE = {t.value.encode(): t for t in TierKind}

# KEYS: node's index set, nodes set. ARGV: node id, idx prefix, then (key, tier) pairs
# where tier "" removes the entry. Applied in order; the last change of a key wins.
_APPLY_LUA = """
local node, pre = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  local key, tier = ARGV[i], ARGV[i + 1]
  if tier == '' then
    redis.call('HDEL', pre .. key, node)
    redis.call('SREM', KEYS[1], key)
  else
    redis.call('HSET', pre .. key, node, tier)
    redis.call('SADD', KEYS[1], key)
  end
end
redis.call('SADD', KEYS[2], node)
return 0
"""

# ARGV: idx prefix, node key prefix, then the block keys. Returns, per key, a flat
# [node, tier, ...] array of its live holders (liveness checked once per node).
_LOCATE_LUA = """
local live, out = {}, {}
for i = 3, #ARGV do
  local flat = redis.call('HGETALL', ARGV[1] .. ARGV[i])
  local row = {}
  for j = 1, #flat, 2 do
    local node = flat[j]
    if live[node] == nil then live[node] = redis.call('EXISTS', ARGV[2] .. node) == 1 end
    if live[node] then row[#row + 1] = node; row[#row + 1] = flat[j + 1] end
  end
  out[#out + 1] = row
end
return out
"""

# KEYS: nodes set. ARGV: node key prefix, then "live" or "dead". Returns live nodes'
# JSON or dead nodes' ids.
_NODES_LUA = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local info = redis.call('GET', ARGV[1] .. id)
  if ARGV[2] == 'live' and info then out[#out + 1] = info end
  if ARGV[2] == 'dead' and not info then out[#out + 1] = id end
end
return out
"""

# KEYS: node key, node's index set, nodes set. ARGV: node id, max entries, idx prefix,
# "force" (delete the node key first) or "dead" (stop, returning -1, if the node is live).
# Drops up to max entries; forgets the node once none is left. Returns how many are left.
_REAP_LUA = """
if ARGV[4] == 'force' then
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
for _, key in ipairs(redis.call('SPOP', KEYS[2], ARGV[2])) do
  redis.call('HDEL', ARGV[3] .. key, ARGV[1])
end
local left = redis.call('SCARD', KEYS[2])
if left == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return left
"""


def encode_node(node: NodeInfo) -> bytes:
    """NodeInfo as compact JSON (tiers by value; floats round-trip exactly)."""
    doc = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    doc["tiers"] = [[t.tier.value, t.capacity_bytes, t.used_bytes] for t in node.tiers]
    doc["data_addresses"] = list(node.data_addresses)
    doc["links"] = [[k.peer_id, k.transport, k.address, k.gbps, k.rtt_us] for k in node.links]
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_node(raw: bytes) -> NodeInfo:
    """The inverse of ``encode_node``; raises ValueError/KeyError/TypeError if malformed."""
    doc = json.loads(raw)
    return NodeInfo(
        node_id=str(doc["node_id"]),
        address=str(doc["address"]),
        host_id=str(doc["host_id"]),
        tiers=tuple(TierCapacity(TierKind(t), int(c), int(u)) for t, c, u in doc["tiers"]),
        started_s=float(doc["started_s"]),
        heartbeat_s=float(doc["heartbeat_s"]),
        degraded=bool(doc["degraded"]),
        labels={str(k): str(v) for k, v in doc["labels"].items()},
        data_addresses=tuple(str(a) for a in doc.get("data_addresses", ())),
        links=tuple(
            LinkInfo(str(p), str(t), str(a), float(g), float(r))
            for p, t, a, g, r in doc.get("links", ())
        ),
    )


class RedisMetadata:
    """``MetadataService`` over redis-py asyncio (hiredis parser when installed)."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "strata",
        timeout_s: float = 1.0,
        chunk_entries: int = 2_000,
    ) -> None:
        """Connects lazily: an unreachable Redis surfaces on the first call.

        Args:
            url: ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``).
            key_prefix: namespace of every key, so clusters can share one Redis.
            timeout_s: bound on each round trip, connecting included.
            chunk_entries: entries per script in ``replace_index`` / ``unregister``.
        """
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a broken connection (idempotent scripts only);
            # the deadline below still bounds the whole call.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            protocol=2,  # RESP2 reply shapes: scripts return flat arrays of bytes
            decode_responses=False,  # block keys are raw bytes
        )
        kwargs = self._client.connection_pool.connection_kwargs
        self._where = str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
        self._timeout_s = timeout_s
        self._chunk_entries = chunk_entries
        self._prefix = key_prefix.encode()
        self._nodes_key = self._prefix + b":nodes"
        self._node_prefix = self._prefix + b":node:"
        self._idx_prefix = self._prefix + b":idx:"
        self._closed = False

    async def register(self, node: NodeInfo, ttl_s: float) -> bool:
        """Add or refresh ``node``; it stays live for ``ttl_s`` seconds (1 round trip).
        Returns whether it was live already.

        Raises:
            InvalidArgument: ``ttl_s`` is not a positive, finite number.
            MetadataUnavailable: Redis cannot be reached or failed.
        """
        check_ttl(ttl_s)
        ttl_ms = max(1, round(ttl_s * 1000))

        async def run() -> bool:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._node_key(node.node_id), encode_node(node), px=ttl_ms, get=True)
                pipe.sadd(self._nodes_key, node.node_id)
                previous, _ = await pipe.execute()
            return previous is not None

        return await self._call("register", run)

    async def unregister(self, node_id: str) -> None:
        """Remove a node at once, then its entries chunk by chunk (stops if it re-registers).

        Raises:
            MetadataUnavailable: Redis cannot be reached or failed; a later
                ``unregister`` or ``reap_dead`` finishes the job.
        """
        left = await self._reap_chunk(node_id, force=True)
        while left > 0:
            left = await self._reap_chunk(node_id, force=False)
        logger.info("unregistered node %s", node_id)

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes, sorted by node id (1 round trip); malformed records are skipped.

        Raises:
            MetadataUnavailable: Redis cannot be reached or failed.
        """
        raws = await self._call(
            "nodes",
            lambda: self._client.eval(_NODES_LUA, 1, self._nodes_key, self._node_prefix, "live"),
        )
        found: list[NodeInfo] = []
        for raw in cast(list[bytes], raws):
            try:
                found.append(decode_node(raw))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping malformed node record %r: %s", raw[:200], exc)
        return sorted(found, key=lambda n: n.node_id)

    async def publish(self, node_id: str, changes: Sequence[IndexChange]) -> None:
        """Apply ``changes`` of ``node_id`` in order, atomically, in 1 round trip.

        Raises:
            InvalidArgument: a key is not ``KEY_BYTES`` long (nothing is applied).
            MetadataUnavailable: Redis cannot be reached or failed (all or nothing of
                the batch was applied; publishing it again is safe).
        """
        for change in changes:
            check_key(change.key)
        if changes:
            pairs = [(c.key, "" if c.tier is None else c.tier.value) for c in changes]
            await self._apply("publish", node_id, pairs)

    async def replace_index(
        self, node_id: str, entries: Iterable[tuple[BlockKey, TierKind]]
    ) -> None:
        """Make ``entries`` the node's whole index: write them, then drop the rest.

        Readers see old and new entries side by side while it runs, never a gap.

        Raises:
            InvalidArgument: a key is not ``KEY_BYTES`` long (nothing is written).
            MetadataUnavailable: Redis cannot be reached or failed midway; calling
                again converges.
        """
        new = dict(entries)
        for key in new:
            check_key(key)
        items = [(key, tier.value) for key, tier in new.items()]
        for start in range(0, len(items), self._chunk_entries):
            await self._apply("replace_index", node_id, items[start : start + self._chunk_entries])
        num_stale = await self._drop_stale(node_id, new)
        logger.info("replaced index of %s: %d entries, %d stale", node_id, len(new), num_stale)

    async def locate(self, keys: Sequence[BlockKey]) -> list[dict[str, TierKind]]:
        """For each key, the live nodes holding it and their tier (1 round trip).

        Raises:
            InvalidArgument: a key is not ``KEY_BYTES`` long.
            MetadataUnavailable: Redis cannot be reached or failed.
        """
        for key in keys:
            check_key(key)
        if not keys:
            return []
        rows = await self._call(
            "locate",
            lambda: self._client.eval(_LOCATE_LUA, 0, self._idx_prefix, self._node_prefix, *keys),
        )
        return [self._holders(row) for row in cast(list[list[bytes]], rows)]

    async def reap_dead(self, max_entries: int = 10_000) -> bool:
        """Forget dead nodes: drop up to about ``max_entries`` of their entries, then them.

        Every node's publisher calls it with a small budget at each heartbeat.

        Returns:
            Whether work remains (call again).

        Raises:
            MetadataUnavailable: Redis cannot be reached or failed.
        """
        raw_ids = await self._call(
            "reap_dead",
            lambda: self._client.eval(_NODES_LUA, 1, self._nodes_key, self._node_prefix, "dead"),
        )
        budget = max_entries
        for node_id in sorted(i.decode() for i in cast(list[bytes], raw_ids)):
            left = 1
            while left > 0 and budget > 0:
                count = min(budget, self._chunk_entries)
                left = await self._reap_chunk(node_id, force=False, count=count)
                budget -= count
            if left > 0:
                return True
        return False

    async def close(self) -> None:
        """Close the connection pool; later calls raise ``MetadataUnavailable``."""
        if not self._closed:
            self._closed = True
            await self._client.aclose(close_connection_pool=True)

    def _node_key(self, node_id: str) -> bytes:
        return self._node_prefix + node_id.encode()

    def _node_index_key(self, node_id: str) -> bytes:
        return self._prefix + b":nodeidx:" + node_id.encode()

    def _holders(self, row: list[bytes]) -> dict[str, TierKind]:
        holders: dict[str, TierKind] = {}
        for node, value in zip(row[::2], row[1::2], strict=True):
            tier = _TIERS_BY_VALUE.get(value)
            if tier is None:
                logger.warning("ignoring unknown tier %r of node %r", value, node)
            else:
                holders[node.decode()] = tier
        return holders

    async def _apply(self, op: str, node_id: str, pairs: Sequence[tuple[bytes, str]]) -> None:
        args: list[bytes | str] = [node_id, self._idx_prefix]
        for key, tier in pairs:
            args += (key, tier)
        keys = (self._node_index_key(node_id), self._nodes_key)
        await self._call(op, lambda: self._client.eval(_APPLY_LUA, 2, *keys, *args))

    async def _drop_stale(self, node_id: str, keep: dict[BlockKey, TierKind]) -> int:
        """Remove the node's entries whose key is not in ``keep``; returns how many."""
        set_key = self._node_index_key(node_id)
        # The set holds every new key now, so the same size means no stale key: skip the scan.
        num_held = await self._call("replace_index", lambda: self._client.scard(set_key))
        if int(num_held) == len(keep):
            return 0

        async def scan(cursor: int) -> tuple[int, list[bytes]]:
            reply = await self._client.sscan(set_key, cursor, count=self._chunk_entries)
            return cast(tuple[int, list[bytes]], reply)

        cursor, num_stale = 0, 0
        while True:
            cursor, members = await self._call("replace_index", functools.partial(scan, cursor))
            stale = [(m, "") for m in members if m not in keep]
            if stale:
                await self._apply("replace_index", node_id, stale)
                num_stale += len(stale)
            if cursor == 0:
                return num_stale

    async def _reap_chunk(self, node_id: str, *, force: bool, count: int = 0) -> int:
        """Drop up to ``count`` (default a chunk) entries; -1 if the node is live again."""
        count = count or self._chunk_entries
        keys = (self._node_key(node_id), self._node_index_key(node_id), self._nodes_key)
        args = (node_id, count, self._idx_prefix, "force" if force else "dead")
        left = await self._call(
            "unregister" if force else "reap", lambda: self._client.eval(_REAP_LUA, 3, *keys, *args)
        )
        return int(left)

    async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run one round trip under the deadline, mapping every failure."""
        if self._closed:
            raise MetadataUnavailable(f"redis metadata at {self._where} is closed ({op})")
        try:
            async with asyncio.timeout(self._timeout_s):
                return await make()
        except TimeoutError as exc:
            raise MetadataUnavailable(
                f"redis at {self._where}: {op} timed out after {self._timeout_s} s"
            ) from exc
        except (RedisError, OSError) as exc:
            raise MetadataUnavailable(f"redis at {self._where}: {op} failed: {exc}") from exc
