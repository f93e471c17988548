"""The connector's counters against a real in-process store node: what a lookup asked
and found, why it came up short, and the bytes and seconds of saves and loads."""

from __future__ import annotations

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.connector.backend import MissCause, StoreBackend
from kvstore.server.serve import start_node
from tests.conftest import BLOCK, NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import node_config


async def test_lookups_saves_and_loads_are_counted_in_blocks_bytes_and_seconds() -> None:
    node = await start_node(node_config())
    backend = StoreBackend(StoreClient(node.address, CallOptions(timeout_s=5)), NAMESPACE)
    try:
        keys = chain_keys(4)
        assert (
            await backend.put(keys[:3], [memoryview(block_bytes(i)) for i in range(3)], None) == 3
        )
        assert await backend.lookup(keys) == 3
        buffers = [memoryview(bytearray(BLOCK)) for _ in range(3)]
        get = await backend.load(keys[:3], buffers)
        assert get is not None and await get.verified() == 3
    finally:
        await backend.close()
        await node.stop(grace_s=0.5)
    stats = backend.stats
    assert (stats.lookup_blocks, stats.lookup_hit_blocks) == (4, 3)
    assert stats.miss_blocks == {MissCause.NOT_CACHED: 1}
    assert (stats.saved_blocks, stats.saved_bytes) == (3, 3 * BLOCK)
    assert sum(stats.loaded_blocks.values()) == 3 and stats.loaded_bytes == 3 * BLOCK
    assert stats.save_s > 0 and get.load_s > 0


async def test_a_lookup_the_store_cannot_answer_counts_its_blocks_as_store_down() -> None:
    node = await start_node(node_config())
    address = node.address
    await node.stop(grace_s=0.5)  # nothing listens there any more
    backend = StoreBackend(StoreClient(address, CallOptions(timeout_s=1, retries=0)), NAMESPACE)
    try:
        assert await backend.lookup(chain_keys(2)) == 0
        assert await backend.lookup(chain_keys(2)) == 0  # left alone: not even tried
    finally:
        await backend.close()
    stats = backend.stats
    assert stats.miss_blocks == {MissCause.STORE_DOWN: 4}
    assert (stats.lookup_blocks, stats.lookup_hit_blocks) == (4, 0)
    assert stats.unreachable == 1 and stats.skipped == 1
