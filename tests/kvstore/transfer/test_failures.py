"""Dead, silent, lying and dying peers: clear errors, promptly, nothing half-committed."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kvstore.errors import DeadlineExceeded, TransferFailed
from kvstore.hashing import Namespace, checksum
from kvstore.layout import BlockSpec, KVDtype
from kvstore.transfer import frames
from kvstore.transfer.connection import Connection
from kvstore.transfer.frames import Op, Status
from kvstore.transfer.transports import RangeRead
from kvstore.types import MissReason, TierKind
from tests.conftest import BLOCK, NAMESPACE, StoreFactory, block_bytes, chain_keys
from tests.kvstore.transfer.conftest import EngineFactory, ServerFactory, segment
from tests.processes import ServeProcess

NS = NAMESPACE.id


class FakePeer:
    """A listener whose connections are handled by ``script(sock)`` on a thread."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._script = script
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        except OSError:
            return

    def _handle(self, conn: socket.socket) -> None:
        try:
            self._script(conn)
        except (OSError, struct.error):  # the client went away
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake_peer() -> Iterator[Callable[[Callable[[socket.socket], None]], FakePeer]]:
    peers: list[FakePeer] = []

    def make(script: Callable[[socket.socket], None]) -> FakePeer:
        peers.append(FakePeer(script))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


def read_request(sock: socket.socket) -> tuple[frames.Header, bytes]:
    header = frames.unpack_header(sock.recv(frames.HEADER_BYTES, socket.MSG_WAITALL))
    body = sock.recv(header.payload_bytes, socket.MSG_WAITALL) if header.payload_bytes else b""
    return header, body


def greet(sock: socket.socket) -> None:
    read_request(sock)
    body = frames.pack_str("fake") + frames.pack_str("fake-host") + frames.pack_u64(0)
    sock.sendall(frames.pack_header(Op.HELLO, 1, len(body)) + body)


async def test_a_silent_peer_times_out(fake_peer, make_engine: EngineFactory) -> None:  # type: ignore[no-untyped-def]
    peer = fake_peer(lambda sock: time.sleep(5))
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await make_engine(timeout_s=0.5).connect([peer.address])
    assert time.monotonic() - start < 2


async def test_garbage_is_not_mistaken_for_frames(fake_peer, make_engine: EngineFactory) -> None:  # type: ignore[no-untyped-def]
    peer = fake_peer(lambda sock: sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(64)))
    with pytest.raises(TransferFailed, match="not a Strata data-plane frame"):
        await make_engine().connect([peer.address])


async def test_a_corrupted_range_is_detected(fake_peer, make_engine: EngineFactory) -> None:  # type: ignore[no-untyped-def]
    def script(sock: socket.socket) -> None:
        greet(sock)
        while True:
            header, body = read_request(sock)
            _, _, ranges = frames.unpack_ranges(memoryview(body))
            data = b"".join(bytes(r.length) for r in ranges)
            sums = frames.pack_checksums([checksum(b"\x01" * r.length) for r in ranges])  # lies
            sock.sendall(
                frames.pack_header(Op.READ_RANGES, header.request_id, len(sums)) + sums + data
            )

    peer = await make_engine().connect([fake_peer(script).address])
    with pytest.raises(TransferFailed, match="arrived corrupted"):
        await peer.transport.read_ranges([RangeRead("s", 0, memoryview(bytearray(100)))])


async def test_a_corrupted_block_ends_the_run_there(fake_peer, make_engine: EngineFactory) -> None:  # type: ignore[no-untyped-def]
    blocks = [block_bytes(i) for i in range(3)]

    def script(sock: socket.socket) -> None:
        greet(sock)
        header, _ = read_request(sock)
        hits = [frames.Hit(checksum(b), TierKind.DRAM) for b in blocks]
        meta = frames.pack_hits(BLOCK, hits, None)
        damaged = blocks[1][:10] + b"X" + blocks[1][11:]
        sock.sendall(
            frames.pack_header(Op.READ_KEYS, header.request_id, len(meta))
            + meta
            + blocks[0]
            + damaged
            + blocks[2]
        )
        time.sleep(1)

    peer = await make_engine().connect([fake_peer(script).address])
    dsts = [memoryview(bytearray(BLOCK)) for _ in range(3)]
    read = await peer.transport.read_blocks(NS, chain_keys(3), dsts)
    assert read.num_hits == 1 and read.miss_reason is MissReason.CORRUPTED
    assert bytes(dsts[0]) == blocks[0]


