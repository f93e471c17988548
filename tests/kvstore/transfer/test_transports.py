"""Each transport, path selection, striping, layer-wise writes, auth and TLS."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest

from kvstore.access import Access
from kvstore.errors import InvalidArgument, NotFound, TransferFailed, Unauthenticated
from kvstore.transfer.segments import SegmentRegistry
from kvstore.transfer.transports import RangeRead, RangeWrite, TransportKind
from kvstore.types import MissReason, TierKind
from tests.certs import self_signed
from tests.conftest import BLOCK, NAMESPACE, StoreFactory, block_bytes, chain_keys
from tests.kvstore.transfer.conftest import HOST, EngineFactory, ServerFactory, segment

NS = NAMESPACE.id
ODD_SIZES = [1, 4095, 4097, 65536 + 3, (1 << 20) + 7, 5]


def patterned(size: int, seed: int) -> memoryview:
    return memoryview(
        bytes((i * 31 + seed) % 251 for i in range(min(size, 4096))) * (size // 4096 + 1)
    )[:size]


async def test_tcp_ranges_with_odd_sizes_striped_over_every_address(
    make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    """Stand-in for two NICs: the server listens on 127.0.0.1 and 127.0.0.2."""
    total = sum(ODD_SIZES) + 100
    source = segment("src", total)
    offsets = []
    pos = 0
    for i, size in enumerate(ODD_SIZES):
        source.view[pos : pos + size] = patterned(size, i)
        offsets.append(pos)
        pos += size + 1
    server = await make_server(source, segment("dst", total), hosts=("127.0.0.1", "127.0.0.2"))
    engine = make_engine(stripes=3)
    peer = await engine.connect(server.addresses)
    assert peer.kind is TransportKind.TCP and peer.node_id == "server"
    dsts = [memoryview(bytearray(size)) for size in ODD_SIZES]
    await peer.transport.read_ranges(
        [RangeRead("src", off, dst) for off, dst in zip(offsets, dsts, strict=True)]
    )
    for i, dst in enumerate(dsts):
        assert bytes(dst) == bytes(patterned(ODD_SIZES[i], i))
    writes = [
        RangeWrite("dst", off, patterned(size, 100 + i))
        for i, (off, size) in enumerate(zip(offsets, ODD_SIZES, strict=True))
    ]
    await peer.transport.write_ranges(1, 0, writes)
    target = server.segments.get("dst")
    for write in writes:
        assert bytes(target.slice(write.offset, write.src.nbytes)) == bytes(write.src)
    assert set(server.accepted) == set(server.addresses)  # both "NICs" carried stripes


async def test_out_of_bounds_and_unknown_segments_are_refused(
    make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    server = await make_server(segment("small", 100))
    peer = await make_engine().connect(server.addresses)
    with pytest.raises(InvalidArgument, match="outside segment"):
        await peer.transport.read_ranges([RangeRead("small", 90, memoryview(bytearray(20)))])
    with pytest.raises(NotFound, match="no segment named 'nope'"):
        await peer.transport.read_ranges([RangeRead("nope", 0, memoryview(bytearray(1)))])
    with pytest.raises(NotFound):
        await peer.transport.write_ranges(1, 0, [RangeWrite("nope", 0, memoryview(b"abc"))])
    # the connection stayed in step: the next request works
    dst = memoryview(bytearray(10))
    await peer.transport.read_ranges([RangeRead("small", 0, dst)])


async def test_blocks_by_key_over_tcp_and_shared_memory(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    store = await make_store()
    keys = chain_keys(6)
    await store.put(NS, keys[:4], [block_bytes(i) for i in range(4)])
    server = await make_server(store=store)
    peers = [await make_engine(host_id=h).connect(server.addresses) for h in ("host-b", HOST)]
    assert [p.kind for p in peers] == [TransportKind.TCP, TransportKind.SHM]
    for peer in peers:
        dsts = [memoryview(bytearray(BLOCK)) for _ in keys]
        read = await peer.transport.read_blocks(NS, keys, dsts)
        assert read.num_hits == 4 and read.tiers == [TierKind.DRAM] * 4
        assert read.miss_reason is MissReason.NEVER_STORED
        assert [bytes(d) for d in dsts[:4]] == [block_bytes(i) for i in range(4)]
    for i, peer in enumerate(peers):
        block = memoryview(block_bytes(4 + i))
        result = await peer.transport.write_blocks(NS, keys[4 + i : 5 + i], [block], keys[3 + i])
        assert result.num_stored == 1
    await asyncio.sleep(0.05)  # fire-and-forget lease releases land
    assert all(m.num_readers == 0 for m in store.index.blocks())
    assert store.lookup(NS, keys).num_blocks == 6


async def test_shared_memory_reads_the_rest_from_a_slower_tier(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    store = await make_store()
    keys = chain_keys(4)
    await store.put(NS, keys, [block_bytes(i) for i in range(4)])
    await store.evict(TierKind.DRAM, 2)  # the tail sinks to NVMe
    assert store.lookup(NS, keys).tiers == [
        TierKind.DRAM,
        TierKind.DRAM,
        TierKind.NVME,
        TierKind.NVME,
    ]
    server = await make_server(store=store)
    peer = await make_engine(host_id=HOST).connect(server.addresses)
    dsts = [memoryview(bytearray(BLOCK)) for _ in keys]
    read = await peer.transport.read_blocks(NS, keys, dsts)
    assert read.num_hits == 4 and read.tiers[2:] == [TierKind.NVME, TierKind.NVME]
    assert [bytes(d) for d in dsts] == [block_bytes(i) for i in range(4)]


async def test_path_selection(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    store = await make_store()
    server = await make_server(store=store, node_id="n1")
    same_process = make_engine(host_id=HOST, local_node_id="n1", registry=server.segments)
    same_process.local_arrived = server.arrivals.mark
    assert (await same_process.connect(server.addresses)).kind is TransportKind.LOCAL
    assert (await make_engine(host_id=HOST).connect(server.addresses)).kind is TransportKind.SHM
    no_shm = make_engine(host_id=HOST, allow_shm=False)
    assert (await no_shm.connect(server.addresses)).kind is TransportKind.TCP
    assert (
        await make_engine(host_id="elsewhere").connect(server.addresses)
    ).kind is TransportKind.TCP


async def test_a_same_host_id_without_the_same_file_is_not_shm(
    make_server: ServerFactory, make_engine: EngineFactory, tmp_path: Path
) -> None:
    """Another host with the same host id (a cloned boot id), or another container:
    the file at that path is not the peer's arena, so shm must not be used."""
    fake = tmp_path / "arena"
    fake.write_bytes(bytes(4096))
    from kvstore.transfer.segments import Segment

    server = await make_server(Segment("dram", memoryview(bytearray(4096)), fake))
    fake.rename(tmp_path / "moved")  # (kept, so its inode cannot be reused)
    fake.write_bytes(bytes(4096))  # same path, another file
    assert (await make_engine(host_id=HOST).connect(server.addresses)).kind is TransportKind.TCP


