"""Ops registered on a segment server: a server without the store's ops (an engine
worker's data plane) answers them with a clear error and keeps the connection; an op is
registered once; the role an op was registered with is enforced."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.access import Access, Role
from kvstore.errors import InvalidArgument, NotFound, Unauthenticated
from kvstore.server.dataplane import serve_store
from kvstore.transfer import frames
from kvstore.transfer.conn import ServerConn
from kvstore.transfer.connection import Connection
from kvstore.transfer.frames import Op
from kvstore.transfer.ops import Request
from kvstore.transfer.replies import reply_ok
from kvstore.transfer.segments import SegmentRegistry
from kvstore.transfer.server import SegmentServer
from kvstore.transfer.transports import RangeRead
from tests.conftest import BLOCK, NAMESPACE, StoreFactory, chain_keys
from tests.kvstore.transfer.conftest import EngineFactory, ServerFactory, segment

NS = NAMESPACE.id
KEYS = chain_keys(2)
STORE_OPS = [
    (Op.READ_KEYS, frames.pack_read(NS, KEYS, count_misses=True)),
    (Op.ACQUIRE, frames.pack_keys(NS, KEYS) + frames.pack_ids([])),
    (Op.RESERVE, frames.pack_put(NS, KEYS, None)),
    (Op.COMMIT, frames.pack_u64(1)),
    (Op.ABORT, frames.pack_u64(1)),
]


async def _echo(conn: ServerConn, request: Request) -> None:
    await reply_ok(conn, request.header, bytes(request.payload))


@pytest.mark.parametrize(("op", "payload"), STORE_OPS, ids=[op.name for op, _ in STORE_OPS])
async def test_a_segment_server_refuses_a_store_op_and_keeps_the_connection(
    make_server: ServerFactory, op: Op, payload: bytes
) -> None:
    server = await make_server(segment("kv", 64, fill=3))

    def ask() -> bytes:
        conn = Connection(server.addresses[0], token="", timeout_s=3)
        try:
            with pytest.raises(NotFound, match=f"operation {op.name} is not served here"):
                conn.call(op, payload)
            conn.call(Op.READ_RANGES, frames.pack_ranges("kv", [frames.Range(0, 4)]))
            data = memoryview(bytearray(4))
            conn.recv_into(data)  # the same connection goes on
            return bytes(data)
        finally:
            conn.close()

    assert await asyncio.to_thread(ask) == bytes([3]) * 4


async def test_a_store_read_from_an_engine_data_plane_fails_clearly(
    make_server: ServerFactory, make_engine: EngineFactory
) -> None:
    """What a client that took a decode worker's data plane for a store node sees. A put's
    blocks follow its request, in a size only a store knows: the server answers, then
    drains them before it hangs up, so the client reads the answer, not a reset."""
    server = await make_server(segment("kv", 64, fill=5))
    peer = await make_engine().connect(server.addresses)
    with pytest.raises(NotFound, match="operation READ_KEYS is not served here"):
        await peer.transport.read_blocks(NS, KEYS, [memoryview(bytearray(BLOCK))] * 2)
    big = [memoryview(bytearray(8 << 20))] * 4  # more than the sockets buffer
    with pytest.raises(NotFound, match="operation PUT_KEYS is not served here"):
        await peer.transport.write_blocks(NS, chain_keys(4), big, None)
    dst = memoryview(bytearray(8))
    await peer.transport.read_ranges([RangeRead("kv", 0, dst)])  # segments still served
    assert bytes(dst) == bytes([5]) * 8


async def test_an_op_is_registered_once(make_store: StoreFactory) -> None:
    server = SegmentServer("n", "h", segment_registry())
    server.register(Op.COMMIT, _echo, role=Role.WRITER)
    with pytest.raises(InvalidArgument, match="COMMIT is already served"):
        server.register(Op.COMMIT, _echo, role=Role.READER)
    with pytest.raises(InvalidArgument, match="READ_RANGES is already served"):
        server.register(Op.READ_RANGES, _echo, role=Role.READER)
    with pytest.raises(InvalidArgument, match="HELLO"):
        server.register(Op.HELLO, _echo, role=Role.READER)
    store = await make_store()
    with pytest.raises(InvalidArgument, match="COMMIT is already served"):
        serve_store(server, store)  # the store's ops include COMMIT


async def test_the_rights_table_applies_to_registered_ops(make_server: ServerFactory) -> None:
    access = Access(admin_token="admin", writer_token="writer", reader_token="reader")
    server = await make_server(segment("kv", 64), access=access)
    server.register(Op.COMMIT, _echo, role=Role.WRITER)
    server.register(Op.READ_KEYS, _echo, role=Role.READER)

    def call(token: str, op: Op) -> bytes:
        conn = Connection(server.addresses[0], token=token, timeout_s=3)
        try:
            return bytes(conn.call(op, b"ping")[1])
        finally:
            conn.close()

    with pytest.raises(Unauthenticated, match="COMMIT needs a writer token"):
        await asyncio.to_thread(call, "reader", Op.COMMIT)
    assert await asyncio.to_thread(call, "reader", Op.READ_KEYS) == b"ping"
    assert await asyncio.to_thread(call, "writer", Op.COMMIT) == b"ping"
    with pytest.raises(Unauthenticated):
        await asyncio.to_thread(call, "wrong", Op.READ_KEYS)


def segment_registry() -> SegmentRegistry:
    registry = SegmentRegistry()
    registry.register(segment("kv", 64))
    return registry
