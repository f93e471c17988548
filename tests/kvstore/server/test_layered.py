"""Layer-wise puts and gets against a real node: the bytes, the fallbacks, the guards."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.errors import InvalidArgument, KVStoreError
from kvstore.transfer.tcp import TcpTransport
from kvstore.transfer.transports import RangeWrite
from kvstore.types import TierKind
from tests.conftest import BLOCK, NAMESPACE, SPEC, block_bytes, chain_keys
from tests.kvstore.server.conftest import NodeFactory

LAYERS = SPEC.num_layers

OPTIONS = [
    pytest.param(CallOptions(), id="shm"),
    pytest.param(CallOptions(shared_memory=False), id="tcp"),
    pytest.param(CallOptions(data_plane=False), id="grpc"),
]


@pytest.mark.parametrize("options", OPTIONS)
async def test_layered_put_then_layered_get_round_trips(
    make_node: NodeFactory, options: CallOptions
) -> None:
    node = await make_node()
    keys, data = chain_keys(4), [block_bytes(i + 1) for i in range(4)]
    async with StoreClient(node.address, options) as client:
        ns = await client.register_namespace(NAMESPACE)
        await client.put(ns, keys[:1], data[:1])  # already stored: not rewritten
        put = await client.put_layered(ns, keys, [memoryview(d) for d in data], LAYERS)
        assert put.layer_wise is options.data_plane
        for layer in range(LAYERS):
            put.write_layer(layer)
        result = await put.commit()
        assert (result.num_stored, result.num_present) == (3, 1)

        dsts = [memoryview(bytearray(len(d))) for d in [*data, data[0]]]
        get = await client.get_layered(ns, [*keys, chain_keys(5)[4]], dsts, LAYERS)
        assert get.num_hits == 4
        for layer in range(LAYERS):
            await get.layer(layer)
        assert await get.verified() == 4
        assert [bytes(d) for d in dsts[:4]] == data


@pytest.mark.parametrize("options", OPTIONS)
async def test_a_layered_get_counts_each_block_once(
    make_node: NodeFactory, options: CallOptions
) -> None:
    """The engine's read (lease, then a read of the rest) counts a block once: a cold
    prompt of 2 blocks is 2 misses, not 4; 1 cached of 3 is 1 hit and 2 misses."""
    node = await make_node()
    keys = chain_keys(3)
    async with StoreClient(node.address, options) as client:
        ns = await client.register_namespace(NAMESPACE)
        dsts = [memoryview(bytearray(BLOCK)) for _ in keys]
        get = await client.get_layered(ns, keys[:2], dsts, LAYERS)
        assert await get.verified() == 0
        stats = node.node.store.stats()
        assert (stats.hit_blocks, stats.miss_blocks) == (0, 2)

        await client.put(ns, keys[:1], [block_bytes(1)])
        get = await client.get_layered(ns, keys, dsts, LAYERS)
        for layer in range(LAYERS):
            await get.layer(layer)
        assert await get.verified() == 1
        stats = node.node.store.stats()
        assert (stats.hit_blocks, stats.miss_blocks) == (1, 4)


async def test_a_layered_put_is_invisible_until_committed_and_aborts_cleanly(
    make_node: NodeFactory,
) -> None:
    node = await make_node()
    keys, data = chain_keys(2), [memoryview(block_bytes(i + 7)) for i in range(2)]
    async with StoreClient(node.address, CallOptions(shared_memory=False)) as client:
        ns = await client.register_namespace(NAMESPACE)
        put = await client.put_layered(ns, keys, data, LAYERS)
        put.write_layer(0)
        assert (await client.get(ns, keys)).num_hits == 0
        with pytest.raises(InvalidArgument, match="commit after 1 of 2 layers"):
            await put.commit()  # aborts
        assert (await client.get(ns, keys)).num_hits == 0
        again = await client.put_layered(ns, keys, data, LAYERS)  # the keys are free again
        for layer in range(LAYERS):
            again.write_layer(layer)
        assert (await again.commit()).num_stored == 2


async def test_arena_writes_outside_a_reservation_are_refused(make_node: NodeFactory) -> None:
    """A data-plane peer may not overwrite a stored block in the arena."""
    node = await make_node()
    keys, data = chain_keys(1), [block_bytes(3)]
    async with StoreClient(node.address, CallOptions(shared_memory=False)) as client:
        ns = await client.register_namespace(NAMESPACE)
        await client.put(ns, keys, data)
        route = await client.data_plane()
        assert route is not None and isinstance(route.peer.transport, TcpTransport)
        transport = route.peer.transport
        lease = await transport.acquire(ns, keys)
        transport.release(lease)
        evil = memoryview(bytes(len(data[0])))
        with pytest.raises(KVStoreError, match="not in a reserved slot"):
            await transport.write_ranges(0, 0, [RangeWrite("dram", lease.blocks[0].offset, evil)])
        assert bytes((await client.get(ns, keys)).blocks[0]) == data[0]


async def test_a_corrupted_cached_block_is_not_verified(make_node: NodeFactory) -> None:
    node = await make_node()
    keys, data = chain_keys(3), [block_bytes(i + 1) for i in range(3)]
    async with StoreClient(node.address, CallOptions()) as client:
        ns = await client.register_namespace(NAMESPACE)
        await client.put(ns, keys, data)
        arena = node.node.store.shared_arena()
        assert arena is not None
        meta = node.node.store.lease(ns, keys[1:2])
        arena.view(meta.blocks[0].slot)[5] ^= 0xFF  # bit rot in DRAM
        await node.node.store.release_lease(meta)
        dsts = [memoryview(bytearray(len(d))) for d in data]
        get = await client.get_layered(ns, keys, dsts, LAYERS)
        assert await get.verified() == 1


@pytest.mark.parametrize("options", OPTIONS)
async def test_admission_applies_to_every_write_path(
    make_node: NodeFactory, options: CallOptions, tmp_path: Path
) -> None:
    """Blocks the doorkeeper sends to NVMe end there however they were written (into the
    arena, over TCP or gRPC); refused ones are reported as skipped and never served."""
    nvme = {
        "tiers.nvme.enabled": "true",
        "tiers.nvme.path": str(tmp_path / "nvme"),
        "tiers.nvme.capacity_bytes": str(16 * BLOCK),
        "tiers.nvme.slab_bytes": str(8 * BLOCK),
    }
    slow = await make_node(**nvme, **{"store.admission_policy": "doorkeeper"})
    skip = await make_node(**{"store.admission_policy": "doorkeeper_skip"})
    keys, data = chain_keys(2), [memoryview(block_bytes(i + 3)) for i in range(2)]
    for running, expected in ((slow, (2, 0)), (skip, (0, 2))):
        async with StoreClient(running.address, options) as client:
            ns = await client.register_namespace(NAMESPACE)
            put = await client.put_layered(ns, keys, data, LAYERS)
            for layer in range(LAYERS):
                put.write_layer(layer)
            result = await put.commit()
            assert (result.num_stored, result.num_skipped) == expected
            whole = await client.put(ns, chain_keys(1, start=500), data[:1])
            assert (whole.num_stored, whole.num_skipped) == (expected[0] // 2, expected[1] // 2)
    store = slow.node.store
    assert store.lookup(NAMESPACE.id, keys).tiers == [TierKind.NVME] * 2
    assert skip.node.store.lookup(NAMESPACE.id, keys).num_blocks == 0