async def test_local_transport_copies_between_segments() -> None:
    from kvstore.transfer.local import LocalTransport

    registry = SegmentRegistry()
    registry.register(segment("a", 64, fill=7))
    registry.register(segment("b", 64))
    arrived: list[tuple[int, int]] = []
    local = LocalTransport(registry, lambda t, layer: arrived.append((t, layer)), None)
    dst = memoryview(bytearray(8))
    await local.read_ranges([RangeRead("a", 4, dst)])
    assert bytes(dst) == bytes([7]) * 8
    await local.write_ranges(5, 2, [RangeWrite("b", 60, memoryview(b"xyzw"))])
    assert bytes(registry.get("b").view[60:]) == b"xyzw" and arrived == [(5, 2)]


async def test_layer_wise_writes_land_one_layer_at_a_time(
    make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    """A producer sends each layer as it is computed (one write task per layer); the
    receiving data plane sees layer i complete before layer i + 1 is even sent."""
    layers, layer_bytes, transfer_id = 8, 256 << 10, 11
    server = await make_server(segment("kv", layers * layer_bytes))
    engine = make_engine()
    peer = await engine.connect(server.addresses)
    seen: list[int] = []

    async def consumer() -> None:
        for layer in range(layers):
            await server.wait_layer(transfer_id, layer, timeout_s=5)
            view = server.segments.get("kv").slice(layer * layer_bytes, layer_bytes)
            assert bytes(view[:4]) == bytes([layer]) * 4
            seen.append(layer)

    waiting = asyncio.create_task(consumer())
    for layer in range(layers):
        data = memoryview(bytes([layer]) * layer_bytes)
        write = RangeWrite("kv", layer * layer_bytes, data)
        await peer.transport.write_ranges(transfer_id, layer, [write])
        await asyncio.sleep(0.01)  # the "compute" of the next layer
        assert len(seen) >= layer  # every earlier layer has been seen complete
    await asyncio.wait_for(waiting, 5)
    assert seen == list(range(layers))


async def test_a_consumer_waits_for_a_layer_not_yet_sent(
    make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    server = await make_server(segment("kv", 1024))
    with pytest.raises(TimeoutError):
        await server.wait_layer(42, 0, timeout_s=0.1)


async def test_tokens_admit_peers(make_server: ServerFactory, make_engine: EngineFactory) -> None:
    server = await make_server(
        segment("s", 16), access=Access(admin_token="admin-token", writer_token="store-token")
    )
    with pytest.raises(Unauthenticated, match="invalid cluster token"):
        await make_engine(token="wrong").connect(server.addresses)
    with pytest.raises(Unauthenticated):
        await make_engine().connect(server.addresses)
    for token in ("store-token", "admin-token"):
        peer = await make_engine(token=token).connect(server.addresses)
        await peer.transport.read_ranges([RangeRead("s", 0, memoryview(bytearray(16)))])


async def test_tls_data_plane(
    make_server: ServerFactory, make_engine: EngineFactory, tmp_path: Path
) -> None:
    cert = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert.cert, cert.key)
    source = segment("s", 3 << 20, fill=9)
    server = await make_server(source, segment("d", 1 << 20), ssl_context=server_context)
    client_context = ssl.create_default_context(cafile=str(cert.cert))
    peer = await make_engine(ssl_context=client_context, stripes=2).connect(server.addresses)
    dst = memoryview(bytearray(3 << 20))
    await peer.transport.read_ranges(
        [RangeRead("s", 0, dst[: 1 << 20]), RangeRead("s", 1 << 20, dst[1 << 20 :])]
    )
    assert bytes(dst) == bytes([9]) * (3 << 20)
    await peer.transport.write_ranges(1, 0, [RangeWrite("d", 0, memoryview(b"tls!"))])
    assert bytes(server.segments.get("d").view[:4]) == b"tls!"
    with pytest.raises(TransferFailed):  # plaintext against a TLS listener
        await make_engine(timeout_s=1).connect(server.addresses)


async def test_no_connection_or_descriptor_leaks(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    store = await make_store()
    await store.put(NS, chain_keys(2), [block_bytes(0), block_bytes(1)])
    server = await make_server(segment("s", 1 << 20), store=store)
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        engine = make_engine(stripes=4)
        peer = await engine.connect(server.addresses)
        for _ in range(5):
            await peer.transport.read_ranges(
                [RangeRead("s", i * 1024, memoryview(bytearray(1024))) for i in range(8)]
            )
            with pytest.raises(NotFound):
                await peer.transport.read_ranges(
                    [RangeRead("missing", 0, memoryview(bytearray(1)))]
                )
            await peer.transport.read_blocks(NS, chain_keys(2), [memoryview(bytearray(BLOCK))] * 2)
        assert engine.num_open_connections() <= 4 + 1  # the stripes and the loop's control
        await engine.close()
        assert engine.num_open_connections() == 0
    await asyncio.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2  # the server's own sockets may linger
    assert all(m.num_readers == 0 for m in store.index.blocks())  # every lease ended
