"""Concurrent readers, writers, removers and evictions on one store.

Each worker runs a random mix of operations; the event loop interleaves them at every
await (NVMe I/O runs on threads, so moves and reads genuinely overlap). Whatever the
interleaving, every byte served must be the bytes put under that key, a view handed out
by ``read`` must not change while it is held, and when everything is done the slot
accounting must balance exactly, also after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from kvstore.errors import CapacityExceeded
from kvstore.store import NodeStore
from kvstore.types import TierKind
from tests.conftest import BLOCK, NAMESPACE, StoreFactory, block_bytes, chain_keys

NS = NAMESPACE.id
CHAINS = [chain_keys(8, start=1000 * c) for c in range(6)]
DATA = {k: block_bytes(c * 100 + i) for c, keys in enumerate(CHAINS) for i, k in enumerate(keys)}


async def worker(store: NodeStore, seed: int, num_ops: int) -> int:
    rng = random.Random(seed)
    served = 0
    for _ in range(num_ops):
        keys = rng.choice(CHAINS)[: rng.randint(1, 8)]
        op = rng.random()
        if op < 0.45:
            out = [bytearray(BLOCK) for _ in keys]
            got = await store.get_into(NS, keys, out)
            for key, buf in zip(keys[: got.num_hits], out, strict=False):
                assert bytes(buf) == DATA[key]
            served += got.num_hits
            missing = keys[got.num_hits :]
            parent = keys[got.num_hits - 1] if got.num_hits else None
            # CapacityExceeded: every candidate pinned by concurrent readers, a normal refusal
            with contextlib.suppress(CapacityExceeded):
                await store.put(NS, missing, [DATA[k] for k in missing], parent=parent)
        elif op < 0.7:
            async with store.read(NS, keys) as run:
                views = run.blocks
                before = [bytes(v.data) for v in views]
                assert before == [DATA[k] for k in keys[: len(views)]]
                await asyncio.sleep(0)  # let others evict and move around us
                await asyncio.sleep(0.001)
                assert [bytes(v.data) for v in views] == before
            served += len(before)
        elif op < 0.8:
            await store.remove(NS, [rng.choice(keys)])
        elif op < 0.9:
            await store.evict(rng.choice([TierKind.DRAM, TierKind.NVME]), rng.randint(1, 4))
        else:
            store.pin(NS, keys, ttl_s=rng.choice([0.01, 5.0]))
    return served


def assert_balanced(store: NodeStore) -> None:
    for usage in store.stats().tiers:
        assert usage.num_used_slots == usage.num_blocks + usage.num_copies, usage
    for meta in store.index.blocks():
        assert meta.num_readers == 0 and not meta.retired_slots


async def test_concurrent_workload_serves_only_exact_bytes(make_store: StoreFactory) -> None:
    store = await make_store(**{"store.promotion_min_hits": "1"})
    served = await asyncio.gather(*(worker(store, seed, 150) for seed in range(8)))
    assert sum(served) > 0
    stats = store.stats()
    assert stats.demotions and stats.promotions and stats.corrupted_blocks == {}
    assert_balanced(store)
    # On disk: blocks homed on NVMe and the NVMe copies of blocks promoted out of it.
    nvme_keys = {
        m.key for m in store.index.blocks() if m.tier is TierKind.NVME or m.nvme_slot is not None
    }
    await store.close()

    reopened = await make_store()
    assert {m.key for m in reopened.index.blocks()} == nvme_keys  # disk agrees with index
    assert_balanced(reopened)
    for keys in CHAINS:
        out = [bytearray(BLOCK) for _ in keys]
        got = await reopened.get_into(NS, keys, out)
        assert all(bytes(out[i]) == DATA[keys[i]] for i in range(got.num_hits))
