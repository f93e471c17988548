"""The router's global view: how much of a prompt's prefix each prefill worker's store
node holds.

Two sources, the first that answers in time wins:

1. the store itself: a local-scope ``Lookup`` to every prefill worker's store node, in
   parallel, each answering for itself from its own index (no metadata round trip, no
   publishing lag), bounded by ``lookup_timeout_s``. Authoritative: it sees evictions.
   Its answers also refresh the router's own index.
2. the router's own ``PrefixIndex``: which prompts it placed where. Always instant;
   it may remember blocks a node has since evicted (a prefill then simply reuses less).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from engine.router.prefix_index import PrefixIndex
from engine.router.workers import WorkerPool
from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.client.store_client import NodePrefix
from kvstore.errors import KVStoreError, NotFound
from kvstore.types import BlockKey, NamespaceId

logger = logging.getLogger(__name__)


class GlobalView:
    def __init__(
        self,
        pool: WorkerPool,
        namespace_id: NamespaceId,
        *,
        index: PrefixIndex | None = None,
        lookup_timeout_s: float = 0.02,
        token: str = "",
    ) -> None:
        self.pool = pool
        self.namespace_id = namespace_id
        self.index = index or PrefixIndex(max_blocks=1_000_000)
        self._timeout_s = lookup_timeout_s
        options = CallOptions(token=token, timeout_s=max(lookup_timeout_s, 0.5), retries=0)
        self._stores = {a: StoreClient(a, options) for a in pool.store_addresses()}
        self.lookups = {"answered": 0, "timed_out": 0, "failed": 0}

    async def prefix_blocks(self, keys: Sequence[BlockKey]) -> dict[str, int]:
        """Prefill worker id -> leading blocks of ``keys`` its store node holds."""
        if not keys:
            return {}
        answers = await self._lookup(keys)
        if answers is None:
            return self.index.longest(keys)
        by_node = self.pool.by_store_node()
        blocks: dict[str, int] = {}
        for node in answers:
            worker = by_node.get(node.node_id)
            if worker is not None:
                blocks[worker] = max(blocks.get(worker, 0), node.num_blocks)
                self.index.add(worker, keys[: node.num_blocks])
        return blocks

    def placed(self, worker: str, keys: Sequence[BlockKey]) -> None:
        """A prefill on ``worker`` finished: its node now holds these blocks."""
        self.index.add(worker, keys)

    async def close(self) -> None:
        for client in self._stores.values():
            await client.close()

    async def _lookup(self, keys: Sequence[BlockKey]) -> list[NodePrefix] | None:
        if not self._stores:
            return None
        calls = [self._ask(client, keys) for client in self._stores.values()]
        try:
            results = await asyncio.wait_for(asyncio.gather(*calls), self._timeout_s)
        except TimeoutError:
            self.lookups["timed_out"] += 1
            return None
        if any(r is None for r in results):
            self.lookups["failed"] += 1
            return None
        self.lookups["answered"] += 1
        return [node for answer in results if answer is not None for node in answer]

    async def _ask(self, client: StoreClient, keys: Sequence[BlockKey]) -> list[NodePrefix] | None:
        try:
            return await client.lookup(self.namespace_id, keys, local=True)
        except NotFound:  # the namespace is not registered there yet: nothing cached
            return []
        except KVStoreError as exc:
            logger.debug("lookup on %s failed: %s", client.address, exc)
            return None
