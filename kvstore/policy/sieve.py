"""SIEVE (Zhang et al., NSDI'24): a FIFO list, a hand, one visited bit per block.

New blocks enter at the head; a hit only sets the block's visited bit. To evict, the hand
walks from the tail (oldest) towards the head: a visited block loses its bit and stays
where it is, the first unvisited one is the victim; at the head the hand wraps to the tail.
Unlike CLOCK, survivors keep their place, so new blocks are examined (and leave) before
old survivors: one-hit blocks go quickly, popular ones stay with no work on a hit.

Here the list is a heap keyed by ``(pass, position)``: the hand's pass number and the
block's insertion position. A visited block popped in pass p is pushed back at
``(p + 1, position)``, a new block gets the current pass and the next position, which
reproduces the hand's walk exactly. A block the index took out of the queue (a parent
with cached children, a pinned block) comes back at its old position in the hand's
current pass: when it lies behind the hand it is examined next, so a chain leaves leaf
by leaf as with prefix-aware LRU, instead of one block per pass.
Cost: O(log n) per examined block; a hit is O(1). Work per ``pop`` is bounded by the
budget; if every examined block was visited, the call returns no victim and the next
call continues from where the hand stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.policy.candidates import Candidate, Evictable, Popped, VictimQueue
from kvstore.policy.keyed_heap import KeyedHeap
from kvstore.types import BlockKey, EvictionPolicyKind


class SieveQueue:
    def __init__(self) -> None:
        self._heap = KeyedHeap()
        self._positions: dict[BlockKey, int] = {}  # every block of the tier it was told of
        self._visited: set[BlockKey] = set()
        self._hand = (0, 0)  # (pass, position) of the block examined last
        self._next_position = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, block: Candidate) -> None:
        position = self._positions.get(block.key)
        if position is None:
            self._next_position += 1
            position = self._positions[block.key] = self._next_position
        self._heap.push(block, (self._hand[0], position))

    def touch(self, block: Candidate) -> None:
        if block.key in self._positions:
            self._visited.add(block.key)

    def withdraw(self, block: Candidate) -> None:
        self._heap.discard(block.key)

    def discard(self, block: Candidate) -> None:
        self._heap.discard(block.key)
        self._positions.pop(block.key, None)
        self._visited.discard(block.key)

    def pop(self, evictable: Evictable, budget: int) -> Popped:
        unqueued: list[Candidate] = []
        num_examined = 0
        while num_examined < budget and (item := self._heap.pop()) is not None:
            num_examined += 1
            hand_pass, position = item.priority
            self._hand = (hand_pass, position)
            key = item.block.key
            if key in self._visited:
                self._visited.discard(key)
                self._heap.push(item.block, (hand_pass + 1, position))
            elif not evictable(item.block):
                unqueued.append(item.block)
            else:
                return Popped(item.block, unqueued, num_examined)
        return Popped(None, unqueued, num_examined)


@dataclass(frozen=True, slots=True)
class Sieve:
    kind: EvictionPolicyKind = EvictionPolicyKind.SIEVE
    leaves_only: bool = True

    def new_queue(self) -> VictimQueue:
        return SieveQueue()
