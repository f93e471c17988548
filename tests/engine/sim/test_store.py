from engine.sim.store import NodeStore
from engine.sim.workload import hash_key
from kvstore.policy.eviction import LRU, PrefixLRU
from kvstore.policy.promotion import PromotionPolicy
from kvstore.types import BlockKey, TierKind

HBM, DRAM, NVME = TierKind.HBM, TierKind.DRAM, TierKind.NVME


def keys(*ids: int) -> list[BlockKey]:
    return [hash_key(i) for i in ids]


def tiers_of(store: NodeStore, ids: list[int]) -> list[TierKind | None]:
    out: list[TierKind | None] = []
    for key in keys(*ids):
        meta = store.index.get(key)
        out.append(None if meta is None else meta.tier)
    return out


def test_blocks_demote_down_the_tiers_then_drop_leaves_first() -> None:
    store = NodeStore({HBM: 2, DRAM: 2, NVME: 1}, PrefixLRU(), PromotionPolicy(0))
    store.write(keys(1, 2), now_s=0.0)
    assert tiers_of(store, [1, 2]) == [HBM, HBM]
    store.write(keys(3, 4), now_s=1.0)  # 1 and 2 go down (the leaf 2 first, then 1)
    assert tiers_of(store, [1, 2, 3, 4]) == [DRAM, DRAM, HBM, HBM]
    store.write(keys(5), now_s=2.0)
    # HBM is full: its LRU leaf (4, a child of 3) goes down; DRAM's leaf 2 goes to NVMe.
    assert tiers_of(store, [1, 2, 3, 4, 5]) == [DRAM, NVME, HBM, DRAM, HBM]
    store.write(keys(6), now_s=3.0)
    # 3 demotes to DRAM (a leaf there: its child 4 is slower); DRAM's least recent leaf
    # (1: its child 2 is slower) to NVMe; NVMe drops its only leaf, 2 (1 has a child).
    assert tiers_of(store, [1, 2, 3, 4, 5, 6]) == [NVME, None, DRAM, DRAM, HBM, HBM]
    for tier, capacity in ((HBM, 2), (DRAM, 2), (NVME, 1)):
        assert store.num_blocks(tier) <= capacity


def test_flat_lru_may_strand_children_prefix_lru_does_not() -> None:
    flat = NodeStore({DRAM: 2}, LRU(), PromotionPolicy(0))
    prefix = NodeStore({DRAM: 2}, PrefixLRU(), PromotionPolicy(0))
    for store in (flat, prefix):
        store.write(keys(1, 2), now_s=0.0)
        store.write(keys(3), now_s=1.0)
    assert tiers_of(flat, [1, 2, 3]) == [None, DRAM, DRAM]  # the parent went first
    assert tiers_of(prefix, [1, 2, 3]) == [DRAM, None, DRAM]
    assert len(prefix.run(keys(1, 2))) == 1


def test_a_hit_in_a_slower_tier_promotes() -> None:
    store = NodeStore({HBM: 1, DRAM: 4}, PrefixLRU(), PromotionPolicy(1))
    store.write(keys(1), now_s=0.0)
    store.write(keys(2), now_s=1.0)
    assert tiers_of(store, [1, 2]) == [DRAM, HBM]
    store.read(store.run(keys(1)), now_s=2.0)
    assert tiers_of(store, [1, 2]) == [HBM, DRAM]


def test_a_store_without_tiers_holds_nothing() -> None:
    store = NodeStore({}, PrefixLRU(), PromotionPolicy(1))
    assert store.write(keys(1, 2), now_s=0.0) == 0
    assert store.run(keys(1)) == []
