"""The client's route: which way each call's bytes go (data plane or gRPC), and when it
changes its mind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvstore.client import Chain, StoreClient
from kvstore.client.calls import CallOptions
from kvstore.client.results import GetResult
from kvstore.client.route import Route
from kvstore.reservations import PutResult
from kvstore.server.serve import RunningNode
from kvstore.transfer.transports import TransportKind
from kvstore.types import BlockKey, Buffer, NamespaceId, TierKind
from tests.conftest import BLOCK, NAMESPACE, block_bytes, chain_keys
from tests.kvstore.server.conftest import NodeFactory


@dataclass
class Grpc:
    """The client's gRPC calls, counted."""

    client: StoreClient
    puts: list[int] = field(default_factory=list)  # keys per gRPC put
    gets: list[int] = field(default_factory=list)  # keys per gRPC get

    async def put(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[Buffer],
        parent: BlockKey | None,
    ) -> PutResult:
        self.puts.append(len(keys))
        (result,) = await self.client.put_many(ns_id, [Chain(keys, blocks, parent)])
        return result

    async def get(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        buffers: Sequence[Buffer] | None,
        local_only: bool,
    ) -> GetResult:
        self.gets.append(len(keys))
        (result,) = await self.client.get_many(ns_id, [keys], local_only=local_only)
        for block, buffer in zip(result.blocks, buffers or [], strict=False):
            memoryview(buffer).cast("B")[: block.nbytes] = block
        return result


@pytest.fixture
async def routes() -> AsyncIterator[list[tuple[Route, Grpc]]]:
    opened: list[tuple[Route, Grpc]] = []
    yield opened
    for route, grpc in opened:
        await route.close()
        await grpc.client.close()


async def _route(
    node: RunningNode,
    opened: list[tuple[Route, Grpc]],
    options: CallOptions,
    *,
    registered: bool = True,
) -> tuple[Route, Grpc]:
    """A route to ``node`` whose gRPC calls (a plain gRPC client's) are counted."""
    client = StoreClient(node.address, CallOptions(data_plane=False))
    ns = await client.register_namespace(NAMESPACE)
    grpc = Grpc(client)
    route = Route(
        node.address,
        options,
        block_bytes={ns: BLOCK} if registered else {},
        describe=client._describe_data_plane,  # where the node's data plane listens
        grpc_put=grpc.put,
        grpc_get=grpc.get,
    )
    opened.append((route, grpc))
    return route, grpc


@pytest.mark.parametrize(
    ("options", "kind"),
    [(CallOptions(), TransportKind.SHM), (CallOptions(shared_memory=False), TransportKind.TCP)],
    ids=["shm", "tcp"],
)
async def test_with_a_data_plane_no_bytes_cross_grpc(
    make_node: NodeFactory,
    routes: list[tuple[Route, Grpc]],
    options: CallOptions,
    kind: TransportKind,
) -> None:
    node = await make_node()
    route, grpc = await _route(node, routes, options)
    keys, data = chain_keys(3), [block_bytes(i) for i in range(3)]
    link = await route.data_plane()
    assert link is not None and link.kind is kind
    assert (await route.put(NAMESPACE.id, keys[:2], data[:2], None)).num_stored == 2
    result = await route.get(NAMESPACE.id, keys)
    assert result.num_hits == 2 and [bytes(b) for b in result.blocks] == data[:2]
    reserved = await route.reserve(NAMESPACE.id, keys[2:], keys[1])
    assert reserved is not None and len(reserved.slots.slots) == 1
    await reserved.transport.finish(reserved.slots.reservation_id, commit=False)
    leased = await route.lease(NAMESPACE.id, keys)
    assert leased is not None and len(leased.lease.blocks) == 2
    assert leased.node_id == node.node.node_id
    leased.transport.release(leased.lease)
    assert (grpc.puts, grpc.gets) == ([], [])
    # memory metadata: no peers to fetch from, so the data plane's read counted its misses
    assert (node.node.store.stats().hit_blocks, node.node.store.stats().miss_blocks) == (4, 1)


