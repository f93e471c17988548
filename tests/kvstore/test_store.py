"""The node store's behaviour through its public API."""

from __future__ import annotations

import pytest

from kvstore.errors import CapacityExceeded, InvalidArgument, LeaseExpired, NotFound
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.store import NodeStore
from kvstore.types import BlockKey, MissReason, NamespaceId, TierKind
from tests.conftest import BLOCK, NAMESPACE, SPEC, FakeClock, StoreFactory, block_bytes, chain_keys

NS = NAMESPACE.id
DRAM, NVME = TierKind.DRAM, TierKind.NVME


def buffers(n: int) -> list[bytearray]:
    return [bytearray(BLOCK) for _ in range(n)]


async def test_put_then_get_returns_the_same_bytes(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(4)
    result = await store.put(NS, keys, [block_bytes(i) for i in range(4)])
    assert result.num_stored == 4
    out = buffers(4)
    got = await store.get_into(NS, keys, out)
    assert got.num_hits == 4 and got.tiers == [DRAM] * 4
    assert [bytes(b) for b in out] == [block_bytes(i) for i in range(4)]


async def test_get_returns_the_longest_leading_run(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(5)
    await store.put(NS, keys[:3], [block_bytes(i) for i in range(3)])
    got = await store.get_into(NS, keys, buffers(5))
    assert got.num_hits == 3
    lookup = store.lookup(NS, keys)
    assert lookup.num_blocks == 3 and lookup.miss_reason is MissReason.NEVER_STORED
    assert store.exists(NS, keys) == [True, True, True, False, False]


async def test_reserved_blocks_are_invisible_until_commit(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(2)
    reservation = await store.reserve(NS, keys, [None, keys[0]])
    for block in reservation.blocks:
        block.buffer[:] = block_bytes(block.position)
    assert store.lookup(NS, keys).num_blocks == 0
    assert (await store.get_into(NS, keys, buffers(2))).num_hits == 0
    assert (await store.commit(reservation)).num_stored == 2
    out = buffers(2)
    assert (await store.get_into(NS, keys, out)).num_hits == 2
    assert bytes(out[1]) == block_bytes(1)


async def test_abandoned_reservations_are_reclaimed(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(**{"tiers.nvme.enabled": "false", "store.reservation_timeout_s": "5"})
    reservation = await store.reserve(NS, chain_keys(8), [None] * 8)  # the whole DRAM tier
    with pytest.raises(CapacityExceeded):
        await store.reserve(NS, chain_keys(1, start=10_000), [None])
    clock.advance(6)
    assert store.reclaim_expired() == 1
    assert store.stats().reservations_reclaimed == 1
    with pytest.raises(LeaseExpired):
        await store.commit(reservation)
    assert (await store.put(NS, chain_keys(8), [block_bytes(i) for i in range(8)])).num_stored == 8


async def test_stats_count_what_reservations_reads_and_leases_hold_right_now(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(**{"tiers.nvme.enabled": "false", "store.reservation_timeout_s": "5"})
    keys = chain_keys(4)
    await store.put(NS, keys[:2], [block_bytes(0), block_bytes(1)])

    def held() -> tuple[int, int]:
        stats = store.stats()
        return stats.num_open_reservations, stats.num_read_pins

    assert held() == (0, 0)  # a finished put holds nothing
    committed = await store.reserve(NS, keys[2:3], [keys[1]])
    aborted = await store.reserve(NS, keys[3:], [keys[2]])
    abandoned = await store.reserve(NS, chain_keys(1, start=500), [None])
    assert held() == (3, 0)
    await store.commit(committed)
    await store.abort(aborted)
    assert held() == (1, 0)
    clock.advance(6)
    assert store.reclaim_expired() == 1 and held() == (0, 0)
    with pytest.raises(LeaseExpired):
        await store.commit(abandoned)
    async with store.read(NS, keys[:3]):
        assert held() == (0, 3)
        run = store.lease(NS, keys[:2])
        assert held() == (0, 5)
    assert held() == (0, 2)  # the lease outlives the read until it is released
    await store.release_lease(run)
    assert held() == (0, 0)


async def test_present_and_in_flight_keys_are_not_written_twice(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(3)
    await store.put(NS, keys[:1], [block_bytes(0)])
    first = await store.reserve(NS, keys, [None, keys[0], keys[1]])
    assert [b.key for b in first.blocks] == keys[1:] and first.num_present == 1
    second = await store.reserve(NS, keys, [None, keys[0], keys[1]])
    assert second.blocks == [] and second.num_in_flight == 2
    await store.abort(first)
    assert (await store.commit(second)).num_stored == 0


async def test_putting_a_present_key_keeps_the_first_bytes(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(1)
    await store.put(NS, keys, [block_bytes(1)])
    assert (await store.put(NS, keys, [block_bytes(2)])).num_present == 1
    out = buffers(1)
    await store.get_into(NS, keys, out)
    assert bytes(out[0]) == block_bytes(1)


async def test_full_dram_demotes_leaves_to_nvme_then_drops(make_store: StoreFactory) -> None:
    store = await make_store()  # DRAM 8 blocks over NVMe 16
    chains = [chain_keys(4, start=1000 * c) for c in range(7)]
    data = {k: block_bytes(i) for i, k in enumerate(k for c in chains for k in c)}
    for keys in chains[:6]:  # 24 blocks: 8 in DRAM, 16 in NVMe, none dropped
        await store.put(NS, keys, [data[k] for k in keys])
    stats = store.stats()
    assert stats.demotions == {(DRAM, NVME): 16} and stats.evictions == {}
    # LRU among leaves, one at a time: the least recent chains sink whole, tail first.
    assert store.lookup(NS, chains[0]).tiers == [NVME] * 4
    assert store.lookup(NS, chains[3]).tiers == [NVME] * 4
    assert store.lookup(NS, chains[4]).tiers == [DRAM] * 4
    await store.put(NS, chains[6], [data[k] for k in chains[6]])
    assert store.stats().evictions == {NVME: 4}
    assert store.lookup(NS, chains[0]).num_blocks == 0  # the least recent chain went, tail first
    assert store.lookup(NS, chains[0]).miss_reason is MissReason.EVICTED
    for meta in store.index.blocks():  # nothing cached lost its parent
        assert meta.parent is None or meta.parent in store.index
    for keys in chains[1:]:
        out = buffers(4)
        assert (await store.get_into(NS, keys, out)).num_hits == 4
        assert [bytes(b) for b in out] == [data[k] for k in keys]


async def test_a_chain_longer_than_the_store_drops_from_its_tail(make_store: StoreFactory) -> None:
    store = await make_store()  # 24 blocks in all
    keys = chain_keys(28)
    for i in range(0, 28, 4):
        data = [block_bytes(i + j) for j in range(4)]
        await store.put(NS, keys[i : i + 4], data, parent=keys[i - 1] if i else None)
    # No NVMe block is a leaf (each is an ancestor of a DRAM block): DRAM leaves are dropped.
    assert store.lookup(NS, keys).num_blocks == 20
    assert store.stats().evictions == {DRAM: 4}


async def put_in_batches(store: NodeStore, keys: list[BlockKey], data: list[bytes]) -> None:
    for i in range(0, len(keys), 4):
        parent = keys[i - 1] if i else None
        await store.put(NS, keys[i : i + 4], data[i : i + 4], parent=parent)


async def test_hits_in_nvme_are_promoted(make_store: StoreFactory) -> None:
    store = await make_store(**{"store.promotion_min_hits": "1"})
    keys = chain_keys(12)
    data = [block_bytes(i) for i in range(12)]
    await put_in_batches(store, keys, data)
    first = store.lookup(NS, keys).tiers
    assert first.count(NVME) == 4
    await store.get_into(NS, keys[:2], buffers(2))
    stats = store.stats()
    assert sum(stats.promotions.values()) == sum(t is NVME for t in first[:2])
    assert store.lookup(NS, keys[:2]).tiers == [DRAM, DRAM]
    out = buffers(12)
    assert (await store.get_into(NS, keys, out)).num_hits == 12
    assert [bytes(b) for b in out] == data


async def test_promotion_waits_for_min_hits(make_store: StoreFactory) -> None:
    store = await make_store(**{"store.promotion_min_hits": "2"})
    keys = chain_keys(12)
    await put_in_batches(store, keys, [block_bytes(i) for i in range(12)])
    nvme_keys = [k for k, t in zip(keys, store.lookup(NS, keys).tiers, strict=True) if t is NVME][
        :1
    ]
    await store.get_into(NS, nvme_keys, buffers(1))
    assert store.stats().promotions == {}
    await store.get_into(NS, nvme_keys, buffers(1))
    assert store.stats().promotions == {(NVME, DRAM): 1}


async def test_a_block_being_read_is_never_evicted_or_overwritten(make_store: StoreFactory) -> None:
    store = await make_store(**{"tiers.nvme.enabled": "false"})  # DRAM only: eviction drops
    keys = chain_keys(8)
    data = [block_bytes(i) for i in range(8)]
    await store.put(NS, keys, data)
    async with store.read(NS, keys[:4]) as run:
        views = run.blocks
        assert [v.tier for v in views] == [DRAM] * 4
        # Fill the tier with new blocks: only the 4 unread blocks can make room.
        await store.put(NS, chain_keys(4, start=5000), [block_bytes(100 + i) for i in range(4)])
        assert store.lookup(NS, keys).num_blocks == 4
        with pytest.raises(CapacityExceeded):  # only 4 blocks are not being read
            await store.put(NS, chain_keys(5, start=9000), [block_bytes(200)] * 5)
        assert [bytes(v.data) for v in views] == data[:4]
        assert await store.remove(NS, keys[3:4]) == 1  # removal waits for the reader
        assert store.lookup(NS, keys).num_blocks == 3
        await store.put(NS, chain_keys(4, start=7000), [block_bytes(300)] * 4)
        assert bytes(views[3].data) == data[3]  # its slot was not reused
        with pytest.raises(CapacityExceeded):  # (evicts the 4 unread blocks on its way)
            await store.put(NS, chain_keys(5, start=8000), [block_bytes(400)] * 5)
        assert store.stats().tiers[0].num_used_slots == 4
    assert store.stats().tiers[0].num_used_slots == 3  # the removed block's slot is free now
    assert store.lookup(NS, keys[3:4]).miss_reason is MissReason.REMOVED
    await store.put(NS, chain_keys(5, start=8000), [block_bytes(400)] * 5)


async def test_views_are_released_after_the_read(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(1)
    await store.put(NS, keys, [block_bytes(0)])
    async with store.read(NS, keys) as run:
        views = run.blocks
        view = views[0].data
        assert view.readonly
    with pytest.raises(ValueError):
        bytes(view)


async def test_pinned_blocks_stay_until_their_ttl(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(**{"tiers.nvme.enabled": "false"})
    keys = chain_keys(8)
    await store.put(NS, keys, [block_bytes(i) for i in range(8)])
    assert store.pin(NS, keys, ttl_s=60) == 8
    with pytest.raises(CapacityExceeded):
        await store.put(NS, chain_keys(1, start=5000), [block_bytes(9)])
    clock.advance(61)
    await store.put(NS, chain_keys(1, start=5000), [block_bytes(9)])
    assert store.lookup(NS, keys).num_blocks < 8
    store.pin(NS, keys[:1], ttl_s=60)
    assert store.unpin(NS, keys[:1]) == 1


async def test_remove_and_miss_reasons_are_counted(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(3)
    await store.put(NS, keys, [block_bytes(i) for i in range(3)])
    assert await store.remove(NS, keys[1:2]) == 1
    got = await store.get_into(NS, keys, buffers(3))
    assert got.num_hits == 1
    (ns_stats,) = store.stats().namespaces
    assert ns_stats.hit_blocks == {DRAM: 1}
    assert ns_stats.hit_tokens == {DRAM: SPEC.block_tokens}
    assert ns_stats.miss_blocks == {MissReason.REMOVED: 2}
    assert ns_stats.miss_tokens == {MissReason.REMOVED: 2 * SPEC.block_tokens}
    assert ns_stats.hit_rate == pytest.approx(1 / 3)


async def test_namespace_mismatch_is_a_miss_not_an_error(make_store: StoreFactory) -> None:
    store = await make_store()
    other = store.register_namespace(Namespace("other-model", SPEC))
    keys = chain_keys(1)
    await store.put(NS, keys, [block_bytes(0)])
    assert (await store.get_into(other, keys, buffers(1))).num_hits == 0
    assert store.lookup(other, keys).miss_reason is MissReason.NAMESPACE_MISMATCH
    stats = {s.model_id: s for s in store.stats().namespaces}
    assert stats["other-model"].miss_blocks == {MissReason.NAMESPACE_MISMATCH: 1}


async def test_bad_input_gets_clear_errors_and_changes_nothing(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(2)
    with pytest.raises(NotFound, match="unknown namespace"):
        await store.put(NamespaceId(b"x" * 16), keys, [block_bytes(0)] * 2)
    with pytest.raises(InvalidArgument, match="block 1 is 10 bytes"):
        await store.put(NS, keys, [block_bytes(0), b"x" * 10])
    with pytest.raises(InvalidArgument, match="2 keys but 1 blocks"):
        await store.put(NS, keys, [block_bytes(0)])
    with pytest.raises(InvalidArgument, match="16 bytes"):
        await store.put(NS, [b"short"], [block_bytes(0)])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="read-only"):
        await store.get_into(NS, keys, [bytes(BLOCK), bytes(BLOCK)])
    with pytest.raises(InvalidArgument, match="buffer 0 is 5 bytes"):
        await store.get_into(NS, keys, [bytearray(5), bytearray(BLOCK)])
    with pytest.raises(InvalidArgument, match="not a buffer"):
        await store.get_into(NS, keys, [object(), object()])
    with pytest.raises(InvalidArgument, match="ttl_s"):
        store.pin(NS, keys, ttl_s=0)
    big = Namespace("big", BlockSpec(64, 8, 128, KVDtype.FLOAT32, 16))
    with pytest.raises(InvalidArgument, match=r"store\.block_bytes"):
        store.register_namespace(big)
    with pytest.raises(CapacityExceeded, match="do not fit"):
        await store.put(NS, chain_keys(9), [block_bytes(i) for i in range(9)])
    assert store.lookup(NS, chain_keys(9)).num_blocks == 0
    assert store.stats().put_blocks == 0


async def test_admin_evict_pushes_blocks_down(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(4)
    await store.put(NS, keys, [block_bytes(i) for i in range(4)])
    assert await store.evict(DRAM, 2) == 2
    assert store.lookup(NS, keys).tiers == [DRAM, DRAM, NVME, NVME]
    with pytest.raises(InvalidArgument):
        await store.evict(TierKind.HBM, 1)
