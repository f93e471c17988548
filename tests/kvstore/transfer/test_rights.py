"""Rights on the data plane: range reads of the arena only within leased blocks, reader
tokens that cannot write, and quotas on leases and reservations."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kvstore.access import Access
from kvstore.errors import CapacityExceeded, Unauthenticated
from kvstore.server.dataplane import ARENA_SEGMENT
from kvstore.transfer import frames
from kvstore.transfer.frames import Op, Status
from kvstore.transfer.transports import RangeRead
from tests.conftest import BLOCK, NAMESPACE, StoreFactory, block_bytes, chain_keys
from tests.kvstore.transfer.conftest import EngineFactory, ServerFactory

NS = NAMESPACE.id
ACCESS = Access(admin_token="admin", writer_token="writer", reader_token="reader")


def _call(
    address: str, token: str, op: Op, payload: bytes, data: bytes = b""
) -> tuple[Status, bytes]:
    """One request on a fresh connection: the reply's status and metadata."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=3) as sock:
        hello = frames.pack_str(token)
        sock.sendall(frames.pack_header(Op.HELLO, 1, len(hello)) + hello)
        header = frames.unpack_header(sock.recv(frames.HEADER_BYTES, socket.MSG_WAITALL))
        body = sock.recv(header.payload_bytes, socket.MSG_WAITALL)
        if header.status is not Status.OK:
            return header.status, body
        sock.sendall(frames.pack_header(op, 2, len(payload)) + payload + data)
        header = frames.unpack_header(sock.recv(frames.HEADER_BYTES, socket.MSG_WAITALL))
        return header.status, sock.recv(header.payload_bytes, socket.MSG_WAITALL)


async def test_the_arena_is_not_readable_at_arbitrary_offsets(
    make_store: StoreFactory, make_server: ServerFactory
) -> None:
    store = await make_store()
    await store.put(NS, chain_keys(2), [block_bytes(0), block_bytes(1)])
    server = await make_server(store=store)
    address = server.addresses[0]
    for ranges in ([frames.Range(0, BLOCK)], [frames.Range(BLOCK, 16)]):
        status, body = await asyncio.to_thread(
            _call, address, "", Op.READ_RANGES, frames.pack_ranges(ARENA_SEGMENT, ranges)
        )
        assert status is Status.INVALID and b"not in a block leased" in body


async def test_a_lease_opens_its_blocks_and_nothing_else(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    store = await make_store()
    keys = chain_keys(3)
    await store.put(NS, keys, [block_bytes(i) for i in range(3)])
    server = await make_server(store=store)
    peer = await make_engine().connect(server.addresses)
    lessor = peer.transport
    lease = await lessor.acquire(NS, keys[:1])
    lease_id, block = lease.lease_id, lease.blocks[0]
    dst = memoryview(bytearray(block.length))
    await lessor.read_ranges([RangeRead(ARENA_SEGMENT, block.offset, dst, lease_id)])
    assert bytes(dst) == block_bytes(0)
    other = next(m.slot for m in store.index.blocks() if m.key == keys[1])
    for read in (
        RangeRead(ARENA_SEGMENT, other, dst, lease_id),  # not this lease's (a slot is an offset)
        RangeRead(ARENA_SEGMENT, block.offset, dst, lease_id + 1),  # someone else's id
        RangeRead(ARENA_SEGMENT, block.offset + 8, dst, lease_id),  # runs past the block
    ):
        with pytest.raises(Exception, match="not in a block leased"):
            await lessor.read_ranges([read])
    lessor.release(lease)
    await asyncio.sleep(0.05)
    with pytest.raises(Exception, match="not in a block leased"):
        await lessor.read_ranges([RangeRead(ARENA_SEGMENT, block.offset, dst, lease_id)])


async def test_a_reader_token_cannot_write(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    store = await make_store()
    keys = chain_keys(2)
    await store.put(NS, keys[:1], [block_bytes(0)])
    server = await make_server(store=store, access=ACCESS)
    address = server.addresses[0]
    reader = await make_engine(token="reader").connect(server.addresses)
    dsts = [memoryview(bytearray(BLOCK)) for _ in keys]
    assert (await reader.transport.read_blocks(NS, keys, dsts)).num_hits == 1
    with pytest.raises(Unauthenticated, match="needs a writer token"):
        await reader.transport.write_blocks(NS, keys[1:], [memoryview(block_bytes(1))], keys[0])
    for op, payload in (
        (Op.RESERVE, frames.pack_put(NS, keys[1:], keys[0])),
        (Op.WRITE_RANGES, frames.pack_write(ARENA_SEGMENT, 1, 0, [])),
        (Op.COMMIT, frames.pack_u64(1)),
    ):
        status, _ = await asyncio.to_thread(_call, address, "reader", op, payload)
        assert status is Status.DENIED
    assert (await asyncio.to_thread(_call, address, "wrong", Op.READ_KEYS, b""))[0] is (
        Status.DENIED
    )
    assert store.lookup(NS, keys).num_blocks == 1
    writer = await make_engine(token="writer").connect(server.addresses)
    result = await writer.transport.write_blocks(
        NS, keys[1:], [memoryview(block_bytes(1))], keys[0]
    )
    assert result.num_stored == 1


async def test_reservations_leave_slots_for_other_writers(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    """Many RESERVEs from many connections hold at most half of the arena: a put still
    finds room while they are open."""
    store = await make_store(**{"tiers.nvme.enabled": "false"})
    server = await make_server(store=store)
    held = 0
    for i in range(8):
        peer = await make_engine().connect(server.addresses)
        try:
            slots = await peer.transport.reserve(NS, chain_keys(2, start=1000 * (i + 1)), None)
            held += len(slots.slots)
        except CapacityExceeded:
            pass
    assert held == 4  # half of the 8 slots
    await store.put(NS, chain_keys(4), [block_bytes(i) for i in range(4)])
    assert store.lookup(NS, chain_keys(4)).num_blocks == 4


async def test_one_connection_leases_at_most_its_share(
    make_store: StoreFactory, make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    store = await make_store()
    keys = chain_keys(6)
    await store.put(NS, keys, [block_bytes(i) for i in range(6)])
    server = await make_server(store=store)
    peer = await make_engine().connect(server.addresses)
    first = await peer.transport.acquire(NS, keys)
    second = await peer.transport.acquire(NS, keys)
    assert (len(first.blocks), len(second.blocks)) == (2, 0)  # a quarter of 8 slots, then nothing
    assert sum(m.num_readers for m in store.index.blocks()) == 2
