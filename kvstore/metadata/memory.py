"""The embedded metadata backend: the registry and the block index in plain dicts.

The single-machine default: one process, no server, nothing to reach, so it never raises
``MetadataUnavailable``. It keeps the Protocol's semantics exactly as the ``redis``
backend does, so one contract test suite runs against both::

    _nodes      node_id -> (NodeInfo, expires_s)       registrations, live or not
    _index      key -> {node_id -> tier}               every published entry
    _node_keys  node_id -> {key}                       reverse map, for replace/unregister

Invariants:
    * ``_index`` and ``_node_keys`` mirror each other exactly: ``key in _node_keys[n]``
      iff ``n in _index[key]``; empty inner containers are deleted.
    * A node is live iff it is registered and ``clock() < expires_s``. Liveness is
      checked on every read; nothing is dropped when a TTL passes. A dead node's entries
      stay (and come back if it registers again) until ``unregister``, ``replace_index``
      or ``reap_dead`` removes them, as they linger in Redis.
    * Values are copied in and out (``labels`` is a mutable dict), so callers never
      share state with the store, as with a remote one.

Cost: every call is O(its input), except ``nodes`` (O(registered nodes)) and
``unregister`` / ``replace_index`` (O(the node's entries)). ``reap_dead`` removes at most
``max_entries`` entries per call. Calls never await, so each one is atomic on the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence

from kvstore.errors import InvalidArgument
from kvstore.metadata.base import IndexChange, NodeInfo
from kvstore.types import KEY_BYTES, BlockKey, TierKind

logger = logging.getLogger(__name__)


def check_key(key: bytes) -> None:
    """Raise ``InvalidArgument`` unless ``key`` is a ``KEY_BYTES``-long bytes value."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidArgument(f"block key must be {KEY_BYTES} bytes, got {key!r}")


def check_ttl(ttl_s: float) -> None:
    """Raise ``InvalidArgument`` unless ``ttl_s`` is a positive, finite number of seconds."""
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise InvalidArgument(f"ttl_s must be positive and finite, got {ttl_s!r}")


def copy_node(node: NodeInfo) -> NodeInfo:
    return dataclasses.replace(node, labels=dict(node.labels))


@dataclasses.dataclass(slots=True)
class _Registration:
    node: NodeInfo
    expires_s: float


class MemoryMetadata:
    """In-process ``MetadataService``; liveness by TTL on an injectable monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._nodes: dict[str, _Registration] = {}
        self._index: dict[BlockKey, dict[str, TierKind]] = {}
        self._node_keys: dict[str, set[BlockKey]] = {}

    async def register(self, node: NodeInfo, ttl_s: float) -> bool:
        """Add or refresh ``node``; it stays live for ``ttl_s`` seconds. Returns whether
        it was live already.

        Raises:
            InvalidArgument: ``ttl_s`` is not a positive, finite number.
        """
        check_ttl(ttl_s)
        now = self._clock()
        previous = self._nodes.get(node.node_id)
        self._nodes[node.node_id] = _Registration(copy_node(node), now + ttl_s)
        logger.debug("registered node %s for %.3f s", node.node_id, ttl_s)
        return previous is not None and now < previous.expires_s

    async def unregister(self, node_id: str) -> None:
        """Remove a node and all its index entries; unknown ids are ignored."""
        self._nodes.pop(node_id, None)
        self._drop_all(node_id)
        logger.info("unregistered node %s", node_id)

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes, sorted by node id."""
        now = self._clock()
        live = [r.node for r in self._nodes.values() if now < r.expires_s]
        return sorted((copy_node(n) for n in live), key=lambda n: n.node_id)

    async def publish(self, node_id: str, changes: Sequence[IndexChange]) -> None:
        """Apply ``changes`` of ``node_id`` in order (the last change of a key wins).

        Raises:
            InvalidArgument: a key is not ``KEY_BYTES`` long (nothing is applied).
        """
        for change in changes:
            check_key(change.key)
        for key, tier in changes:
            if tier is None:
                self._drop(node_id, key)
            else:
                self._set(node_id, key, tier)

    async def replace_index(
        self, node_id: str, entries: Iterable[tuple[BlockKey, TierKind]]
    ) -> None:
        """Make ``entries`` the node's whole index (the last tier of a repeated key wins).

        Raises:
            InvalidArgument: a key is not ``KEY_BYTES`` long (the old index is kept).
        """
        new = dict(entries)
        for key in new:
            check_key(key)
        self._drop_all(node_id)
        for key, tier in new.items():
            self._set(node_id, key, tier)

    async def locate(self, keys: Sequence[BlockKey]) -> list[dict[str, TierKind]]:
        """For each key, the live nodes holding it and their tier (``node_id -> tier``).

        Raises:
            InvalidArgument: a key is not ``KEY_BYTES`` long.
        """
        for key in keys:
            check_key(key)
        now = self._clock()
        live = {n for n, r in self._nodes.items() if now < r.expires_s}
        empty: dict[str, TierKind] = {}
        return [{n: t for n, t in self._index.get(key, empty).items() if n in live} for key in keys]

    async def reap_dead(self, max_entries: int = 10_000) -> bool:
        """Forget dead nodes: drop up to ``max_entries`` of their entries, then them.

        Every node's publisher calls it with a small budget at each heartbeat.

        Returns:
            Whether work remains (call again).
        """
        now = self._clock()
        dead = {n for n, r in self._nodes.items() if now >= r.expires_s}
        dead.update(n for n in self._node_keys if n not in self._nodes)
        budget = max_entries
        for node_id in sorted(dead):
            keys = self._node_keys.get(node_id, set())
            while keys and budget > 0:
                self._drop(node_id, next(iter(keys)))
                budget -= 1
            if node_id in self._node_keys:
                return True
            self._nodes.pop(node_id, None)
        return False

    async def close(self) -> None:
        """Nothing to release."""

    def _set(self, node_id: str, key: BlockKey, tier: TierKind) -> None:
        self._index.setdefault(key, {})[node_id] = tier
        self._node_keys.setdefault(node_id, set()).add(key)

    def _drop(self, node_id: str, key: BlockKey) -> None:
        holders = self._index.get(key)
        if holders is not None and holders.pop(node_id, None) is not None and not holders:
            del self._index[key]
        keys = self._node_keys.get(node_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._node_keys[node_id]

    def _drop_all(self, node_id: str) -> None:
        for key in self._node_keys.pop(node_id, set()):
            holders = self._index[key]
            del holders[node_id]
            if not holders:
                del self._index[key]
