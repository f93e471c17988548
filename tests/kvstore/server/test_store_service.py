"""The store service over real gRPC: data, metadata-only calls, admin, health, reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kvstore.client import Chain, StoreClient
from kvstore.client.calls import CallOptions
from kvstore.errors import CapacityExceeded, InvalidArgument, NotFound
from kvstore.hashing import Namespace
from kvstore.layout import BlockSpec, KVDtype
from kvstore.server.serve import RunningNode
from kvstore.types import MissReason, NamespaceId, TierKind
from tests.conftest import BLOCK, NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import NodeFactory


async def test_put_then_get_round_trips_bytes(client: StoreClient) -> None:
    ns = await client.register_namespace(NAMESPACE)
    assert ns == NAMESPACE.id
    keys = chain_keys(5)
    data = [block_bytes(i) for i in range(5)]
    assert (await client.put(ns, keys, data)).num_stored == 5
    result = await client.get(ns, keys)
    assert result.num_hits == 5 and result.miss_reason is None
    assert [bytes(b) for b in result.blocks] == data
    assert result.tiers == [TierKind.DRAM] * 5 and len(set(result.node_ids)) == 1


async def test_a_miss_is_a_typed_result(client: StoreClient) -> None:
    ns = await client.register_namespace(NAMESPACE)
    keys = chain_keys(3)
    await client.put(ns, keys[:1], [block_bytes(0)])
    result = await client.get(ns, keys)
    assert result.num_hits == 1 and result.miss_reason is MissReason.NEVER_STORED
    assert (await client.get(ns, chain_keys(2, start=999))).num_hits == 0


async def test_get_into_caller_buffers(client: StoreClient) -> None:
    ns = await client.register_namespace(NAMESPACE)
    keys = chain_keys(2)
    await client.put(ns, keys, [block_bytes(1), block_bytes(2)])
    buffers = [bytearray(BLOCK), bytearray(BLOCK)]
    result = await client.get(ns, keys, buffers)
    assert result.num_hits == 2 and bytes(buffers[1]) == block_bytes(2)


async def test_blocks_larger_than_grpcs_message_limit_stream_in_chunks(
    make_node: NodeFactory,
) -> None:
    big = Namespace("big", BlockSpec(8, 8, 128, KVDtype.FLOAT32, 128))  # 8 MiB blocks
    node = await make_node(
        **{
            "store.block_bytes": str(big.block_bytes),
            "tiers.dram.capacity_bytes": str(4 * big.block_bytes),
        }
    )
    async with StoreClient(node.address, CallOptions(timeout_s=20)) as client:
        ns = await client.register_namespace(big)
        keys = [bytes([i]) * 16 for i in range(2)]
        data = [bytes([7 + i]) * big.block_bytes for i in range(2)]
        assert (await client.put(ns, keys, data)).num_stored == 2  # type: ignore[arg-type]
        result = await client.get(ns, keys)  # type: ignore[arg-type]
        assert result.num_hits == 2 and [bytes(b) for b in result.blocks] == data


async def test_batch_put_and_batch_get(client: StoreClient) -> None:
    ns = await client.register_namespace(NAMESPACE)
    a, b = chain_keys(3), chain_keys(2, start=5000)
    results = await client.put_many(
        ns,
        [Chain(a, [block_bytes(i) for i in range(3)]), Chain(b, [block_bytes(9), block_bytes(8)])],
    )
    assert [r.num_stored for r in results] == [3, 2]
    got = await client.get_many(ns, [a, b, chain_keys(1, start=7000)])
    assert [g.num_hits for g in got] == [3, 2, 0]
    assert bytes(got[1].blocks[0]) == block_bytes(9)


async def test_lookup_exists_remove_pin(client: StoreClient, node: RunningNode) -> None:
    ns = await client.register_namespace(NAMESPACE)
    keys = chain_keys(4)
    await client.put(ns, keys[:3], [block_bytes(i) for i in range(3)])
    (holder,) = await client.lookup(ns, keys, local=True)
    assert holder.node_id == node.node.node_id and holder.num_blocks == 3
    assert holder.tiers == [TierKind.DRAM] * 3
    (cluster_holder,) = await client.lookup(ns, keys)
    assert cluster_holder.num_blocks == 3
    assert await client.exists(ns, keys) == [True, True, True, False]
    assert await client.pin(ns, keys, ttl_s=30) == 3
    assert await client.unpin(ns, keys) == 3
    assert await client.remove(ns, keys[1:2]) == 1
    assert (await client.get(ns, keys)).miss_reason is MissReason.REMOVED


async def test_errors_map_to_clear_exceptions(client: StoreClient, node: RunningNode) -> None:
    ns = await client.register_namespace(NAMESPACE)
    with pytest.raises(NotFound, match="unknown namespace"):
        await client.get(NamespaceId(b"u" * 16), chain_keys(1))
    with pytest.raises(InvalidArgument, match=r"keys\[1\]: must be 16 bytes, got 3"):
        await client.get(ns, [chain_keys(1)[0], b"abc"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="block 0 is 3 bytes"):
        await client.put(ns, chain_keys(1), [b"abc"])
    with pytest.raises(CapacityExceeded, match="do not fit"):
        await client.put(ns, chain_keys(65), [block_bytes(0)] * 65)
    with pytest.raises(InvalidArgument, match="tier"):
        await client.evict(TierKind.NVME, 1)  # not enabled on this node


async def test_admin_stats_nodes_evict_flush_config(client: StoreClient, node: RunningNode) -> None:
    ns = await client.register_namespace(NAMESPACE)
    keys = chain_keys(4)
    await client.put(ns, keys, [block_bytes(i) for i in range(4)])
    await client.get(ns, keys + chain_keys(1, start=99))
    stats = await client.stats()
    assert stats.node_id == node.node.node_id and stats.put_blocks == 4
    (ns_stats,) = stats.namespaces
    assert ns_stats.namespace.model_id == NAMESPACE.model_id
    assert sum(h.blocks for h in ns_stats.hits) == 4 and sum(m.blocks for m in ns_stats.misses) == 1
    (info,) = await client.nodes()
    assert info.node_id == node.node.node_id and info.address == node.address
    await asyncio.sleep(0.05)  # a same-host read's lease ends a few milliseconds after it
    assert await client.evict(TierKind.DRAM, 1) == 1
    assert await client.flush() == 3
    config = await client.config()
    assert config["store"]["node_id"] == node.node.node_id
    assert config["auth"]["token"] == ""


async def test_health_and_reflection_are_served(node: RunningNode) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "strata.v1.StoreService", "strata.v1.AdminService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        services = set()
        async for response in stub.ServerReflectionInfo(iter([request])):
            services |= {s.name for s in response.list_services_response.service}
        assert {"strata.v1.StoreService", "strata.v1.AdminService"} <= services


async def test_an_abandoned_reservation_is_reclaimed_without_new_puts(
    make_node: NodeFactory,
) -> None:
    node = await make_node(**{"store.reservation_timeout_s": "0.2"})
    store = node.node.store
    store.register_namespace(NAMESPACE)
    await store.reserve(NAMESPACE.id, chain_keys(2), [None, chain_keys(2)[0]])
    assert store.stats().tiers[0].num_used_slots == 2
    await asyncio.sleep(0.6)  # no put comes; the node's maintenance reclaims it
    assert store.stats().tiers[0].num_used_slots == 0
    assert store.stats().reservations_reclaimed == 1
