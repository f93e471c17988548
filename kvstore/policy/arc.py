"""ARC (Megiddo and Modha, FAST'03): recency and frequency lists balanced by ghost hits.

T1 holds blocks seen once (since they entered), T2 blocks hit again; both are LRU. Keys of
blocks evicted from T1 go to ghost list B1, from T2 to B2. A block entering whose key is
in B1 means T1 was too small: the target size ``p`` of T1 grows (by |B2|/|B1|, at least
1); a key in B2 shrinks it. Evict from T1 while it holds more than ``p`` blocks, else
from T2. It adapts between LRU (scan-heavy) and LFU-like (reuse-heavy) behaviour.

Approximations: the capacity ``c`` is the number of blocks the queue knows now (equal to
the tier's once it is full); ghost lists are trimmed to ``|T1| + |B1| <= c`` and
``|B2| <= c``. A block that comes back after the index unqueued it keeps its list. LRU
lists are heaps keyed by the last access number (O(log n) a hit). Work per ``pop`` is
bounded by the budget.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvstore.policy.candidates import Candidate, Evictable, Popped, VictimQueue
from kvstore.policy.keyed_heap import KeyedHeap
from kvstore.types import BlockKey, EvictionPolicyKind


class ArcQueue:
    def __init__(self) -> None:
        self._t1 = KeyedHeap()
        self._t2 = KeyedHeap()
        self._b1: OrderedDict[BlockKey, None] = OrderedDict()
        self._b2: OrderedDict[BlockKey, None] = OrderedDict()
        self._in_t2: dict[BlockKey, bool] = {}  # every block of the tier it was told of
        self.target_t1 = 0.0  # ARC's p

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def push(self, block: Candidate) -> None:
        in_t2 = self._in_t2.get(block.key)
        if in_t2 is None:
            in_t2 = self._adapt(block.key)
            self._in_t2[block.key] = in_t2
        (self._t2 if in_t2 else self._t1).push(block, (block.last_access_seq,))

    def touch(self, block: Candidate) -> None:
        in_t2 = self._in_t2.get(block.key)
        if in_t2 is None:
            return
        self._in_t2[block.key] = True
        if self._t1.discard(block.key) or (in_t2 and self._t2.discard(block.key)):
            self._t2.push(block, (block.last_access_seq,))

    def withdraw(self, block: Candidate) -> None:
        self._t1.discard(block.key) or self._t2.discard(block.key)

    def discard(self, block: Candidate) -> None:
        self._t1.discard(block.key) or self._t2.discard(block.key)
        self._in_t2.pop(block.key, None)

    def pop(self, evictable: Evictable, budget: int) -> Popped:
        unqueued: list[Candidate] = []
        num_examined = 0
        while num_examined < budget and len(self) > 0:
            num_examined += 1
            from_t1 = len(self._t1) > 0 and (len(self._t1) > self.target_t1 or not self._t2)
            item = (self._t1 if from_t1 else self._t2).pop()
            assert item is not None
            if not evictable(item.block):
                unqueued.append(item.block)
                continue
            self._remember(item.block.key, self._b1 if from_t1 else self._b2)
            return Popped(item.block, unqueued, num_examined)
        return Popped(None, unqueued, num_examined)

    def _adapt(self, key: BlockKey) -> bool:
        """Adjust ``p`` on a ghost hit; whether the entering block belongs in T2."""
        capacity = len(self._in_t2) + 1
        if key in self._b1:
            self.target_t1 = min(capacity, self.target_t1 + max(len(self._b2) / len(self._b1), 1))
            del self._b1[key]
            return True
        if key in self._b2:
            self.target_t1 = max(0.0, self.target_t1 - max(len(self._b1) / len(self._b2), 1))
            del self._b2[key]
            return True
        return False

    def _remember(self, key: BlockKey, ghost: OrderedDict[BlockKey, None]) -> None:
        ghost[key] = None
        capacity = max(1, len(self._in_t2))
        while self._b1 and len(self._t1) + len(self._b1) > capacity:
            self._b1.popitem(last=False)
        while len(self._b2) > capacity:
            self._b2.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Arc:
    kind: EvictionPolicyKind = EvictionPolicyKind.ARC
    leaves_only: bool = True

    def new_queue(self) -> VictimQueue:
        return ArcQueue()
