"""The store as the connector sees it: an accelerator, never a dependency.

When the store cannot be reached, ``load`` says nothing is cached and ``save`` drops the
blocks, the engine recomputes, and the stats say so (``unreachable``). After a failure the
store is left alone for ``retry_after_s``, so that requests do not each wait out a
timeout. A store that answers but refuses the namespace (its blocks are larger than the
node's ``store.block_bytes``) is not "unreachable": ``connect`` raises a ``ConfigError``
naming both sizes, and the engine does not start.

The counters (``ConnectorStats``) are the engine's view of the store: what it asked
(``lookup_blocks``) and found, why a lookup came up short (``MissCause``), the bytes it
moved and how long the transfers took (start to bytes in place: they overlap compute).
The store node counts its own side (hits by tier, misses by ``MissReason``).

Runs on the client's event loop (the client is asynchronous).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.client import StoreClient
from kvstore.client.layered import LayeredGet, LayeredPut
from kvstore.errors import ConfigError, InvalidArgument, KVStoreError
from kvstore.hashing import Namespace
from kvstore.reservations import PutResult
from kvstore.types import BlockKey, NamespaceId

logger = logging.getLogger(__name__)


class MissCause(enum.Enum):
    """Why a lookup found a block missing, from the engine's side (a block held when
    looked up that fails its load is counted by the engine: ``corrupted_blocks``, or
    its own load errors)."""

    NOT_CACHED = "not_cached"  # the store did not hold it when asked
    STORE_DOWN = "store_down"  # the store could not be asked (down, slow, left alone)


@dataclass
class ConnectorStats:
    lookup_blocks: int = 0  # blocks asked about (each lookup counts)
    lookup_hit_blocks: int = 0  # of those, the leading ones the store held
    miss_blocks: Counter[MissCause] = field(default_factory=Counter)
    loaded_blocks: Counter[str] = field(default_factory=Counter)  # by tier
    loaded_by_node: Counter[str] = field(default_factory=Counter)
    loaded_bytes: int = 0
    load_s: float = 0.0  # summed over loads, start to landed and checked
    corrupted_blocks: int = 0  # cached blocks that failed their checksum (recomputed)
    saved_blocks: int = 0
    saved_bytes: int = 0  # of the blocks stored anew
    save_s: float = 0.0  # summed over saves, start to committed
    commit_wait_s: float = 0.0  # the engine waited for commits (its answers wait for them)
    save_failures: int = 0
    unreachable: int = 0  # store calls that failed: the engine recomputed instead
    skipped: int = 0  # store calls not tried while the store was down

    def as_dict(self) -> dict[str, object]:
        return {
            "lookup_blocks": self.lookup_blocks,
            "lookup_hit_blocks": self.lookup_hit_blocks,
            "miss_blocks": {c.value: n for c, n in self.miss_blocks.items()},
            "loaded_blocks": dict(self.loaded_blocks),
            "loaded_by_node": dict(self.loaded_by_node),
            "loaded_bytes": self.loaded_bytes,
            "load_s": self.load_s,
            "corrupted_blocks": self.corrupted_blocks,
            "saved_blocks": self.saved_blocks,
            "saved_bytes": self.saved_bytes,
            "save_s": self.save_s,
            "commit_wait_s": self.commit_wait_s,
            "save_failures": self.save_failures,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
        }


class StoreBackend:
    def __init__(
        self,
        client: StoreClient,
        namespace: Namespace,
        *,
        retry_after_s: float = 5.0,
        lookup_timeout_s: float = 0.5,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.stats = ConnectorStats()
        self._retry_after_s = retry_after_s
        self._lookup_timeout_s = lookup_timeout_s
        self._ns_id: NamespaceId | None = None
        self._down_until = 0.0
        self.node_id = ""  # the store node this engine uses (known once reached)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def connect(self, block_tokens_key: str = "block_tokens") -> None:
        """Register the namespace at start-up (``block_tokens_key``: the setting that
        chose the tokens per block, named in the error).

        Raises:
            ConfigError: the store refused the namespace (e.g. blocks larger than its
                ``store.block_bytes``). An unreachable store is not an error here: the
                engine recomputes and tries again later.
        """
        try:
            await self._namespace(strict=True)
        except InvalidArgument as exc:
            spec = self.namespace.spec
            raise ConfigError(
                "store.block_bytes",
                f"the store node {self.client.address} refuses this engine's KV blocks"
                f" ({self.namespace.block_bytes} bytes: model {self.namespace.model_id!r},"
                f" {block_tokens_key} = {spec.block_tokens}): {exc}",
            ) from exc

    async def lookup(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` the store holds now (0 when it cannot say within
        the lookup deadline: a slow store costs reuse, never a stalled scheduler)."""
        ns_id = await self._namespace()
        if not keys:
            return 0
        self.stats.lookup_blocks += len(keys)
        if ns_id is None:
            self.stats.miss_blocks[MissCause.STORE_DOWN] += len(keys)
            return 0
        try:
            found = await asyncio.wait_for(
                self.client.lookup(ns_id, keys), timeout=self._lookup_timeout_s
            )
        except (KVStoreError, TimeoutError) as exc:
            self._down(exc)
            self.stats.miss_blocks[MissCause.STORE_DOWN] += len(keys)
            return 0
        held = max((p.num_blocks for p in found), default=0)
        self.stats.lookup_hit_blocks += held
        self.stats.miss_blocks[MissCause.NOT_CACHED] += len(keys) - held
        return held

    async def load(self, keys: Sequence[BlockKey], dsts: Sequence[memoryview]) -> LayeredGet | None:
        """Start loading the cached leading run of ``keys`` into ``dsts`` (None: the
        store is unreachable; nothing is cached as far as the engine can tell)."""
        ns_id = await self._namespace()
        if ns_id is None or not keys:
            return None
        try:
            get = await self.client.get_layered(ns_id, keys, dsts, self.namespace.spec.num_layers)
        except KVStoreError as exc:
            self._down(exc)
            return None
        self.stats.loaded_blocks.update(t.value for t in get.tiers)
        self.stats.loaded_by_node.update(get.node_ids)
        self.stats.loaded_bytes += get.num_hits * self.namespace.block_bytes
        return get

    async def save(
        self, keys: Sequence[BlockKey], blocks: Sequence[memoryview], parent: BlockKey | None
    ) -> LayeredPut | None:
        """A layer-wise put of new full blocks (None: not saved; the store is down)."""
        ns_id = await self._namespace()
        if ns_id is None or not keys:
            return None
        try:
            return await self.client.put_layered(
                ns_id, keys, blocks, self.namespace.spec.num_layers, parent
            )
        except KVStoreError as exc:
            self._down(exc)
            return None

    async def put(
        self, keys: Sequence[BlockKey], blocks: Sequence[memoryview], parent: BlockKey | None
    ) -> int:
        """A whole-block put of full blocks; how many the store now holds anew."""
        ns_id = await self._namespace()
        if ns_id is None or not keys:
            return 0
        started_s = time.perf_counter()
        try:
            result: PutResult = await self.client.put(ns_id, keys, blocks, parent)
        except KVStoreError as exc:
            self.stats.save_failures += 1
            self._down(exc)
            return 0
        self._saved(result, time.perf_counter() - started_s)
        return result.num_stored

    async def remove(self, keys: Sequence[BlockKey]) -> int:
        """Remove blocks from the store; how many it held (0 when unreachable)."""
        ns_id = await self._namespace()
        if ns_id is None or not keys:
            return 0
        try:
            return await self.client.remove(ns_id, keys)
        except KVStoreError as exc:
            self._down(exc)
            return 0

    async def commit(self, put: LayeredPut) -> None:
        try:
            result = await put.commit()
        except KVStoreError as exc:
            self.stats.save_failures += 1
            self._down(exc)
            return
        self._saved(result, put.save_s)

    def _saved(self, result: PutResult, seconds: float) -> None:
        self.stats.saved_blocks += result.num_stored
        self.stats.saved_bytes += result.num_stored * self.namespace.block_bytes
        self.stats.save_s += seconds

    def failed(self, exc: BaseException) -> None:
        """A transfer the connector drove itself failed (e.g. mid-load)."""
        self._down(exc)

    async def close(self) -> None:
        await self.client.close()

    async def _namespace(self, *, strict: bool = False) -> NamespaceId | None:
        if not self.available:
            self.stats.skipped += 1
            return None
        if self._ns_id is None:
            try:
                self._ns_id = await self.client.register_namespace(self.namespace)
                self.node_id = (await self.client.stats()).node_id
            except InvalidArgument as exc:
                if strict:
                    raise  # a refusal, not an outage: the caller reports it
                self._down(exc)
                return None
            except KVStoreError as exc:
                self._down(exc)
                return None
        return self._ns_id

    def _down(self, exc: BaseException) -> None:
        self.stats.unreachable += 1
        self._ns_id = None  # a restarted store forgot it: register again
        self._down_until = time.monotonic() + self._retry_after_s
        logger.warning(
            "KV store %s unreachable (%s); recomputing for %.0f s",
            self.client.address,
            exc,
            self._retry_after_s,
        )
