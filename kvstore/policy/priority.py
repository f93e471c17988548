"""Priority policies: a block's score decides its place; a lazy min-heap keeps the order.

``PriorityQueue`` keeps a min-heap of ``(priority, token, block)``; lower priority =
evicted first. A hit does not touch the heap: a popped item whose block's priority has
grown since it was pushed is pushed back with its current priority. This is exact, not
an approximation, as long as a block's priority never decreases over its life; a score
that can shrink must not be used here. Cost: O(log n) per victim plus one re-push per
block touched since its last push; dead items (discarded blocks) are dropped lazily and
the heap is rebuilt once they outnumber live ones (amortised O(1) a discard).

* ``LRU``: priority = the block's last access sequence number. Flat: any block is a
  candidate, so a parent may go before its children and strand them.
* ``PrefixLRU``: the same priority, but only *leaves* are candidates (the index filters):
  evicting a parent strands every descendant, so leaves go first.
* ``LFU``: priority = (hits, last access), least used first, then least recent. Flat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvstore.policy.candidates import Candidate, Evictable, Popped, VictimQueue
from kvstore.policy.keyed_heap import KeyedHeap, Priority
from kvstore.types import EvictionPolicyKind

Score = Callable[[Candidate], Priority]


class PriorityQueue:
    """A lazy min-heap of candidates ordered by a non-decreasing ``score``."""

    def __init__(self, score: Score) -> None:
        self._score = score
        self._heap = KeyedHeap()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, block: Candidate) -> None:
        self._heap.push(block, self._score(block))

    def touch(self, block: Candidate) -> None:
        """Nothing to do: the grown priority is noticed when the block is popped."""

    def withdraw(self, block: Candidate) -> None:
        self._heap.discard(block.key)

    def discard(self, block: Candidate) -> None:
        self._heap.discard(block.key)

    def pop(self, evictable: Evictable, budget: int) -> Popped:
        unqueued: list[Candidate] = []
        num_examined = 0
        while num_examined < budget and (item := self._heap.pop()) is not None:
            num_examined += 1
            if not evictable(item.block):
                unqueued.append(item.block)
                continue
            current = self._score(item.block)
            if current != item.priority:
                self._heap.push(item.block, current)  # touched since: its priority only grew
                continue
            return Popped(item.block, unqueued, num_examined)
        return Popped(None, unqueued, num_examined)


def _recency(block: Candidate) -> Priority:
    return (block.last_access_seq,)


def _frequency(block: Candidate) -> Priority:
    return (block.num_hits, block.last_access_seq)


@dataclass(frozen=True, slots=True)
class LRU:
    kind: EvictionPolicyKind = EvictionPolicyKind.LRU
    leaves_only: bool = False

    def new_queue(self) -> VictimQueue:
        return PriorityQueue(_recency)


@dataclass(frozen=True, slots=True)
class PrefixLRU:
    kind: EvictionPolicyKind = EvictionPolicyKind.PREFIX_LRU
    leaves_only: bool = True

    def new_queue(self) -> VictimQueue:
        return PriorityQueue(_recency)


@dataclass(frozen=True, slots=True)
class LFU:
    kind: EvictionPolicyKind = EvictionPolicyKind.LFU
    leaves_only: bool = False

    def new_queue(self) -> VictimQueue:
        return PriorityQueue(_frequency)
