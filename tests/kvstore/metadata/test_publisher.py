"""The node side: batched publishing, heartbeats, degraded mode and republishing."""

from __future__ import annotations

import asyncio

from kvstore.metadata.base import NodeInfo
from kvstore.metadata.memory import MemoryMetadata
from kvstore.metadata.publisher import IndexPublisher
from tests.conftest import NAMESPACE, FakeClock, StoreFactory, block_bytes, chain_keys

NS = NAMESPACE.id


class CountingMetadata(MemoryMetadata):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.publishes = 0

    async def publish(self, node_id, changes):  # type: ignore[no-untyped-def]
        self.publishes += 1
        await super().publish(node_id, changes)


def describe(degraded: bool) -> NodeInfo:
    return NodeInfo(node_id="n1", address="127.0.0.1:1", host_id="h", degraded=degraded)


async def test_puts_are_published_in_batches(make_store: StoreFactory, clock: FakeClock) -> None:
    store = await make_store()
    metadata = CountingMetadata(clock)
    publisher = IndexPublisher(
        store, metadata, describe, node_ttl_s=5, heartbeat_interval_s=1, publish_interval_s=0.05
    )
    await publisher.start()
    try:
        keys = chain_keys(12)
        for i in range(0, 12, 2):  # six puts in quick succession
            await store.put(NS, keys[i : i + 2], [block_bytes(i), block_bytes(i + 1)])
        await asyncio.sleep(0.2)
        assert metadata.publishes == 1  # one round trip for all of them
        assert all("n1" in holders for holders in await metadata.locate(keys))
        await store.remove(NS, keys[:1])
        await publisher.flush()
        assert "n1" not in (await metadata.locate(keys[:1]))[0]
    finally:
        await publisher.stop()
    assert await metadata.nodes() == []  # unregistered on stop


async def test_an_expired_registration_is_noticed_and_republished(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = await make_store()
    metadata = MemoryMetadata(clock=clock)
    publisher = IndexPublisher(
        store, metadata, describe, node_ttl_s=5, heartbeat_interval_s=1, publish_interval_s=0.01
    )
    await publisher.start()
    try:
        keys = chain_keys(3)
        await store.put(NS, keys, [block_bytes(i) for i in range(3)])
        await publisher.flush()
        clock.advance(10)  # a pause longer than the TTL: another node reaps our entries
        await metadata.reap_dead(10_000)
        assert await metadata.locate(keys) == [{}, {}, {}]
        await publisher._heartbeat_once()
        assert all("n1" in holders for holders in await metadata.locate(keys))
    finally:
        await publisher.stop()
