"""Exact eviction order of the index, step by step."""

import pytest

from kvstore.index import BlockIndex, BlockMeta
from kvstore.policy.eviction import LFU, LRU, PrefixLRU
from kvstore.types import BlockKey, BlockState, MissReason, NamespaceId, SlotId, TierKind

NS = NamespaceId(b"n" * 16)
DRAM, NVME = TierKind.DRAM, TierKind.NVME


def key(name: str) -> BlockKey:
    return BlockKey(name.encode().ljust(16, b"."))


def meta(name: str, parent: str | None = None, tier: TierKind = DRAM) -> BlockMeta:
    return BlockMeta(
        key=key(name),
        namespace_id=NS,
        parent=key(parent) if parent else None,
        length_bytes=1,
        checksum=0,
        tier=tier,
        slot=SlotId(0),
        created_s=0.0,
        last_access_s=0.0,
    )


def chain(index: BlockIndex, *names: str, tier: TierKind = DRAM) -> list[BlockMeta]:
    metas, parent = [], None
    for name in names:
        m = meta(name, parent, tier)
        index.insert(m)
        metas.append(m)
        parent = name
    return metas


def evict_order(index: BlockIndex, tier: TierKind = DRAM, now: float = 0.0) -> list[str]:
    """Evict everything evictable from ``tier``, one victim at a time."""
    order = []
    while True:
        batch = index.select_victims(tier, 1, now, budget=1000)
        if not batch.victims:
            return order
        victim = batch.victims[0]
        order.append(victim.key.rstrip(b".").decode())
        index.remove(victim, MissReason.EVICTED)


def test_lru_evicts_least_recent_first_even_a_parent() -> None:
    index = BlockIndex(LRU())
    chain(index, "a", "b", "c")
    assert evict_order(index) == ["a", "b", "c"]  # flat LRU strands b and c


def test_prefix_lru_evicts_leaves_first() -> None:
    index = BlockIndex(PrefixLRU())
    chain(index, "a", "b", "c")
    assert evict_order(index) == ["c", "b", "a"]


def test_prefix_lru_is_lru_among_leaves() -> None:
    index = BlockIndex(PrefixLRU())
    _, _, c = chain(index, "a", "b", "c")  # a <- b <- c
    index.insert(meta("x", "a"))  # second branch: a <- x
    index.insert(meta("y"))  # unrelated root
    index.touch(c, 1.0)  # c is now the most recent leaf
    # leaves: x, y, c; LRU among them: x, y, c; then b (leaf once c goes), then a
    assert evict_order(index) == ["x", "y", "c", "b", "a"]


def test_touch_reorders_lazily_and_exactly() -> None:
    index = BlockIndex(LRU())
    metas = [meta(n) for n in "abcd"]
    for m in metas:
        index.insert(m)
    index.touch(metas[0], 1.0)
    index.touch(metas[2], 2.0)
    index.touch(metas[0], 3.0)
    assert evict_order(index) == ["b", "d", "c", "a"]


def test_lfu_evicts_least_used_then_least_recent() -> None:
    index = BlockIndex(LFU())
    a, b, c = (meta(n) for n in "abc")
    for m in (a, b, c):
        index.insert(m)
    for _ in range(3):
        index.touch(a, 0.0)
    index.touch(c, 0.0)
    assert evict_order(index) == ["b", "c", "a"]


def test_readers_and_pins_block_eviction_until_released() -> None:
    index = BlockIndex(LRU())
    a, b, c = (meta(n) for n in "abc")
    for m in (a, b, c):
        index.insert(m)
    index.acquire(a)
    index.pin(b, until_s=10.0)
    assert evict_order(index, now=5.0) == ["c"]
    index.release(a)
    assert evict_order(index, now=5.0) == ["a"]
    assert evict_order(index, now=10.0) == ["b"]  # the pin expired


def test_unpin_makes_a_block_evictable_again() -> None:
    index = BlockIndex(LRU())
    (a,) = chain(index, "a")
    index.pin(a, until_s=100.0)
    assert evict_order(index) == []
    index.unpin(a)
    assert evict_order(index) == ["a"]


def test_children_in_a_slower_tier_do_not_keep_a_parent() -> None:
    index = BlockIndex(PrefixLRU())
    a, b = chain(index, "a", "b")
    assert not index.is_leaf(a)
    index.begin_move(b)
    index.move(b, NVME, SlotId(1))  # demote the child
    assert b.state is BlockState.RESIDENT
    assert index.is_leaf(a)
    assert index.num_blocks(DRAM) == 1 and index.num_blocks(NVME) == 1
    assert evict_order(index, DRAM) == ["a"]
    # in the slowest tier, a parent with a cached child anywhere is not a leaf
    c = meta("c", tier=NVME)
    index.insert(c)
    index.insert(meta("d", "c", tier=DRAM))
    assert not index.is_leaf(c)


def test_a_reinserted_parent_knows_its_children() -> None:
    index = BlockIndex(PrefixLRU())
    a, _ = chain(index, "a", "b")
    index.remove(a, MissReason.EVICTED)  # e.g. dropped by a flat policy
    a2 = meta("a")
    index.insert(a2)
    assert not index.is_leaf(a2)
    assert evict_order(index) == ["b", "a"]


