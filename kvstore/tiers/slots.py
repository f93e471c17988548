"""Slab allocation of a tier's bytes by size class.

A tier's byte space ``[0, capacity)`` is cut into pages of ``page_bytes``. A page is
carved, when first needed, into slots of one *size class*: the exact length of the blocks
it will hold, rounded up to ``ALIGN`` (4 KiB, for ``O_DIRECT`` and page-aligned views).
One node thus serves any mix of block sizes without reconfiguration::

    | page 0: 2 MiB class          | page 1: 32 KiB class            | page 2: free |
    | slot | slot | ... | tail  |  | s | s | s | s | s | ... | s | s |              |
                          ^ less than one slot, never used

A ``SlotId`` is the slot's byte offset in the tier. Each class keeps a LIFO free list
(recently freed slots first, which keeps touched memory warm); allocation and free are
O(1) a slot (carving a page is O(slots per page), once per page).

Pages go back to the shared pool lazily: a page whose slots are all free stays with its
class (its slots stay on the class's free list) until another class needs a page and
none is free; then it is taken over, at O(free slots of the old class). ``Tiering`` also
empties a page on purpose (evicting its blocks) when a class is below its fair share of
pages; see ``kvstore.policy.pages``.

Bound on capacity: a class of ``S``-byte slots loses less than one slot per page (the
tail), so at most ``S / page_bytes`` of its pages, plus the rounding of blocks to 4 KiB.
With a tier full, bytes stored >= (1 - S / page_bytes) x (length / S) of its pages.

A used slot records its owner (a block key) so that the blocks in a page can be found.
Not thread-safe: only the event-loop thread allocates and frees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.buffers import ALIGN, align_up
from kvstore.types import BlockKey, SlotId


@dataclass(slots=True)
class SizeClass:
    """The pages carved for blocks of one length, and their free slots."""

    length_bytes: int
    slot_bytes: int
    slots_per_page: int
    pages: set[int] = field(default_factory=set)
    free: list[SlotId] = field(default_factory=list)
    num_empty_pages: int = 0  # pages of this class with no slot in use


class SlabAllocator:
    def __init__(self, capacity_bytes: int, page_bytes: int) -> None:
        page_bytes = min(page_bytes, capacity_bytes) // ALIGN * ALIGN
        if page_bytes <= 0:
            raise ValueError(f"a tier of {capacity_bytes} bytes holds no page of {ALIGN} bytes")
        self.page_bytes = page_bytes
        self.num_pages = capacity_bytes // page_bytes
        self._classes: dict[int, SizeClass] = {}
        self._page_class: list[SizeClass | None] = [None] * self.num_pages
        self._page_used = [0] * self.num_pages
        self._free_pages = list(range(self.num_pages - 1, -1, -1))
        self._empty: set[int] = set()  # carved pages with no slot in use
        self._owners: dict[SlotId, BlockKey] = {}
        self.used_bytes = 0  # sum of the slot sizes in use

    @property
    def capacity_bytes(self) -> int:
        return self.num_pages * self.page_bytes

    @property
    def num_used(self) -> int:
        return len(self._owners)

    @property
    def num_free_pages(self) -> int:
        return len(self._free_pages)

    def slot_bytes(self, length_bytes: int) -> int:
        """The slot size of blocks of ``length_bytes``."""
        return align_up(length_bytes)

    def max_slots(self, length_bytes: int) -> int:
        """Slots of this length the whole tier would hold (0: it does not fit a page)."""
        return self.num_pages * (self.page_bytes // self.slot_bytes(length_bytes))

    def available(self, length_bytes: int) -> int:
        """Slots of this length that can be allocated now without evicting anything."""
        size_class = self._classes.get(length_bytes)
        per_page = self.page_bytes // self.slot_bytes(length_bytes)
        if size_class is None:
            return (len(self._free_pages) + len(self._empty)) * per_page
        other_empty = len(self._empty) - size_class.num_empty_pages
        return len(size_class.free) + (len(self._free_pages) + other_empty) * per_page

    def allocate(self, length_bytes: int, owners: Sequence[BlockKey]) -> list[SlotId] | None:
        """One slot per owner for blocks of ``length_bytes``, or None (nothing taken)."""
        count = len(owners)
        if self.available(length_bytes) < count or self.max_slots(length_bytes) == 0:
            return None if count else []
        size_class = self._class(length_bytes)
        missing = count - len(size_class.free)
        if missing > 0:
            num_pages = -(-missing // size_class.slots_per_page)
            self._carve(size_class, [self._take_page(size_class) for _ in range(num_pages)])
        slots = [size_class.free.pop() for _ in range(count)]
        for slot, owner in zip(slots, owners, strict=True):
            self._use(slot, owner, size_class)
        return slots

    def restore(self, blocks: Sequence[tuple[SlotId, int, BlockKey]]) -> list[bool]:
        """Mark the slots of blocks that survived a restart (slot, length, owner) as used,
        on a fresh allocator. False where a block does not fit this layout (past the end,
        in another class's page, off a slot boundary, or a slot taken twice)."""
        kept: list[bool] = []
        for slot, length_bytes, owner in blocks:
            page, offset = divmod(slot, self.page_bytes)
            slot_bytes = self.slot_bytes(length_bytes)
            fits = page < self.num_pages and offset + slot_bytes <= self.page_bytes
            size_class = self._page_class[page] if fits else None
            if fits and size_class is None:
                size_class = self._class(length_bytes)
                size_class.pages.add(page)
                self._page_class[page] = size_class
            ok = (
                size_class is not None
                and size_class.length_bytes == length_bytes
                and offset % slot_bytes == 0
                and slot not in self._owners
            )
            if ok:
                assert size_class is not None
                self._use(slot, owner, size_class)
            kept.append(ok)
        self._rebuild_free_lists()
        return kept

    def free(self, slot: SlotId) -> None:
        owner = self._owners.pop(slot, None)
        if owner is None:
            raise AssertionError(f"slot {slot} freed but not allocated")
        page = slot // self.page_bytes
        size_class = self._page_class[page]
        assert size_class is not None
        self.used_bytes -= size_class.slot_bytes
        self._page_used[page] -= 1
        size_class.free.append(slot)
        if self._page_used[page] == 0:
            self._empty.add(page)
            size_class.num_empty_pages += 1

    def size_of(self, slot: SlotId) -> int:
        """The size of the slot at ``slot`` (its page must be carved)."""
        size_class = self._page_class[slot // self.page_bytes]
        if size_class is None:
            raise AssertionError(f"slot {slot} is in a page that is not carved")
        return size_class.slot_bytes

    def slot_containing(self, offset: int) -> SlotId | None:
        """The slot whose bytes include ``offset``; None in a free page or a page's tail."""
        page, within = divmod(offset, self.page_bytes)
        if not 0 <= page < self.num_pages or (size_class := self._page_class[page]) is None:
            return None
        index = within // size_class.slot_bytes
        if index >= size_class.slots_per_page:
            return None
        return SlotId(page * self.page_bytes + index * size_class.slot_bytes)

    # -- pages, for rebalancing between classes ------------------------------------------

    def pages_per_class(self) -> dict[int, int]:
        """Block length -> pages carved for it (free pages count for nobody)."""
        return {length: len(c.pages) for length, c in self._classes.items() if c.pages}

    def pages_of(self, length_bytes: int) -> list[int]:
        """The pages of a class, fewest slots in use first (cheapest to empty)."""
        size_class = self._classes.get(length_bytes)
        if size_class is None:
            return []
        return sorted(size_class.pages, key=lambda p: (self._page_used[p], p))

    def owners_in(self, page: int) -> list[tuple[SlotId, BlockKey]]:
        """The used slots of a page and their owners, in offset order."""
        size_class = self._page_class[page]
        if size_class is None:
            return []
        base = page * self.page_bytes
        slots = (SlotId(base + i * size_class.slot_bytes) for i in range(size_class.slots_per_page))
        return [(s, owner) for s in slots if (owner := self._owners.get(s)) is not None]

    def carved_bytes(self) -> int:
        """Bytes of the pages that belong to a class (what the stored blocks cost)."""
        return sum(len(c.pages) for c in self._classes.values()) * self.page_bytes

    # -- internals ----------------------------------------------------------------------

    def _class(self, length_bytes: int) -> SizeClass:
        size_class = self._classes.get(length_bytes)
        if size_class is None:
            slot_bytes = self.slot_bytes(length_bytes)
            size_class = SizeClass(length_bytes, slot_bytes, self.page_bytes // slot_bytes)
            self._classes[length_bytes] = size_class
        return size_class

    def _use(self, slot: SlotId, owner: BlockKey, size_class: SizeClass) -> None:
        page = slot // self.page_bytes
        if self._page_used[page] == 0 and page in self._empty:
            self._empty.discard(page)
            size_class.num_empty_pages -= 1
        self._page_used[page] += 1
        self._owners[slot] = owner
        self.used_bytes += size_class.slot_bytes

    def _rebuild_free_lists(self) -> None:
        """Free pages and free slots from the pages' owners (after ``restore``)."""
        self._free_pages = [p for p in range(self.num_pages - 1, -1, -1) if not self._page_class[p]]
        self._empty = set()
        for size_class in self._classes.values():
            size_class.free, size_class.num_empty_pages = [], 0
            for page in sorted(size_class.pages, reverse=True):
                base, step = page * self.page_bytes, size_class.slot_bytes
                size_class.free.extend(
                    s
                    for i in range(size_class.slots_per_page - 1, -1, -1)
                    if (s := SlotId(base + i * step)) not in self._owners
                )
                if self._page_used[page] == 0:
                    self._empty.add(page)
                    size_class.num_empty_pages += 1

    def _take_page(self, size_class: SizeClass) -> int:
        """A free page, or an empty page taken over from another class."""
        if self._free_pages:
            return self._free_pages.pop()
        page = next(p for p in self._empty if self._page_class[p] is not size_class)
        old = self._page_class[page]
        assert old is not None
        self._empty.discard(page)
        old.num_empty_pages -= 1
        old.pages.discard(page)
        old.free = [s for s in old.free if s // self.page_bytes != page]
        self._page_class[page] = None
        return page

    def _carve(self, size_class: SizeClass, pages: list[int]) -> None:
        """Give free pages to a class. Their slots go under the class's free list (whose
        recently freed slots are handed out first), lowest offset on top."""
        fresh: list[SlotId] = []
        for page in sorted(pages, reverse=True):
            base, step = page * self.page_bytes, size_class.slot_bytes
            fresh.extend(
                SlotId(base + i * step) for i in range(size_class.slots_per_page - 1, -1, -1)
            )
            size_class.pages.add(page)
            self._page_class[page] = size_class
            self._empty.add(page)
            size_class.num_empty_pages += 1
        size_class.free[:0] = fresh
