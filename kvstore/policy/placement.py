"""Placement policy: which node stores a new chain of blocks.

Rendezvous (highest-random-weight) hashing: each node scores ``xxh3_64(node_id ‖ key)``
for the chain's first key and the highest score wins. Chains spread evenly over the
nodes, the choice is the same in every client without coordination, and when a node
joins or leaves only the chains that scored highest on it move. A chain that continues
a cached prefix goes to a node already holding its parent instead, so a conversation's
blocks stay together and reads need no peer hop. Cost: one hash per live node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from kvstore.types import BlockKey


@dataclass(frozen=True, slots=True)
class RendezvousPlacement:
    def choose(
        self, node_ids: Sequence[str], first_key: BlockKey, parent_holders: Sequence[str] = ()
    ) -> str:
        """The node for a chain starting at ``first_key``; ``node_ids`` must not be empty."""
        if not node_ids:
            raise ValueError("no live node to place blocks on")
        live_holders = [n for n in parent_holders if n in node_ids]
        candidates = live_holders or list(node_ids)
        return max(candidates, key=lambda n: (xxhash.xxh3_64_intdigest(n.encode() + first_key), n))