async def test_a_write_with_a_bad_checksum_is_refused_and_not_counted(
    make_server: ServerFactory,
) -> None:
    server = await make_server(segment("kv", 64))
    loop = asyncio.get_running_loop()

    def write() -> frames.Header:
        conn = Connection(server.addresses[0], token="", timeout_s=5)
        try:
            payload = frames.pack_write("kv", 7, 0, [frames.WriteRange(0, 4, checksum(b"good"))])
            conn.send(Op.WRITE_RANGES, payload, [memoryview(b"evil")])
            header = conn.recv_header()
            conn.recv_into(memoryview(bytearray(header.payload_bytes)))
            return header
        finally:
            conn.close()

    header = await loop.run_in_executor(None, write)
    assert header.status is Status.CORRUPTED
    with pytest.raises(TimeoutError):
        await server.wait_layer(7, 0, timeout_s=0.1)


async def test_a_put_cut_off_midway_commits_nothing(
    make_store: StoreFactory, make_server: ServerFactory
) -> None:
    store = await make_store()
    server = await make_server(store=store)
    keys = chain_keys(4)
    loop = asyncio.get_running_loop()

    def half_a_put() -> None:
        conn = Connection(server.addresses[0], token="", timeout_s=5)
        conn.send(
            Op.PUT_KEYS,
            frames.pack_put(NS, keys, None),
            [memoryview(block_bytes(0) + block_bytes(1)[:100])],
        )
        conn.close()  # the client dies mid-stream

    await loop.run_in_executor(None, half_a_put)
    await asyncio.sleep(0.2)
    assert store.lookup(NS, keys).num_blocks == 0
    assert len(store._writes.reservations) == 0
    assert all(u.num_used_slots == 0 for u in store.stats().tiers)


async def test_a_peer_killed_mid_transfer_fails_it_promptly(make_engine: EngineFactory) -> None:
    big = Namespace("kill", BlockSpec(4, 8, 128, KVDtype.FLOAT32, 128))  # 4 MiB blocks
    flags = {
        "store.block_bytes": str(big.block_bytes),
        "tiers.dram.capacity_bytes": str(80 * big.block_bytes),
    }
    from kvstore.client import StoreClient

    with ServeProcess(**flags) as node:
        async with StoreClient(node.address) as client:
            ns = await client.register_namespace(big)
            keys = [i.to_bytes(16, "little") for i in range(64)]
            for i in range(0, 64, 16):
                await client.put(ns, keys[i : i + 16], [bytes([i]) * big.block_bytes] * 16)  # type: ignore[arg-type]
            route = await client.data_plane()
            assert route is not None
            addresses = route.peer.addresses
        engine = make_engine(host_id="elsewhere", timeout_s=3)  # over TCP, as from another host
        peer = await engine.connect(addresses)
        dsts = [memoryview(bytearray(big.block_bytes)) for _ in keys]

        async def keep_reading() -> None:  # 2.5 GiB: still going when the peer dies
            for _ in range(10):
                await peer.transport.read_blocks(ns, keys, dsts)  # type: ignore[arg-type]

        reading = asyncio.create_task(keep_reading())
        await asyncio.sleep(0.05)
        node.kill()  # SIGKILL mid-stream
        start = time.monotonic()
        with pytest.raises(TransferFailed):
            await reading
        assert time.monotonic() - start < 3
        await engine.forget(peer)
        assert engine.num_open_connections() == 0
