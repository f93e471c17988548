"""O(1) allocation of fixed-size slots.

A LIFO free list hands out slots (recently freed slots first, which keeps the touched
pages warm); a byte per slot records which are in use, so a double free or a free of a
slot that was never handed out is caught at once instead of corrupting the list.
Not thread-safe: only the event-loop thread allocates and frees.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvstore.types import SlotId


class SlotAllocator:
    def __init__(self, num_slots: int, used: Iterable[SlotId] = ()) -> None:
        if num_slots <= 0:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        self.num_slots = num_slots
        self._used = bytearray(num_slots)
        for slot in used:
            self._used[slot] = 1
        self._free = [SlotId(s) for s in range(num_slots - 1, -1, -1) if not self._used[s]]

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    def allocate(self) -> SlotId | None:
        """One free slot, or None when the pool is full."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._used[slot] = 1
        return slot

    def allocate_many(self, count: int) -> list[SlotId] | None:
        """``count`` slots, or None (and nothing taken) when fewer are free."""
        if count > len(self._free):
            return None
        return [self.allocate() for _ in range(count)]  # type: ignore[misc]

    def free(self, slot: SlotId) -> None:
        if not 0 <= slot < self.num_slots or not self._used[slot]:
            raise AssertionError(f"slot {slot} freed but not allocated")
        self._used[slot] = 0
        self._free.append(slot)

    def is_used(self, slot: SlotId) -> bool:
        return bool(self._used[slot])
