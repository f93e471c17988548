"""The global view of the simulated store: which nodes hold which block, in which tier.

It plays the metadata service's global index (key -> nodes and tiers) and answers the
router's question (leading blocks per prefill instance) with the router's own
``PrefixIndex``, kept exact: every node's ``BlockIndex`` reports each residency change
(``observe``), so the view never trails the stores (as the production router's store
lookups, which are authoritative, when they answer in time).

Invariants: ``holders[key]`` maps exactly the nodes whose index holds ``key`` to its tier
there; ``prefix.longest(keys)`` counts, per node, the leading keys that node holds.
Cost: O(1) dict work per residency change plus O(holders) when a key leaves a node.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.router.prefix_index import PrefixIndex
from kvstore.index import Observer
from kvstore.types import BlockKey, TierKind

UNBOUNDED = 1 << 62


class Directory:
    def __init__(self) -> None:
        self.holders: dict[BlockKey, dict[str, TierKind]] = {}
        self.prefix = PrefixIndex(UNBOUNDED)

    def observer(self, node: str) -> Observer:
        """The ``BlockIndex.observer`` of ``node``'s store."""

        def observe(key: BlockKey, tier: TierKind | None) -> None:
            held = self.holders.get(key)
            if tier is not None:
                if held is None:
                    held = self.holders[key] = {}
                if node not in held:
                    self.prefix.add(node, (key,))
                held[node] = tier
                return
            if held is None or held.pop(node, None) is None:
                return
            self.prefix.forget((key,))
            if not held:
                del self.holders[key]
            for other in held:
                self.prefix.add(other, (key,))

        return observe

    def leading(self, keys: Sequence[BlockKey]) -> dict[str, int]:
        """Node -> how many leading ``keys`` it holds (nodes holding none are absent)."""
        return self.prefix.longest(keys)

    def fastest(self, key: BlockKey, exclude: str) -> TierKind | None:
        """The fastest tier any node but ``exclude`` holds ``key`` in (None: nowhere)."""
        held = self.holders.get(key)
        if not held:
            return None
        tiers = [t for n, t in held.items() if n != exclude]
        return min(tiers, key=lambda t: t.rank) if tiers else None
