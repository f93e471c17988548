"""One node, many block sizes: size classes in the tiers, eviction per class, recovery."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from kvstore.config import load_config
from kvstore.errors import InvalidArgument
from kvstore.hashing import Namespace, prefix_keys
from kvstore.layout import BlockSpec, KVDtype
from kvstore.store import NodeStore
from kvstore.types import BlockKey, MissReason, NamespaceId, TierKind
from tests.conftest import BLOCK, SPEC, FakeClock, StoreFactory

KiB, MiB = 1 << 10, 1 << 20
SMALL = Namespace("small-model", SPEC)  # 4 KiB blocks
LARGE = Namespace("large-model", BlockSpec(4, 2, 16, KVDtype.FLOAT16, 16))  # 8 KiB blocks
# a page: 4 small blocks or 2 large ones
PAGES = {"store.page_bytes": str(4 * BLOCK), "store.block_bytes": str(2 * BLOCK)}


def spec_of(block_bytes: int, block_tokens: int = 16) -> BlockSpec:
    """A float16 spec of 2 KV heads x 64 dims whose blocks are ``block_bytes``."""
    layers = block_bytes // (2 * block_tokens * 2 * 64 * 2)
    return BlockSpec(layers, 2, 64, KVDtype.FLOAT16, block_tokens)


def roots(ns: Namespace, n: int, start: int = 0) -> list[BlockKey]:
    """``n`` one-block chains (each a root): eviction order is then plain LRU."""
    tokens = ns.spec.block_tokens
    return [prefix_keys(ns.id, [start + i] * tokens, tokens)[0] for i in range(n)]


def data(ns: Namespace, seed: int) -> bytes:
    return bytes([seed % 251]) * ns.block_bytes


async def put_roots(
    store: NodeStore, ns: Namespace, keys: list[BlockKey], clock: FakeClock
) -> None:
    for i, key in enumerate(keys):
        clock.advance(1)
        await store.put(ns.id, [key], [data(ns, i)])


def resident(store: NodeStore, ns: Namespace, keys: list[BlockKey]) -> list[bool]:
    return store.exists(ns.id, keys)


async def test_default_config_serves_2_mib_and_32_kib_blocks_at_once(tmp_path: Path) -> None:
    config = load_config(
        env={},
        overrides={
            "store.node_id": f"test-{uuid.uuid4().hex[:12]}",
            "tiers.dram.capacity_bytes": str(128 * MiB),  # defaults otherwise: 2 pages
        },
    )
    big, small = Namespace("llama-3-8b", spec_of(2 * MiB)), Namespace("tiny", spec_of(32 * KiB))
    async with await NodeStore.open(config) as store:
        for ns in (big, small):
            store.register_namespace(ns)
        big_keys, small_keys = roots(big, 8), roots(small, 100)
        await store.put(big.id, big_keys, [data(big, i) for i in range(8)])
        await store.put(small.id, small_keys, [data(small, i) for i in range(100)])
        for ns, keys in ((big, big_keys), (small, small_keys)):
            async with store.read(ns.id, keys[:1]) as run:  # each key is its own chain
                assert bytes(run.blocks[0].data) == data(ns, 0)
            assert all(resident(store, ns, keys))
        (dram,) = store.stats().tiers
        stored = 8 * 2 * MiB + 100 * 32 * KiB
        assert dram.stored_bytes == dram.used_bytes == stored
        assert dram.carved_bytes == 128 * MiB and dram.num_used_slots == 108


async def test_small_blocks_use_their_size_not_the_largest(make_store: StoreFactory) -> None:
    """32 KiB blocks on a node whose largest block is 1 MiB: 4 MiB of DRAM holds 128 of
    them, not 4 (one per 1 MiB slot)."""
    small = Namespace("small", spec_of(32 * KiB))
    store = await make_store(
        **{
            "store.block_bytes": str(MiB),
            "tiers.dram.capacity_bytes": str(4 * MiB),
            "tiers.nvme.enabled": "false",
        }
    )
    store.register_namespace(small)
    keys = roots(small, 128)
    await store.put(small.id, keys, [data(small, i) for i in range(128)])
    assert all(resident(store, small, keys))
    (dram,) = store.stats().tiers
    assert dram.used_bytes == dram.stored_bytes == 4 * MiB == dram.capacity_bytes


async def test_a_class_at_its_share_evicts_its_own_least_recent_block(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(**PAGES, **{"tiers.nvme.enabled": "false"})  # DRAM: 2 pages
    store.register_namespace(SMALL)
    store.register_namespace(LARGE)
    small, large = roots(SMALL, 5), roots(LARGE, 2)
    await put_roots(store, SMALL, small[:4], clock)  # page 0
    await put_roots(store, LARGE, large, clock)  # page 1: each class holds its share
    await put_roots(store, SMALL, small[4:], clock)
    assert resident(store, SMALL, small) == [False, True, True, True, True]
    assert resident(store, LARGE, large) == [True, True]
    assert store.lookup(SMALL.id, small[:1]).miss_reason is MissReason.EVICTED


async def test_a_class_below_its_share_takes_the_emptiest_page_of_the_largest_class(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(**PAGES, **{"tiers.nvme.enabled": "false"})  # DRAM: 2 pages
    store.register_namespace(SMALL)
    store.register_namespace(LARGE)
    small, large = roots(SMALL, 8), roots(LARGE, 3)
    await put_roots(store, SMALL, small, clock)  # pages 0 and 1
    await store.remove(SMALL.id, small[5:6])  # page 1 now holds 3 blocks, page 0 holds 4
    await put_roots(store, LARGE, large[:1], clock)
    # every block of page 1 went (whatever its recency); page 0 is untouched
    assert resident(store, SMALL, small) == [True] * 4 + [False] * 4
    await put_roots(store, LARGE, large[1:2], clock)  # the page's second slot: no eviction
    assert resident(store, SMALL, small[:4]) == [True] * 4
    await put_roots(store, LARGE, large[2:], clock)  # at its share now: evicts its own
    assert resident(store, LARGE, large) == [False, True, True]
    assert resident(store, SMALL, small[:4]) == [True] * 4


async def test_a_page_with_a_pinned_block_is_not_taken(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(**PAGES, **{"tiers.nvme.enabled": "false"})
    store.register_namespace(SMALL)
    store.register_namespace(LARGE)
    small = roots(SMALL, 8)
    await put_roots(store, SMALL, small, clock)
    store.pin(SMALL.id, small[:1], ttl_s=60)
    await put_roots(store, LARGE, roots(LARGE, 1), clock)
    assert resident(store, SMALL, small) == [True] * 4 + [False] * 4


async def test_a_taken_page_is_demoted_to_nvme_and_served_from_there(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store(
        **PAGES, **{"tiers.dram.capacity_bytes": str(8 * BLOCK)}
    )  # DRAM 2 pages over NVMe 4 pages
    store.register_namespace(SMALL)
    store.register_namespace(LARGE)
    small = roots(SMALL, 8)
    await put_roots(store, SMALL, small, clock)
    await put_roots(store, LARGE, roots(LARGE, 1), clock)
    tiers = [store.lookup(SMALL.id, [k]).tiers for k in small]
    assert tiers == [[TierKind.NVME]] * 4 + [[TierKind.DRAM]] * 4  # page 0 went down
    out = bytearray(BLOCK)
    assert (await store.get_into(SMALL.id, small[:1], [out])).tiers == [TierKind.NVME]
    assert bytes(out) == data(SMALL, 0)


async def test_nvme_recovers_blocks_of_two_sizes_after_a_restart(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    nvme_only = {**PAGES, "tiers.dram.enabled": "false"}  # NVMe: 4 pages
    store = await make_store(**nvme_only)
    store.register_namespace(SMALL)
    store.register_namespace(LARGE)
    small, large = roots(SMALL, 6), roots(LARGE, 3)
    await put_roots(store, SMALL, small, clock)
    await put_roots(store, LARGE, large, clock)
    slots = {k: store.index.get(k).slot for k in small + large}  # type: ignore[union-attr]
    await store.close()

    reopened = await make_store(**nvme_only)
    assert {ns.model_id for ns in reopened.namespaces()} >= {SMALL.model_id, LARGE.model_id}
    for ns, keys in ((SMALL, small), (LARGE, large)):
        for i, key in enumerate(keys):
            out = bytearray(ns.block_bytes)
            assert (await reopened.get_into(ns.id, [key], [out])).num_hits == 1
            assert bytes(out) == data(ns, i)
            assert reopened.index.get(key).slot == slots[key]  # type: ignore[union-attr]
    nvme = reopened.tiering.tiers[TierKind.NVME].slots
    assert nvme.pages_per_class() == {BLOCK: 2, LARGE.block_bytes: 2}
    assert nvme.available(BLOCK) == 2 and nvme.available(LARGE.block_bytes) == 1
    more = roots(LARGE, 1, start=500)  # the free large slot, not one of a recovered block
    await put_roots(reopened, LARGE, more, clock)
    assert all(resident(reopened, SMALL, small)) and all(resident(reopened, LARGE, large))


SLAB_CASES = {
    "64 MiB, default 1 GiB slabs": (64 * MiB, 64 * MiB, "1GiB", 1, [64 * MiB]),  # was 1 GiB
    "10 pages, 4 a slab": (
        40 * BLOCK,
        4 * BLOCK,
        str(16 * BLOCK),
        40,
        [16 * BLOCK] * 2 + [8 * BLOCK],
    ),
}


@pytest.mark.parametrize("case", SLAB_CASES.values(), ids=SLAB_CASES.keys())
async def test_nvme_slab_files_never_exceed_the_capacity(
    tmp_path: Path, make_store: StoreFactory, case: tuple[int, int, str, int, list[int]]
) -> None:
    capacity, page, slab, fill, files = case
    store = await make_store(
        **{
            "tiers.dram.enabled": "false",
            "tiers.nvme.capacity_bytes": str(capacity),
            "tiers.nvme.slab_bytes": slab,
            "store.page_bytes": str(page),
        }
    )
    store.register_namespace(SMALL)
    keys = roots(SMALL, fill)  # filling the tier creates every slab file
    await store.put(SMALL.id, keys, [data(SMALL, 0)] * fill)
    sizes = [p.stat().st_size for p in sorted((tmp_path / "nvme").glob("slab-*.dat"))]
    assert sizes == files and sum(sizes) <= capacity


async def test_a_namespace_over_the_largest_block_is_a_clear_error(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    too_big = Namespace("big", spec_of(2 * BLOCK))
    with pytest.raises(InvalidArgument) as info:
        store.register_namespace(too_big)
    message = str(info.value)
    assert str(2 * BLOCK) in message and str(BLOCK) in message and "store.block_bytes" in message
    assert NamespaceId(too_big.id) not in [ns.id for ns in store.namespaces()]


async def test_a_capacity_that_is_not_whole_pages_is_reported(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = await make_store(**PAGES, **{"tiers.dram.capacity_bytes": str(10 * BLOCK)})
    dram = store.stats().tiers[0]
    assert dram.tier is TierKind.DRAM and dram.capacity_bytes == 8 * BLOCK
    assert f"{2 * BLOCK} bytes are left unused" in caplog.text
    assert "tiers.dram.capacity_bytes" in caplog.text
