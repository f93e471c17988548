"""Nodes and clients on the data plane: fast paths, fallback, topology, other hosts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from kvstore.client import StoreClient
from kvstore.client.calls import CallOptions
from kvstore.transfer.transports import TransportKind
from kvstore.types import TierKind
from tests.conftest import NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import NodeFactory
from tests.redis_server import RedisServer


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_clients_read_through_shared_memory_or_tcp(make_node: NodeFactory) -> None:
    node = await make_node()
    keys, data = chain_keys(5), [block_bytes(i) for i in range(5)]
    for options, kind in (
        (CallOptions(), TransportKind.SHM),
        (CallOptions(shared_memory=False), TransportKind.TCP),
    ):
        async with StoreClient(node.address, options) as client:
            ns = await client.register_namespace(NAMESPACE)
            route = await client.data_plane()
            assert route is not None and route.kind is kind
            await client.put(ns, keys[:3], data[:3])
            buffers = [bytearray(len(data[0])) for _ in keys]
            result = await client.get(ns, keys, buffers)
            assert result.num_hits == 3 and [bytes(b) for b in buffers[:3]] == data[:3]
            assert (
                result.tiers == [TierKind.DRAM] * 3 and result.node_ids == [node.node.node_id] * 3
            )
    stats = node.node.store.stats()
    assert stats.hit_blocks == 6 and stats.miss_blocks == 4


async def test_without_a_data_plane_clients_use_grpc(make_node: NodeFactory) -> None:
    node = await make_node(**{"transfer.enabled": "false"})
    async with StoreClient(node.address) as client:
        ns = await client.register_namespace(NAMESPACE)
        assert await client.data_plane() is None
        await client.put(ns, chain_keys(2), [block_bytes(0), block_bytes(1)])
        assert (await client.get(ns, chain_keys(2))).num_hits == 2


async def test_a_failed_data_plane_falls_back_to_grpc(make_node: NodeFactory) -> None:
    node = await make_node()
    async with StoreClient(node.address, CallOptions(shared_memory=False, timeout_s=2)) as client:
        ns = await client.register_namespace(NAMESPACE)
        await client.put(ns, chain_keys(2), [block_bytes(0), block_bytes(1)])
        assert await client.data_plane() is not None
        assert node.node.data_plane is not None
        await node.node.data_plane.server.close()  # the data plane dies, gRPC lives on
        result = await client.get(ns, chain_keys(2))
        assert result.num_hits == 2 and bytes(result.blocks[1]) == block_bytes(1)
        assert await client.data_plane() is None  # it stays on gRPC


async def test_nodes_measure_and_publish_their_links(
    make_node: NodeFactory, redis: RedisServer
) -> None:
    """Two stand-ins for other hosts (distinct host ids, two loopback addresses each as
    NICs) and one node on the same host as the first."""
    common = {
        "metadata.backend": "redis",
        "metadata.redis_url": redis.url,
        "transfer.probe_interval_s": "0.2",
    }
    a = await make_node(**common, **{"store.node_id": "a", "transfer.host_id": "host-1"})
    b = await make_node(
        **common,
        **{
            "store.node_id": "b",
            "transfer.host_id": "host-2",
            "transfer.hosts": "127.0.0.1,127.0.0.2",
        },
    )
    c = await make_node(**common, **{"store.node_id": "c", "transfer.host_id": "host-1"})
    assert b.node.data_plane is not None and len(b.node.data_plane.addresses) == 2

    async def links_of_a() -> dict[str, str]:
        nodes = {n.node_id: n for n in await a.node.nodes()}
        return {link.peer_id: link.transport for link in nodes["a"].links} if "a" in nodes else {}

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and await links_of_a() != {"b": "tcp", "c": "shm"}:
        await asyncio.sleep(0.1)
    assert await links_of_a() == {"b": "tcp", "c": "shm"}
    link = next(k for k in a.node.describe(False).links if k.peer_id == "b")
    assert link.address in b.node.data_plane.addresses and link.gbps > 0 and link.rtt_us > 0
    assert c.node.node_id == "c"


async def test_peer_reads_between_hosts_go_over_tcp(
    make_node: NodeFactory, redis: RedisServer
) -> None:
    common = {"metadata.backend": "redis", "metadata.redis_url": redis.url}
    a = await make_node(**common, **{"store.node_id": "a", "transfer.host_id": "host-1"})
    b = await make_node(**common, **{"store.node_id": "b", "transfer.host_id": "host-2"})
    keys, data = chain_keys(4), [block_bytes(i) for i in range(4)]
    async with StoreClient(a.address) as ca, StoreClient(b.address) as cb:
        ns = await ca.register_namespace(NAMESPACE)
        await cb.register_namespace(NAMESPACE)
        await ca.put(ns, keys, data)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not await cb.lookup(ns, keys):
            await asyncio.sleep(0.05)
        result = await cb.get(ns, keys)
        assert result.num_hits == 4 and [bytes(x) for x in result.blocks] == data
        assert set(result.node_ids) == {"a"}
    assert b.node.data_plane is not None
    peer = await b.node.data_plane.engine.connect(a.node.data_plane.addresses)  # type: ignore[union-attr]
    assert peer.kind is TransportKind.TCP