async def test_without_a_data_plane_everything_goes_over_grpc(
    make_node: NodeFactory, routes: list[tuple[Route, Grpc]]
) -> None:
    node = await make_node(**{"transfer.enabled": "false"})
    route, grpc = await _route(node, routes, CallOptions())
    keys, data = chain_keys(2), [block_bytes(i) for i in range(2)]
    assert await route.data_plane() is None
    await route.put(NAMESPACE.id, keys, data, None)
    assert (await route.get(NAMESPACE.id, keys)).num_hits == 2
    assert await route.reserve(NAMESPACE.id, keys, None) is None  # layers go whole
    assert await route.lease(NAMESPACE.id, keys) is None
    assert (grpc.puts, grpc.gets) == ([2], [2])


async def test_a_client_that_turns_the_data_plane_off_uses_grpc(
    make_node: NodeFactory, routes: list[tuple[Route, Grpc]]
) -> None:
    node = await make_node()
    route, grpc = await _route(node, routes, CallOptions(data_plane=False))
    await route.put(NAMESPACE.id, chain_keys(1), [block_bytes(0)], None)
    assert await route.data_plane() is None and grpc.puts == [1]


async def test_an_unregistered_namespace_goes_over_grpc(
    make_node: NodeFactory, routes: list[tuple[Route, Grpc]]
) -> None:
    """Without the namespace's block size the client cannot size buffers itself."""
    node = await make_node()
    route, grpc = await _route(node, routes, CallOptions(), registered=False)
    await route.put(NAMESPACE.id, chain_keys(1), [block_bytes(0)], None)
    assert (await route.get(NAMESPACE.id, chain_keys(1))).num_hits == 1
    assert await route.data_plane() is not None
    assert (grpc.puts, grpc.gets) == ([1], [1])


async def test_a_failed_data_plane_sends_this_call_and_the_next_over_grpc(
    make_node: NodeFactory, routes: list[tuple[Route, Grpc]]
) -> None:
    node = await make_node()
    route, grpc = await _route(node, routes, CallOptions(shared_memory=False, timeout_s=2))
    assert await route.data_plane() is not None
    assert node.node.data_plane is not None
    await node.node.data_plane.server.close()
    keys = chain_keys(2)
    assert (await route.put(NAMESPACE.id, keys, [block_bytes(0), block_bytes(1)], None)).num_stored
    assert await route.data_plane() is None
    assert (await route.get(NAMESPACE.id, keys)).num_hits == 2
    assert await route.lease(NAMESPACE.id, keys) is None
    assert (grpc.puts, grpc.gets) == ([2], [2])


async def test_a_refused_reservation_sends_the_layers_whole(
    make_node: NodeFactory, routes: list[tuple[Route, Grpc]], tmp_path: Path
) -> None:
    """A store whose top tier is not DRAM has no arena slots to reserve or lease."""
    node = await make_node(
        **{
            "tiers.dram.enabled": "false",
            "tiers.nvme.enabled": "true",
            "tiers.nvme.path": str(tmp_path),
            "tiers.nvme.capacity_bytes": str(16 * BLOCK),
            "tiers.nvme.slab_bytes": str(8 * BLOCK),
        }
    )
    route, grpc = await _route(node, routes, CallOptions(shared_memory=False))
    keys = chain_keys(2)
    assert await route.reserve(NAMESPACE.id, keys, None) is None
    await route.put(NAMESPACE.id, keys, [block_bytes(0), block_bytes(1)], None)
    assert await route.lease(NAMESPACE.id, keys) is None  # nothing in host memory
    result = await route.get(NAMESPACE.id, keys)
    assert result.num_hits == 2 and result.tiers == [TierKind.NVME] * 2
    assert await route.data_plane() is not None  # a refusal is not a failure
    assert (grpc.puts, grpc.gets) == ([], [])
