"""Durable blocks stay durable: NVMe is inclusive, write-through, and the write-down at
shutdown. A block that reached NVMe survives a kill -9 even after it was promoted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.store import NodeStore
from kvstore.types import BlockKey, TierKind
from tests.conftest import (
    BLOCK,
    NAMESPACE,
    FakeClock,
    StoreFactory,
    block_bytes,
    chain_keys,
    store_config,
)
from tests.processes import ServeProcess

NS = NAMESPACE.id
DRAM, NVME = TierKind.DRAM, TierKind.NVME
ROOT = Path(__file__).resolve().parents[2]


async def hit(store: NodeStore, key: BlockKey, data: bytes) -> bool:
    out = bytearray(BLOCK)
    got = await store.get_into(NS, [key], [out])
    return got.num_hits == 1 and bytes(out) == data


WRITER = """
import asyncio, json, sys
from pathlib import Path
from kvstore.store import NodeStore
from kvstore.types import TierKind
from tests.conftest import NAMESPACE, BLOCK, block_bytes, chain_keys, store_config

async def main():
    config = store_config(Path(sys.argv[1]), **{"store.promotion_min_hits": "2",
        "tiers.nvme.capacity_bytes": str(32 * BLOCK)})
    store = await NodeStore.open(config)
    ns = store.register_namespace(NAMESPACE)
    chains = [chain_keys(4, start=1000 * c) for c in range(6)]
    keys = [k for c in chains for k in c]
    ever = set()
    def note():
        ever.update(k for k in keys if store.lookup(ns, [k]).tiers == [TierKind.NVME])
    for c, chain in enumerate(chains):
        await store.put(ns, chain, [block_bytes(keys.index(k)) for k in chain])
        note()
    for _ in range(2):
        for chain in chains:
            await store.get_into(ns, chain, [bytearray(BLOCK) for _ in chain])
            note()
    print(json.dumps({"ever": sorted(k.hex() for k in ever),
                      "promotions": sum(store.stats().promotions.values())}), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_put_read_twice_kill_9_restart_keeps_every_block_that_reached_nvme(
    tmp_path: Path,
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        report = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert report["promotions"] > 0  # some blocks went NVMe -> DRAM before the kill
    ever = [BlockKey(bytes.fromhex(k)) for k in report["ever"]]
    assert len(ever) >= 16
    keys = [k for c in range(6) for k in chain_keys(4, start=1000 * c)]
    store = await NodeStore.open(
        store_config(tmp_path, **{"tiers.nvme.capacity_bytes": str(32 * BLOCK)})
    )
    try:
        store.register_namespace(NAMESPACE)
        assert [await hit(store, k, block_bytes(keys.index(k))) for k in ever] == [True] * len(ever)
        assert store.stats().corrupted_blocks == {}
    finally:
        await store.close()


async def test_promotion_copies_and_evicting_the_copy_holder_is_a_drop(
    make_store: StoreFactory,
) -> None:
    store = await make_store(**{"store.promotion_min_hits": "1"})  # DRAM 8 over NVMe 16
    chains = [chain_keys(4, start=1000 * c) for c in range(3)]
    data = {k: block_bytes(i) for i, k in enumerate(k for c in chains for k in c)}
    for keys in chains:
        await store.put(NS, keys, [data[k] for k in keys])
    assert store.lookup(NS, chains[0]).tiers == [NVME] * 4
    nvme = store.tiering.tiers[NVME].slots
    await store.get_into(NS, chains[0], [bytearray(BLOCK) for _ in range(4)])
    assert store.lookup(NS, chains[0]).tiers == [DRAM] * 4  # promoted ...
    usage = {u.tier: u for u in store.stats().tiers}
    assert usage[NVME].num_copies == 4 and nvme.num_used == 8  # ... and still on NVMe
    assert usage[NVME].num_blocks == 4  # chains[1], demoted to make room in DRAM
    demotions = sum(store.stats().demotions.values())
    await store.evict(DRAM, 8)  # chains[0] falls back to its copy: no new NVMe slot
    assert store.lookup(NS, chains[0]).tiers == [NVME] * 4
    assert nvme.num_used == 12 and store.stats().tiers[0].num_used_slots == 0
    assert sum(store.stats().demotions.values()) == demotions + 8
    assert all([await hit(store, k, data[k]) for k in data])


async def test_removing_a_promoted_block_removes_its_copy(
    make_store: StoreFactory, tmp_path: Path, clock: FakeClock
) -> None:
    store = await make_store(**{"store.promotion_min_hits": "1"})
    chains = [chain_keys(4, start=1000 * c) for c in range(3)]
    for i, keys in enumerate(chains):
        await store.put(NS, keys, [block_bytes(4 * i + j) for j in range(4)])
    await store.get_into(NS, chains[0], [bytearray(BLOCK) for _ in range(4)])
    assert await store.remove(NS, chains[0]) == 4
    assert store.stats().tiers[1].num_copies == 0
    await store.close()
    reopened = await make_store()
    assert not any(reopened.exists(NS, chains[0]))


async def test_write_through_makes_every_put_durable(make_store: StoreFactory) -> None:
    store = await make_store(**{"tiers.nvme.write_through": "true"})
    keys = chain_keys(6)
    await store.put(NS, keys, [block_bytes(i) for i in range(6)])
    assert store.lookup(NS, keys).tiers == [DRAM] * 6
    assert store.stats().tiers[1].num_copies == 6
    await store.close()  # DRAM is gone, as after a kill -9
    reopened = await make_store()
    assert [await hit(reopened, k, block_bytes(i)) for i, k in enumerate(keys)] == [True] * 6


def test_write_through_needs_nvme(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"tiers\.nvme\.write_through"):
        store_config(
            tmp_path, **{"tiers.nvme.enabled": "false", "tiers.nvme.write_through": "true"}
        )


async def test_write_down_copies_memory_only_blocks(make_store: StoreFactory) -> None:
    store = await make_store()
    keys = chain_keys(8)
    await store.put(NS, keys, [block_bytes(i) for i in range(8)])
    assert await store.write_down(5.0) == 8
    assert await store.write_down(5.0) == 0  # idempotent
    await store.close()
    reopened = await make_store()
    assert [await hit(reopened, k, block_bytes(i)) for i, k in enumerate(keys)] == [True] * 8


async def test_sigterm_writes_dram_blocks_down_so_a_restart_keeps_them(tmp_path: Path) -> None:
    flags = {
        "store.block_bytes": str(BLOCK),
        "tiers.dram.capacity_bytes": str(64 * BLOCK),
        "tiers.nvme.enabled": "true",
        "tiers.nvme.path": str(tmp_path / "nvme"),
        "tiers.nvme.capacity_bytes": str(64 * BLOCK),
        "tiers.nvme.slab_bytes": str(64 * BLOCK),
    }
    keys = chain_keys(16)
    blocks = [block_bytes(i) for i in range(16)]
    with ServeProcess(**flags) as server:
        async with StoreClient(server.address, CallOptions(timeout_s=10)) as client:
            ns = await client.register_namespace(NAMESPACE)
            await client.put(ns, keys, blocks)  # type: ignore[arg-type]
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    with ServeProcess(**flags) as server:
        async with StoreClient(server.address, CallOptions(timeout_s=10)) as client:
            ns = await client.register_namespace(NAMESPACE)
            got = await client.get(ns, keys)
            assert got.num_hits == 16 and got.tiers == [NVME] * 16
            assert [bytes(b) for b in got.blocks] == blocks


async def test_a_full_nvme_drops_copies_when_its_own_blocks_cannot_go(
    make_store: StoreFactory,
) -> None:
    store = await make_store(**{"store.promotion_min_hits": "1"})  # DRAM 8 over NVMe 16
    chains = [chain_keys(4, start=1000 * c) for c in range(6)]
    data = {k: block_bytes(i) for i, k in enumerate(k for c in chains for k in c)}
    for keys in chains:
        await store.put(NS, keys, [data[k] for k in keys])
    await store.get_into(NS, chains[0], [bytearray(BLOCK) for _ in range(4)])
    # chains[0] was promoted (with copies); chains[4] took NVMe room, chains[1] went.
    assert store.lookup(NS, chains[0]).tiers == [DRAM] * 4
    nvme_usage = store.stats().tiers[1]
    assert (nvme_usage.num_blocks, nvme_usage.num_copies, nvme_usage.num_used_slots) == (12, 4, 16)
    assert store.pin(NS, [k for c in chains[2:5] for k in c], ttl_s=60) == 12
    assert await store.evict(DRAM, 4) == 4  # chains[5] needs NVMe room: only copies can go
    assert store.lookup(NS, chains[5]).tiers == [NVME] * 4
    assert store.lookup(NS, chains[0]).tiers == [DRAM] * 4
    nvme_usage = store.stats().tiers[1]
    assert (nvme_usage.num_blocks, nvme_usage.num_copies, nvme_usage.num_used_slots) == (16, 0, 16)
    for keys in (chains[0], chains[5]):  # DRAM first: reading NVMe blocks promotes them
        assert [await hit(store, k, data[k]) for k in keys] == [True] * 4
