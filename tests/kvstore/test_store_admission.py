"""The store's admission policies (``store.admission_policy``) over DRAM (8 blocks) and
NVMe (16 blocks): where each put block lands, what a get returns after, the counters."""

from __future__ import annotations

from kvstore.reservations import PutResult
from kvstore.store import NodeStore
from kvstore.types import BlockKey, MissReason, TierKind
from tests.conftest import BLOCK, NAMESPACE, StoreFactory, block_bytes, chain_keys

NS = NAMESPACE.id
DRAM, NVME = TierKind.DRAM, TierKind.NVME


async def put(store: NodeStore, keys: list[BlockKey], parent: BlockKey | None = None) -> PutResult:
    return await store.put(NS, keys, [block_bytes(i) for i in range(len(keys))], parent)


async def read(store: NodeStore, keys: list[BlockKey]) -> list[bytes]:
    out = [bytearray(BLOCK) for _ in keys]
    got = await store.get_into(NS, keys, out)
    return [bytes(b) for b in out[: got.num_hits]]


def blocks_in(store: NodeStore) -> dict[TierKind, int]:
    return {usage.tier: usage.num_blocks for usage in store.stats().tiers}


async def test_all_is_the_default_and_puts_into_the_fastest_tier(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    keys = chain_keys(3)
    assert await put(store, keys) == PutResult(3, 0, 0, 0)
    assert store.lookup(NS, keys).tiers == [DRAM] * 3
    stats = store.stats()
    assert (stats.put_blocks, stats.put_slow_blocks, stats.put_skipped_blocks) == (3, 0, 0)


async def test_doorkeeper_puts_first_sightings_into_nvme_and_repeats_into_dram(
    make_store: StoreFactory,
) -> None:
    store = await make_store(**{"store.admission_policy": "doorkeeper"})
    keys = chain_keys(3)
    assert await put(store, keys[:2]) == PutResult(2, 0, 0, 0)
    assert store.lookup(NS, keys[:2]).tiers == [NVME, NVME]
    assert await read(store, keys[:2]) == [block_bytes(0), block_bytes(1)]
    assert await store.remove(NS, keys[1:2]) == 1
    # keys[0] is stored, keys[1] was seen before, keys[2] is new
    assert await put(store, keys) == PutResult(2, 1, 0, 0)
    assert store.lookup(NS, keys).tiers == [NVME, DRAM, NVME]
    assert await read(store, keys) == [block_bytes(i) for i in range(3)]
    stats = store.stats()
    assert (stats.put_blocks, stats.put_slow_blocks, stats.put_skipped_blocks) == (4, 3, 0)


async def test_doorkeeper_leaves_a_full_dram_alone(make_store: StoreFactory) -> None:
    store = await make_store(**{"store.admission_policy": "doorkeeper"})
    hot = chain_keys(8)
    await put(store, hot)
    await store.remove(NS, hot)
    await put(store, hot)  # seen before: DRAM, which it fills
    assert blocks_in(store) == {DRAM: 8, NVME: 0}
    cold = chain_keys(4, start=1_000)
    assert await put(store, cold) == PutResult(4, 0, 0, 0)
    assert blocks_in(store) == {DRAM: 8, NVME: 4}
    assert store.lookup(NS, hot).tiers == [DRAM] * 8
    assert store.stats().demotions == {}


async def test_doorkeeper_skip_stores_nothing_after_a_refused_block(
    make_store: StoreFactory,
) -> None:
    store = await make_store(**{"store.admission_policy": "doorkeeper_skip"})
    keys = chain_keys(3)
    assert await put(store, keys) == PutResult(0, 0, 0, 3)  # keys[0] refused, the rest not offered
    assert await read(store, keys) == []
    lookup = store.lookup(NS, keys)
    assert (lookup.num_blocks, lookup.miss_reason) == (0, MissReason.NEVER_STORED)
    assert store.exists(NS, keys) == [False, False, False]

    assert await put(store, keys[1:2], parent=keys[0]) == PutResult(0, 0, 0, 1)  # keys[1] seen
    assert await put(store, keys) == PutResult(2, 0, 0, 1)  # keys[2] never offered: refused
    assert store.exists(NS, keys) == [True, True, False]
    assert store.lookup(NS, keys).tiers == [DRAM, DRAM]
    assert await read(store, keys) == [block_bytes(0), block_bytes(1)]
    stats = store.stats()
    assert (stats.put_blocks, stats.put_slow_blocks, stats.put_skipped_blocks) == (2, 0, 5)


async def test_a_reservation_skips_refused_keys_and_commits_the_rest(
    make_store: StoreFactory,
) -> None:
    store = await make_store(**{"store.admission_policy": "doorkeeper_skip"})
    keys = chain_keys(3)
    await put(store, keys[:2])  # keys[0] seen, keys[1] not offered
    reservation = await store.reserve(NS, keys, [None, keys[0], keys[1]])
    assert [b.position for b in reservation.blocks] == [0] and reservation.num_skipped == 2
    reservation.blocks[0].buffer[:] = block_bytes(0)
    assert await store.commit(reservation) == PutResult(1, 0, 0, 2)
    assert store.exists(NS, keys) == [True, False, False]


async def test_an_in_memory_reservation_writes_in_dram_and_sinks_to_nvme_at_commit(
    make_store: StoreFactory,
) -> None:
    """A writer into the shared arena gets DRAM slots; blocks admitted to NVMe move there."""
    store = await make_store(**{"store.admission_policy": "doorkeeper"})
    keys = chain_keys(2)
    reservation = await store.reserve(NS, keys, [None, keys[0]], in_memory=True)
    assert [(b.tier, b.staged, b.sink) for b in reservation.blocks] == [(DRAM, False, True)] * 2
    for block in reservation.blocks:
        block.buffer[:] = block_bytes(block.position)
    assert await store.commit(reservation) == PutResult(2, 0, 0, 0)
    assert store.lookup(NS, keys).tiers == [NVME, NVME]
    assert blocks_in(store) == {DRAM: 0, NVME: 2}
    assert await read(store, keys) == [block_bytes(0), block_bytes(1)]
    assert store.stats().put_slow_blocks == 2


async def test_without_nvme_slow_is_the_fastest_tier(make_store: StoreFactory) -> None:
    store = await make_store(
        **{"store.admission_policy": "doorkeeper", "tiers.nvme.enabled": "false"}
    )
    keys = chain_keys(2)
    assert await put(store, keys) == PutResult(2, 0, 0, 0)
    assert store.lookup(NS, keys).tiers == [DRAM, DRAM]
    assert store.stats().put_slow_blocks == 0