def test_longest_run_and_miss_reasons() -> None:
    index = BlockIndex(LRU())
    a, b, c = chain(index, "a", "b", "c")
    run = index.longest_run(NS, [key("a"), key("b"), key("c")])
    assert run.blocks == [a, b, c] and run.miss_reason is None
    index.remove(b, MissReason.EVICTED)
    run = index.longest_run(NS, [key("a"), key("b"), key("c")])
    assert run.blocks == [a] and run.miss_reason is MissReason.EVICTED
    assert index.longest_run(NS, [key("zz")]).miss_reason is MissReason.NEVER_STORED
    other = NamespaceId(b"o" * 16)
    assert index.longest_run(other, [key("a")]).miss_reason is MissReason.NAMESPACE_MISMATCH
    index.remove(c, MissReason.CORRUPTED)
    assert index.miss_reason(key("c")) is MissReason.CORRUPTED


def test_removal_record_is_bounded() -> None:
    index = BlockIndex(LRU(), removal_record_blocks=2)
    metas = chain(index, "a", "b", "c")
    for m in metas:
        index.remove(m, MissReason.EVICTED)
    assert index.miss_reason(key("a")) is MissReason.NEVER_STORED  # forgotten
    assert index.miss_reason(key("c")) is MissReason.EVICTED


def test_budget_bounds_the_work_of_one_call() -> None:
    index = BlockIndex(PrefixLRU())
    roots = [meta(f"r{i}") for i in range(10)]
    for r in roots:
        index.insert(r)
        index.acquire(r)  # all being read: none evictable
    batch = index.select_victims(DRAM, 5, 0.0, budget=3)
    assert batch.victims == [] and batch.num_examined == 3 and batch.work_left


def test_moving_blocks_are_not_victims_and_illegal_transitions_raise() -> None:
    index = BlockIndex(LRU())
    (a,) = chain(index, "a")
    index.begin_move(a)
    assert evict_order(index) == []
    index.abandon_move(a)
    assert evict_order(index) == ["a"]
    with pytest.raises(AssertionError):
        a.transition(BlockState.RESIDENT)  # REMOVED is final
    with pytest.raises(AssertionError):
        index.release(meta("x"))


def sized(index: BlockIndex, name: str, length: int, slot: int, parent: str | None = None) -> None:
    m = meta(name, parent)
    m.length_bytes, m.slot = length, SlotId(slot)
    index.insert(m)


def names(metas: list[BlockMeta]) -> list[str]:
    return [m.key.rstrip(b".").decode() for m in metas]


def test_victims_of_one_block_size_or_of_any_size_in_each_class_lru_order() -> None:
    index = BlockIndex(LRU())
    for i, (name, length) in enumerate([("a", 4), ("B", 8), ("c", 4), ("D", 8), ("e", 4)]):
        sized(index, name, length, slot=i)
    small = index.select_victims(DRAM, 2, 0.0, budget=100, length_bytes=4)
    assert names(small.victims) == ["a", "c"]
    rest = names(index.select_victims(DRAM, 5, 0.0, budget=100).victims)
    assert sorted(rest) == ["B", "D", "e"] and rest.index("B") < rest.index("D")  # per class
    assert index.num_bytes(DRAM) == 28


def test_take_all_is_children_first_and_all_or_nothing() -> None:
    index = BlockIndex(PrefixLRU())
    sized(index, "p", 4, slot=0)
    sized(index, "c1", 4, slot=4, parent="p")
    sized(index, "g", 4, slot=8, parent="c1")
    page = [(SlotId(8), key("g")), (SlotId(0), key("p")), (SlotId(4), key("c1"))]
    taken = index.take_all(DRAM, page, 0.0, keep_parents=True)
    assert taken is not None and names(taken) == ["g", "c1", "p"]
    assert all(m.state is BlockState.MOVING for m in taken)
    for m in taken:
        index.abandon_move(m)
    index.pin(index.get(key("c1")), until_s=10.0)  # type: ignore[arg-type]
    assert index.take_all(DRAM, page, 0.0, keep_parents=True) is None
    assert index.take_all(DRAM, page, 11.0, keep_parents=True) is not None  # pin expired


def test_take_all_keeps_a_parent_whose_child_is_elsewhere_and_skips_stale_slots() -> None:
    index = BlockIndex(PrefixLRU())
    sized(index, "p", 4, slot=0)
    sized(index, "c", 4, slot=4096, parent="p")  # in another page
    assert index.take_all(DRAM, [(SlotId(0), key("p"))], 0.0, keep_parents=True) is None
    assert index.get(key("p")).state is BlockState.RESIDENT  # type: ignore[union-attr]
    assert index.take_all(DRAM, [(SlotId(0), key("p"))], 0.0, keep_parents=False) is not None
    # a slot whose owner now lives elsewhere (freed when its readers finish): not taken
    assert index.take_all(DRAM, [(SlotId(8), key("c"))], 0.0, keep_parents=False) is None
