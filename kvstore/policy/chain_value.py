"""Chain value: LRU among leaves, where each reuse of a block buys it one more lifetime.

What a KV cache knows and a web cache does not: a block is a prefix, worth something only
with its ancestors (so only leaves are evicted, as with prefix-aware LRU); a block that
was read again is part of a conversation or a shared prompt that was extended before,
and chains extended before are more likely to be extended again (on the FAST'25
conversation trace the chance of another turn rises from 0.31 after the first turn to
0.5 and more after the fifth); and recomputing a deep block costs more, since attention
grows with the context before it.

Score (lower = evicted first; it never decreases over a block's life)::

    last_access_seq
      + lifetime * (min(num_hits, max_hits) + depth_weight * min(depth, DEPTH_CAP) / DEPTH_CAP)

``lifetime`` is the largest number of the tier's blocks the queue has been told of
(pushed and not yet discarded, whether or not they are candidates now: about one LRU
lifetime, in accesses, once the tier is full), so the bonus scales with the tier instead of being a
trace-tuned constant: a block read k times survives about k more lifetimes of
untouched blocks. ``max_hits`` caps the bonus so a block once hot leaves after a few idle
lifetimes (no LFU pollution). ``depth_weight`` (default 0) trades hit rate for recompute
cost per byte: with it, a deep leaf outlives a shallow one of the same recency.

Cost: as ``PriorityQueue`` (lazy heap): O(log n) per victim, no heap work on a hit. The
score grows when ``lifetime`` grows, which the lazy re-push handles like a hit.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.policy.candidates import Candidate, Evictable, Popped, VictimQueue
from kvstore.policy.keyed_heap import Priority
from kvstore.policy.priority import PriorityQueue
from kvstore.types import BlockKey, EvictionPolicyKind

DEPTH_CAP = 64  # blocks; deeper blocks score as this deep


class ChainValueQueue:
    def __init__(self, max_hits: int, depth_weight: float) -> None:
        self._max_hits = max_hits
        self._depth_weight = depth_weight
        self._lifetime = 1
        self._known: set[BlockKey] = set()  # blocks of the tier pushed and not discarded
        self._queue = PriorityQueue(self._score)

    def __len__(self) -> int:
        return len(self._queue)

    def _score(self, block: Candidate) -> Priority:
        value: float = min(block.num_hits, self._max_hits)
        value += self._depth_weight * min(block.depth, DEPTH_CAP) / DEPTH_CAP
        return (block.last_access_seq + int(self._lifetime * value),)

    def push(self, block: Candidate) -> None:
        self._known.add(block.key)
        self._lifetime = max(self._lifetime, len(self._known))
        self._queue.push(block)

    def touch(self, block: Candidate) -> None:
        self._queue.touch(block)

    def withdraw(self, block: Candidate) -> None:
        self._queue.withdraw(block)

    def discard(self, block: Candidate) -> None:
        self._known.discard(block.key)
        self._queue.discard(block)

    def pop(self, evictable: Evictable, budget: int) -> Popped:
        return self._queue.pop(evictable, budget)


@dataclass(frozen=True, slots=True)
class ChainValue:
    max_hits: int = 3
    depth_weight: float = 0.0
    kind: EvictionPolicyKind = EvictionPolicyKind.CHAIN_VALUE
    leaves_only: bool = True

    def new_queue(self) -> VictimQueue:
        return ChainValueQueue(self.max_hits, self.depth_weight)
