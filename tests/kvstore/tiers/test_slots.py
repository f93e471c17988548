import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.tiers.slots import SlabAllocator
from kvstore.types import BlockKey, SlotId

KiB = 1024
PAGE = 64 * KiB


def owners(n: int, tag: int = 0) -> list[BlockKey]:
    return [BlockKey(bytes([tag, i % 256]) * 8) for i in range(n)]


def test_a_class_carves_pages_on_demand_into_aligned_slots() -> None:
    pool = SlabAllocator(4 * PAGE, PAGE)
    slots = pool.allocate(16 * KiB, owners(5))
    assert slots == [0, 16 * KiB, 32 * KiB, 48 * KiB, PAGE]  # two pages carved, in order
    assert pool.num_free_pages == 2 and pool.pages_per_class() == {16 * KiB: 2}
    assert pool.used_bytes == 5 * 16 * KiB and pool.carved_bytes() == 2 * PAGE
    assert pool.available(16 * KiB) == 3 + 2 * 4


def test_block_sizes_round_up_to_4_kib_and_a_page_tail_is_never_used() -> None:
    pool = SlabAllocator(2 * PAGE, PAGE)
    assert pool.slot_bytes(5000) == 8 * KiB
    assert pool.max_slots(20 * KiB) == 2 * 3  # 3 slots of 20 KiB a page; 4 KiB tail
    slots = pool.allocate(20 * KiB, owners(6))
    assert slots is not None and all(s % PAGE + 20 * KiB <= PAGE for s in slots)
    assert pool.slot_containing(PAGE - 1) is None  # the tail of page 0
    assert pool.slot_containing(PAGE + 45 * KiB) == PAGE + 40 * KiB


def test_allocation_is_all_or_nothing() -> None:
    pool = SlabAllocator(2 * PAGE, PAGE)
    assert pool.allocate(32 * KiB, owners(3)) is not None
    assert pool.allocate(32 * KiB, owners(2)) is None
    assert pool.num_used == 3 and pool.available(32 * KiB) == 1
    assert pool.allocate(128 * KiB, owners(1)) is None  # larger than a page


def test_two_sizes_share_a_tier_page_by_page() -> None:
    pool = SlabAllocator(4 * PAGE, PAGE)
    small = pool.allocate(4 * KiB, owners(20, 1))  # 16 a page: two pages
    large = pool.allocate(32 * KiB, owners(4, 2))  # 2 a page: two pages
    assert small is not None and large is not None
    assert {s // PAGE for s in small} == {0, 1} and {s // PAGE for s in large} == {2, 3}
    assert pool.available(4 * KiB) == 12 and pool.available(32 * KiB) == 0
    assert pool.allocate(32 * KiB, owners(1, 3)) is None


def test_recently_freed_slot_is_reused_first() -> None:
    pool = SlabAllocator(PAGE, PAGE)
    slots = pool.allocate(8 * KiB, owners(8))
    assert slots is not None
    pool.free(slots[2])
    assert pool.allocate(8 * KiB, owners(1)) == [slots[2]]


def test_double_free_and_foreign_free_are_caught() -> None:
    pool = SlabAllocator(PAGE, PAGE)
    (slot,) = pool.allocate(8 * KiB, owners(1)) or []
    pool.free(slot)
    with pytest.raises(AssertionError):
        pool.free(slot)
    with pytest.raises(AssertionError):
        pool.free(SlotId(8 * KiB))


def test_an_empty_page_is_taken_over_by_another_class() -> None:
    pool = SlabAllocator(2 * PAGE, PAGE)
    small = pool.allocate(16 * KiB, owners(8, 1))  # both pages
    assert small is not None and pool.allocate(32 * KiB, owners(1, 2)) is None
    for slot in small[4:]:  # empty page 1
        pool.free(slot)
    assert pool.available(32 * KiB) == 2
    assert pool.allocate(32 * KiB, owners(2, 2)) == [PAGE, PAGE + 32 * KiB]
    assert pool.pages_per_class() == {16 * KiB: 1, 32 * KiB: 1}
    assert pool.available(16 * KiB) == 0  # page 1's small slots left the free list


def test_owners_of_a_page_and_pages_fewest_used_first() -> None:
    pool = SlabAllocator(2 * PAGE, PAGE)
    keys = owners(6, 1)
    slots = pool.allocate(16 * KiB, keys)
    assert slots is not None
    for slot in slots[:3]:
        pool.free(slot)  # page 0 keeps one block, page 1 two
    assert pool.pages_of(16 * KiB) == [0, 1]
    assert pool.owners_in(0) == [(slots[3], keys[3])]


def test_restore_rebuilds_classes_and_rejects_what_does_not_fit() -> None:
    pool = SlabAllocator(3 * PAGE, PAGE)
    key = owners(6, 1)
    kept = pool.restore(
        [
            (SlotId(16 * KiB), 16 * KiB, key[0]),
            (SlotId(PAGE), 32 * KiB, key[1]),
            (SlotId(PAGE + 16 * KiB), 16 * KiB, key[2]),  # page 1 is a 32 KiB page
            (SlotId(8 * KiB), 16 * KiB, key[3]),  # not on a 16 KiB boundary
            (SlotId(3 * PAGE), 16 * KiB, key[4]),  # past the end
            (SlotId(16 * KiB), 16 * KiB, key[5]),  # taken twice
        ]
    )
    assert kept == [True, True, False, False, False, False]
    assert pool.num_used == 2 and pool.num_free_pages == 1
    assert pool.allocate(16 * KiB, owners(3, 2)) == [0, 32 * KiB, 48 * KiB]


def test_a_tier_smaller_than_a_page_is_one_page() -> None:
    pool = SlabAllocator(40 * KiB, PAGE)
    assert pool.page_bytes == 40 * KiB and pool.max_slots(8 * KiB) == 5


def test_a_full_tier_stores_within_the_stated_bound() -> None:
    """Bytes stored >= (1 - S / page) x capacity for one size class S filling the tier."""
    for length in (4 * KiB, 12 * KiB, 20 * KiB, 28 * KiB):
        pool = SlabAllocator(8 * PAGE, PAGE)
        n = pool.max_slots(length)
        assert pool.allocate(length, owners(n)) is not None
        assert n * length >= (1 - pool.slot_bytes(length) / PAGE) * pool.capacity_bytes


@given(st.lists(st.tuples(st.sampled_from([4, 12, 24, 64]), st.booleans()), max_size=150))
def test_slots_never_overlap_and_accounting_holds(ops: list[tuple[int, bool]]) -> None:
    pool = SlabAllocator(4 * PAGE, PAGE)
    held: dict[SlotId, int] = {}
    for kib, allocate in ops:
        if allocate:
            got = pool.allocate(kib * KiB, owners(1))
            if got is not None:
                held[got[0]] = pool.slot_bytes(kib * KiB)
        elif held:
            slot = next(iter(held))
            del held[slot]
            pool.free(slot)
        spans = sorted((s, s + n) for s, n in held.items())
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
        assert all(s // PAGE == (e - 1) // PAGE and e <= pool.capacity_bytes for s, e in spans)
        assert pool.num_used == len(held) and pool.used_bytes == sum(held.values())
        assert pool.carved_bytes() <= pool.capacity_bytes
