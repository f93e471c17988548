import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.tiers.slots import SlotAllocator
from kvstore.types import SlotId


def test_allocate_until_full_then_none() -> None:
    pool = SlotAllocator(3)
    slots = [pool.allocate() for _ in range(3)]
    assert sorted(slots) == [0, 1, 2]  # type: ignore[type-var]
    assert pool.allocate() is None and pool.num_free == 0


def test_allocate_many_is_all_or_nothing() -> None:
    pool = SlotAllocator(4)
    assert pool.allocate_many(3) is not None
    assert pool.allocate_many(2) is None
    assert pool.num_free == 1


def test_recently_freed_slot_is_reused_first() -> None:
    pool = SlotAllocator(4)
    pool.allocate_many(4)
    pool.free(SlotId(2))
    assert pool.allocate() == 2


def test_double_free_and_foreign_free_are_caught() -> None:
    pool = SlotAllocator(2)
    slot = pool.allocate()
    assert slot is not None
    pool.free(slot)
    with pytest.raises(AssertionError):
        pool.free(slot)
    with pytest.raises(AssertionError):
        pool.free(SlotId(7))


def test_used_slots_from_recovery_are_not_handed_out() -> None:
    pool = SlotAllocator(4, used=[SlotId(0), SlotId(2)])
    assert pool.num_used == 2
    assert sorted([pool.allocate(), pool.allocate()]) == [1, 3]  # type: ignore[type-var]


@given(st.lists(st.booleans(), max_size=200))
def test_free_list_invariants(ops: list[bool]) -> None:
    pool = SlotAllocator(8)
    held: list[SlotId] = []
    for allocate in ops:
        if allocate:
            slot = pool.allocate()
            if slot is None:
                assert len(held) == 8
            else:
                assert slot not in held
                held.append(slot)
        elif held:
            pool.free(held.pop(0))
        assert pool.num_used == len(held)
        assert all(pool.is_used(s) for s in held)
