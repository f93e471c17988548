"""S3-FIFO (Yang et al., SOSP'23): a small probationary FIFO, a main FIFO, a ghost FIFO.

New blocks enter the small queue S. Evicting from S: a block hit at least once since it
entered moves to the main queue M, the others leave and their keys go to the ghost queue G
(keys only). A block whose key is in G enters M directly. Evicting from M is FIFO with
reinsertion: a block with hits left goes back to M's head with one hit fewer (at most 3
are counted). S is served while it holds at least ``small_share`` of the queued blocks.
Most blocks of a trace are used once; S lets them go after one short stay without
disturbing M.

Approximations: the queue does not know the tier's capacity, so S's share and G's length
are relative to the blocks it holds now (equal once the tier is full). A block that comes
back after the index unqueued it (a parent whose children left, an unpinned block) keeps
its queue and position. FIFOs are heaps keyed by entry number (O(log n) a move); a hit
is O(1). Work per ``pop`` is bounded by the budget (moves and reinsertions count).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvstore.policy.candidates import Candidate, Evictable, Popped, VictimQueue
from kvstore.policy.keyed_heap import HeapItem, KeyedHeap
from kvstore.types import BlockKey, EvictionPolicyKind

MAX_HITS = 3


class _Place:
    __slots__ = ("in_main", "num_hits", "position")

    def __init__(self, in_main: bool, position: int) -> None:
        self.in_main = in_main
        self.num_hits = 0
        self.position = position


class S3FifoQueue:
    def __init__(self, small_share: float) -> None:
        self._small_share = small_share
        self._small = KeyedHeap()
        self._main = KeyedHeap()
        self._ghost: OrderedDict[BlockKey, None] = OrderedDict()
        self._places: dict[BlockKey, _Place] = {}  # every block of the tier it was told of
        self._next_position = 0

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def push(self, block: Candidate) -> None:
        place = self._places.get(block.key)
        if place is None:
            in_main = self._ghost.pop(block.key, 0) is None
            place = self._places[block.key] = _Place(in_main, self._position())
        (self._main if place.in_main else self._small).push(block, (place.position,))

    def touch(self, block: Candidate) -> None:
        place = self._places.get(block.key)
        if place is not None:
            place.num_hits = min(MAX_HITS, place.num_hits + 1)

    def withdraw(self, block: Candidate) -> None:
        self._small.discard(block.key) or self._main.discard(block.key)

    def discard(self, block: Candidate) -> None:
        self._small.discard(block.key) or self._main.discard(block.key)
        self._places.pop(block.key, None)

    def pop(self, evictable: Evictable, budget: int) -> Popped:
        unqueued: list[Candidate] = []
        num_examined = 0
        while num_examined < budget and len(self) > 0:
            num_examined += 1
            from_small = len(self._small) >= self._small_share * len(self) or not self._main
            item = (self._small if from_small else self._main).pop()
            assert item is not None
            if self._keeps(item):
                continue
            if not evictable(item.block):
                unqueued.append(item.block)
                continue
            if from_small:
                self._remember(item.block.key)
            return Popped(item.block, unqueued, num_examined)
        return Popped(None, unqueued, num_examined)

    def _keeps(self, item: HeapItem) -> bool:
        """Move a hit block from S to M, or reinsert one with hits left into M."""
        place = self._places[item.block.key]
        if place.num_hits == 0:
            return False
        place.num_hits = 0 if not place.in_main else place.num_hits - 1
        place.in_main = True
        place.position = self._position()
        self._main.push(item.block, (place.position,))
        return True

    def _remember(self, key: BlockKey) -> None:
        self._ghost[key] = None
        while len(self._ghost) > max(1, len(self._places)):
            self._ghost.popitem(last=False)

    def _position(self) -> int:
        self._next_position += 1
        return self._next_position


@dataclass(frozen=True, slots=True)
class S3Fifo:
    small_share: float = 0.1
    kind: EvictionPolicyKind = EvictionPolicyKind.S3_FIFO
    leaves_only: bool = True

    def new_queue(self) -> VictimQueue:
        return S3FifoQueue(self.small_share)
