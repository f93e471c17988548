"""Leases through the Transport protocol, on every transport: the host-memory run is
pinned and readable by range until released; a transport with no store says so."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.errors import LeaseUnavailable
from kvstore.server.dataplane import ARENA_SEGMENT
from kvstore.store import NodeStore
from kvstore.transfer.engine import TransferEngine
from kvstore.transfer.local import LocalTransport
from kvstore.transfer.segments import Segment, SegmentRegistry
from kvstore.transfer.transports import Lease, RangeRead, Transport, TransportKind
from kvstore.types import MissReason, TierKind
from tests.conftest import NAMESPACE, StoreFactory, block_bytes, chain_keys
from tests.kvstore.transfer.conftest import HOST, EngineFactory, ServerFactory, segment

NS = NAMESPACE.id


def _engine_for(
    kind: TransportKind, store: NodeStore, make_engine: EngineFactory
) -> TransferEngine:
    if kind is TransportKind.TCP:
        return make_engine()  # another host
    if kind is TransportKind.SHM:
        return make_engine(host_id=HOST)
    arena = store.shared_arena()
    assert arena is not None
    registry = SegmentRegistry()  # the node's own engine sees its arena as a segment
    registry.register(Segment(ARENA_SEGMENT, arena.arena, arena.path))
    engine = make_engine(host_id=HOST, local_node_id="server", registry=registry)
    engine.local_arrived = lambda transfer_id, layer: None
    return engine


async def _leased_bytes(transport: Transport, lease: Lease) -> list[bytes]:
    dsts = [memoryview(bytearray(b.length)) for b in lease.blocks]
    await transport.read_ranges(
        [
            RangeRead(b.segment, b.offset, dst, lease.lease_id)
            for b, dst in zip(lease.blocks, dsts, strict=True)
        ]
    )
    return [bytes(d) for d in dsts]


async def _released(store: NodeStore) -> bool:
    for _ in range(100):  # a release is fire and forget: it lands within a few ms
        if all(m.num_readers == 0 for m in store.index.blocks()):
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.mark.parametrize("kind", list(TransportKind), ids=lambda k: k.value)
async def test_a_lease_pins_the_host_memory_run_until_released(
    make_store: StoreFactory,
    make_server: ServerFactory,
    make_engine: EngineFactory,
    kind: TransportKind,
) -> None:
    store = await make_store()
    keys = chain_keys(4)
    await store.put(NS, keys[:3], [block_bytes(i) for i in range(3)])
    await store.evict(TierKind.DRAM, 1)  # the third sinks to NVMe: not leasable
    server = await make_server(store=store)
    peer = await _engine_for(kind, store, make_engine).connect(server.addresses)
    assert peer.kind is kind

    lease = await peer.transport.acquire(NS, keys)
    assert [b.tier for b in lease.blocks] == [TierKind.DRAM] * 2
    assert await _leased_bytes(peer.transport, lease) == [block_bytes(0), block_bytes(1)]
    assert sum(m.num_readers for m in store.index.blocks()) == 2
    assert store.stats().hit_blocks == 2 and store.stats().miss_blocks == 0  # hits only

    peer.transport.release(lease)
    assert await _released(store)


@pytest.mark.parametrize("kind", list(TransportKind), ids=lambda k: k.value)
async def test_an_empty_lease_pins_nothing_and_needs_no_release(
    make_store: StoreFactory,
    make_server: ServerFactory,
    make_engine: EngineFactory,
    kind: TransportKind,
) -> None:
    store = await make_store()
    server = await make_server(store=store)
    peer = await _engine_for(kind, store, make_engine).connect(server.addresses)
    lease = await peer.transport.acquire(NS, chain_keys(2))
    assert lease.blocks == [] and lease.miss_reason is MissReason.NEVER_STORED
    assert all(m.num_readers == 0 for m in store.index.blocks())
    peer.transport.release(lease)
    assert await _released(store)


async def test_a_transport_with_no_store_cannot_lease() -> None:
    registry = SegmentRegistry()
    registry.register(segment("a", 64))
    local = LocalTransport(registry, lambda transfer_id, layer: None, None)
    with pytest.raises(LeaseUnavailable, match="no store"):
        await local.acquire(NS, chain_keys(1))
    local.release(Lease(1, [], None))  # nothing to end: no error
