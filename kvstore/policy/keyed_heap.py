"""A min-heap of blocks with removal by key: the ordered structure most queues share.

Items are ``(priority, token, block)``; an item is live iff its token is the one recorded
for its block's key, so ``discard`` and re-``push`` are O(1) and dead items are skipped
on ``pop``. The heap is rebuilt once dead items outnumber live ones (amortised O(1) a
discard), so memory stays within twice the live count plus a constant.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from kvstore.policy.candidates import Candidate
from kvstore.types import BlockKey

Priority = tuple[int, ...]


class HeapItem(NamedTuple):
    priority: Priority
    block: Candidate


class KeyedHeap:
    """Blocks ordered by a priority fixed at ``push`` (lower pops first)."""

    def __init__(self) -> None:
        self._heap: list[tuple[Priority, int, Candidate]] = []
        self._tokens: dict[BlockKey, int] = {}
        self._token = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, key: BlockKey) -> bool:
        return key in self._tokens

    def push(self, block: Candidate, priority: Priority) -> None:
        """Insert ``block``, or move it to ``priority`` if already held."""
        self._token += 1
        self._tokens[block.key] = self._token
        heapq.heappush(self._heap, (priority, self._token, block))

    def discard(self, key: BlockKey) -> bool:
        """Remove ``key`` if held; whether it was."""
        if self._tokens.pop(key, None) is None:
            return False
        if len(self._heap) > 4096 and len(self._heap) > 2 * len(self._tokens):
            live = [item for item in self._heap if self._tokens.get(item[2].key) == item[1]]
            heapq.heapify(live)
            self._heap = live
        return True

    def pop(self) -> HeapItem | None:
        """Remove and return the lowest live item; None when empty."""
        while self._heap:
            priority, token, block = heapq.heappop(self._heap)
            if self._tokens.get(block.key) == token:
                del self._tokens[block.key]
                return HeapItem(priority, block)
        return None
