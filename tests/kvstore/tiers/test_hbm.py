"""The HBM tier. On hosts without CUDA only the configuration error is testable."""

from pathlib import Path

import pytest
import torch

from kvstore.errors import ConfigError
from kvstore.store import NodeStore
from kvstore.types import SlotId, TierKind
from tests.conftest import BLOCK, NAMESPACE, block_bytes, chain_keys, store_config

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
async def test_hbm_without_cuda_is_a_configuration_error(tmp_path: Path) -> None:
    config = store_config(tmp_path, **{"tiers.hbm.enabled": "true"})
    with pytest.raises(ConfigError, match=r"tiers\.hbm\.enabled.*CUDA"):
        await NodeStore.open(config)
    assert not list(Path("/dev/shm").glob(f"strata-{config.store.node_id}-*"))


@pytest.mark.gpu
@gpu
async def test_hbm_over_dram_demotes_and_serves_exact_bytes(tmp_path: Path) -> None:
    config = store_config(
        tmp_path,
        **{"tiers.hbm.enabled": "true", "tiers.hbm.capacity_bytes": str(4 * BLOCK)},
    )
    store = await NodeStore.open(config)
    try:
        ns = store.register_namespace(NAMESPACE)
        keys = chain_keys(12)
        data = [block_bytes(i) for i in range(12)]
        for i in range(0, 12, 4):
            await store.put(ns, keys[i : i + 4], data[i : i + 4], parent=keys[i - 1] if i else None)
        tiers = store.lookup(ns, keys).tiers
        assert tiers.count(TierKind.HBM) == 4 and tiers.count(TierKind.DRAM) == 8
        out = [bytearray(BLOCK) for _ in keys]
        got = await store.get_into(ns, keys, out)
        assert got.num_hits == 12 and [bytes(b) for b in out] == data
        async with store.read(ns, keys[:1]) as run:
            views = run.blocks
            assert bytes(views[0].data) == data[0]
    finally:
        await store.close()


@pytest.mark.gpu
@gpu
async def test_the_dram_arena_under_hbm_is_pinned(tmp_path: Path) -> None:
    """Demotions and promotions between HBM and DRAM copy from page-locked memory."""
    config = store_config(tmp_path, **{"tiers.hbm.enabled": "true"})
    store = await NodeStore.open(config)
    try:
        dram = store.tiering.tiers[TierKind.DRAM]
        arena = dram.view(SlotId(0))
        assert arena is not None
        assert torch.frombuffer(arena, dtype=torch.uint8).is_pinned()  # cudaHostRegister'd
    finally:
        await store.close()


@pytest.mark.gpu
@gpu
async def test_hbm_evicts_to_dram_and_nvme_and_promotes_hot_blocks_back(tmp_path: Path) -> None:
    """Independent prefixes (every block a leaf), so plain LRU decides: the oldest blocks
    go down two tiers, and each hit on them moves them up one tier again."""
    config = store_config(
        tmp_path,
        **{
            "tiers.hbm.enabled": "true",
            "tiers.hbm.capacity_bytes": str(4 * BLOCK),
            "store.promotion_min_hits": "1",
        },
    )
    store = await NodeStore.open(config)
    try:
        ns = store.register_namespace(NAMESPACE)
        keys = chain_keys(20)
        data = [block_bytes(i) for i in range(20)]
        for key, block in zip(keys, data, strict=True):  # 4 in HBM, 8 in DRAM, 8 on NVMe
            await store.put(ns, [key], [block])
        tiers = [store.lookup(ns, [k]).tiers[0] for k in keys]
        assert tiers == [TierKind.NVME] * 8 + [TierKind.DRAM] * 8 + [TierKind.HBM] * 4
        hot = keys[:2]
        for expected in (TierKind.DRAM, TierKind.HBM):
            for key, block in zip(hot, data, strict=False):
                out = bytearray(BLOCK)
                got = await store.get_into(ns, [key], [out])
                assert got.num_hits == 1 and bytes(out) == block
            assert [store.lookup(ns, [k]).tiers[0] for k in hot] == [expected] * 2
        for key, block in zip(keys, data, strict=True):  # every byte survived the moves
            out = bytearray(BLOCK)
            assert (await store.get_into(ns, [key], [out])).num_hits == 1 and bytes(out) == block
    finally:
        await store.close()
