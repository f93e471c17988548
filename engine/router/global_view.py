"""The router's global view: how much of a prompt's prefix each prefill worker's store
node holds.

Two sources, the first that answers in time wins:

1. the store itself: every prefill worker's store node asked at once, bounded by
   ``lookup_timeout_s`` (``StoreLookups``). Authoritative: it sees evictions.
   Its answers also refresh the router's own index.
2. the router's own ``PrefixIndex``: which prompts it placed where. Always instant;
   it may remember blocks a node has since evicted (a prefill then simply reuses less).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.router.prefix_index import PrefixIndex
from engine.router.store_lookups import StoreLookups
from engine.router.workers import WorkerPool
from kvstore.types import BlockKey, NamespaceId


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
        self.stores = StoreLookups(
            pool.store_addresses(), namespace_id, timeout_s=lookup_timeout_s, token=token
        )
        self.lookups = self.stores.lookups

    async def prefix_blocks(self, keys: Sequence[BlockKey]) -> dict[str, int]:
        """Prefill worker id -> leading blocks of ``keys`` its store node holds."""
        if not keys:
            return {}
        answers = await self.stores.ask(keys)
        if answers is None or None in answers.values():
            return self.index.longest(keys)
        by_node = self.pool.by_store_node()
        blocks: dict[str, int] = {}
        for node in (n for answer in answers.values() if answer for n in answer):
            worker = by_node.get(node.node_id)
            if worker is not None:
                blocks[worker] = max(blocks.get(worker, 0), node.num_blocks)
                self.index.add(worker, keys[: node.num_blocks])
        return blocks

    def placed(self, worker: str, keys: Sequence[BlockKey]) -> None:
        """A prefill on ``worker`` finished: its node now holds these blocks."""
        self.index.add(worker, keys)

    async def close(self) -> None:
        await self.stores.close()
