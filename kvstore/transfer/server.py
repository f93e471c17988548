"""A node's data-plane server: bulk bytes, separate from gRPC.

One listener per data-plane address (several addresses stand for several NICs). Each
connection first says HELLO; when the cluster has a token, a peer that does not present
it is refused and disconnected. Then requests are served one at a time per connection
(clients open several connections to go in parallel):

* READ_KEYS streams the longest cached run of a key list straight from the pinned slots
  (one round trip; the store's read path counts hits and misses);
* ACQUIRE pins the host-memory run and answers where each block lies in the shared
  arena, for a reader on the same host that copies it itself; RELEASE (or the lease's
  deadline) unpins;
* READ_RANGES and WRITE_RANGES move bytes of registered segments, checksummed per range;
  a write lands in its destination and counts for its (transfer, layer) only once its
  checksum matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.errors import CapacityExceeded, InvalidArgument, KVStoreError, NotFound
from kvstore.hashing import checksum
from kvstore.reads import LeasedRun
from kvstore.reservations import Reservation, ReservationState
from kvstore.store import NodeStore
from kvstore.transfer import frames
from kvstore.transfer.conn import PlainConn, ServerConn, StreamConn
from kvstore.transfer.frames import Op, Status
from kvstore.transfer.segments import SegmentRegistry

logger = logging.getLogger(__name__)

ARENA_SEGMENT = "dram"


@dataclass
class _Lease:
    run: LeasedRun
    deadline_s: float


@dataclass
class LayerArrivals:
    """Which layers of which incoming transfers have landed, and who waits for them."""

    done: dict[int, set[int]] = field(default_factory=dict)
    events: dict[tuple[int, int], asyncio.Event] = field(default_factory=dict)

    def mark(self, transfer_id: int, layer: int) -> None:
        self.done.setdefault(transfer_id, set()).add(layer)
        event = self.events.pop((transfer_id, layer), None)
        if event is not None:
            event.set()

    async def wait(self, transfer_id: int, layer: int, timeout_s: float) -> None:
        if layer in self.done.get(transfer_id, ()):
            return
        event = self.events.setdefault((transfer_id, layer), asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout_s)

    def forget(self, transfer_id: int) -> None:
        self.done.pop(transfer_id, None)
        for key in [k for k in self.events if k[0] == transfer_id]:
            del self.events[key]


class DataPlaneServer:
    def __init__(
        self,
        node_id: str,
        host_id: str,
        store: NodeStore | None,
        segments: SegmentRegistry,
        *,
        tokens: Sequence[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        lease_ttl_s: float = 10.0,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``tokens``: any of them admits a peer (the store and the admin token); none
        configured means no authentication. ``observe(op, seconds)`` times each request."""
        self.node_id = node_id
        self.host_id = host_id
        self.store = store
        self.segments = segments
        self.arrivals = LayerArrivals()
        self._tokens = [t.encode() for t in tokens if t]
        self._ssl = ssl_context
        self._lease_ttl_s = lease_ttl_s
        self._observe = observe
        self._leases: dict[int, _Lease] = {}
        self._writes: dict[int, Reservation] = {}  # open RESERVEs, by id
        self._writable: dict[int, Reservation] = {}  # arena offset of a slot -> its writer
        self._lease_ids = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.addresses: list[str] = []
        self.accepted: Counter[str] = Counter()  # connections accepted per address

    @property
    def num_leases(self) -> int:
        return len(self._leases)

    async def start(self, hosts: Sequence[str], port: int) -> list[str]:
        """Listen on each host (one port; 0 picks one, then reused for the other hosts)."""
        for host in hosts:
            if self._ssl is not None:
                server = await asyncio.start_server(self._on_stream, host, port, ssl=self._ssl)
                self._servers.append(server)
                port = server.sockets[0].getsockname()[1]
            else:
                listener = socket.create_server((host, port))
                listener.setblocking(False)
                self._listeners.append(listener)
                port = listener.getsockname()[1]
                self._spawn(self._accept_loop(listener, f"{host}:{port}"))
            self.addresses.append(f"{host}:{port}")
        self._spawn(self._expire_leases())
        return self.addresses

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for listener in self._listeners:
            listener.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for lease_id in list(self._leases):
            await self._release(lease_id)
        if self.store is not None:
            for reservation in self._writes.values():
                await self.store.abort(reservation)
        self._writes.clear()
        self._writable.clear()

    async def wait_layer(self, transfer_id: int, layer: int, timeout_s: float = 30.0) -> None:
        """Wait until layer ``layer`` of incoming transfer ``transfer_id`` has landed."""
        await self.arrivals.wait(transfer_id, layer, timeout_s)

    # -- connections ------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket, address: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            self.accepted[address] += 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve(PlainConn(sock)))

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(StreamConn(reader, writer))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: ServerConn) -> None:
        header_buf = memoryview(bytearray(frames.HEADER_BYTES))
        greeted = False
        try:
            while True:
                await conn.recv_into(header_buf)
                header = frames.unpack_header(header_buf)
                payload = memoryview(bytearray(header.payload_bytes))
                await conn.recv_into(payload)
                if not greeted:
                    greeted = await self._hello(conn, header, payload)
                    if not greeted:
                        return
                    continue
                await self._dispatch(conn, header, payload)
        except (ConnectionError, frames.FrameError, OSError) as exc:
            logger.debug("data-plane connection ended: %s", exc)
        finally:
            conn.close()

    async def _hello(self, conn: ServerConn, header: frames.Header, payload: memoryview) -> bool:
        if header.op is not Op.HELLO:
            await _reply(conn, header, Status.DENIED, b"say HELLO first")
            return False
        token, _ = frames.unpack_str(payload, 0)
        presented = token.encode()
        if self._tokens and not any(hmac.compare_digest(presented, t) for t in self._tokens):
            await _reply(conn, header, Status.DENIED, b"invalid cluster token")
            return False
        await _reply(conn, header, Status.OK, self._greeting())
        return True

    def _greeting(self) -> bytes:
        """Who we are, and the segments a reader on this host may map (with the file's
        inode and device, so the reader can check it maps the very same file)."""
        shared = []
        for segment in self.segments.segments():
            identity = self.segments.file_identity(segment.name)
            if segment.shm_path is None or identity is None:
                continue
            shared.append(
                frames.pack_str(segment.name)
                + frames.pack_str(str(segment.shm_path))
                + b"".join(frames.pack_u64(v) for v in (segment.size, *identity))
            )
        head = frames.pack_str(self.node_id) + frames.pack_str(self.host_id)
        return head + frames.pack_u64(len(shared)) + b"".join(shared)

    # -- ops --------------------------------------------------------------------------

    async def _dispatch(self, conn: ServerConn, header: frames.Header, payload: memoryview) -> None:
        start = time.perf_counter()
        try:
            await self._handle(conn, header, payload)
        finally:
            if self._observe is not None:
                self._observe(header.op.name, time.perf_counter() - start)

    async def _handle(self, conn: ServerConn, header: frames.Header, payload: memoryview) -> None:
        try:
            if header.op is Op.READ_KEYS:
                await self._read_keys(conn, header, payload)
            elif header.op is Op.READ_RANGES:
                await self._read_ranges(conn, header, payload)
            elif header.op is Op.WRITE_RANGES:
                await self._write_ranges(conn, header, payload)
            elif header.op is Op.ACQUIRE:
                await self._acquire(conn, header, payload)
            elif header.op is Op.RELEASE:
                for lease_id in frames.unpack_ids(payload):
                    await self._release(lease_id)
            elif header.op is Op.PUT_KEYS:
                await self._put_keys(conn, header, payload)
            elif header.op is Op.RESERVE:
                await self._reserve(conn, header, payload)
            elif header.op in (Op.COMMIT, Op.ABORT):
                await self._finish(conn, header, frames.unpack_u64(payload))
            else:
                await _reply(
                    conn, header, Status.INVALID, f"unexpected op {header.op.name}".encode()
                )
        except (KVStoreError, ValueError) as exc:
            await _reply(conn, header, _status_of(exc), str(exc).encode())

    async def _read_keys(
        self, conn: ServerConn, header: frames.Header, payload: memoryview
    ) -> None:
        store = self._require_store()
        ns_id, keys, count_misses = frames.unpack_read(payload)
        namespace = store.namespace(ns_id)
        async with store.read(ns_id, keys, count_misses=count_misses) as run:
            hits = [frames.Hit(v.checksum, v.tier) for v in run.blocks]
            meta = frames.pack_hits(namespace.block_bytes, hits, run.miss_reason)
            head = frames.pack_header(Op.READ_KEYS, header.request_id, len(meta))
            await conn.send([head, meta, *(v.data for v in run.blocks)])

    async def _acquire(self, conn: ServerConn, header: frames.Header, payload: memoryview) -> None:
        store = self._require_store()
        ns_id, keys, end = frames.unpack_keys(payload)
        for done in frames.unpack_ids(payload, end):  # the reader's earlier leases, ended
            await self._release(done)
        arena = store.shared_arena()
        run = store.lease(ns_id, keys) if arena is not None else LeasedRun([], None)
        lease_id = next(self._lease_ids)
        if run.blocks:
            self._leases[lease_id] = _Lease(run, time.monotonic() + self._lease_ttl_s)
        slot_bytes = arena.slot_bytes if arena is not None else 0
        blocks = [
            frames.LeasedBlock(
                ARENA_SEGMENT, m.slot * slot_bytes, m.length_bytes, m.checksum, m.tier
            )
            for m in run.blocks
        ]
        body = frames.pack_lease(lease_id, blocks, run.miss_reason)
        await conn.send([frames.pack_header(Op.ACQUIRE, header.request_id, len(body)), body])

    async def _put_keys(self, conn: ServerConn, header: frames.Header, payload: memoryview) -> None:
        """Receive blocks straight into reserved slots (staging for a disk tier), commit."""
        store = self._require_store()
        ns_id, keys, parent = frames.unpack_put(payload)
        try:
            namespace = store.namespace(ns_id)
        except NotFound:
            await _discard(conn, 0)  # without a namespace the length is unknown: hang up
            raise ConnectionError("put for an unknown namespace") from None
        size = namespace.block_bytes
        try:
            reservation = await store.reserve(ns_id, keys, [parent, *keys[:-1]] if keys else [])
        except KVStoreError:
            await _discard(conn, len(keys) * size)
            raise
        try:
            dsts: list[memoryview | None] = [None] * len(keys)
            for block in reservation.blocks:
                dsts[block.position] = block.buffer
            for dst in dsts:
                if dst is None:
                    await _discard(conn, size)
                else:
                    await conn.recv_into(dst[:size])
            result = await store.commit(reservation)
        except BaseException:
            await store.abort(reservation)
            raise
        body = frames.pack_put_result(*result)
        await conn.send([frames.pack_header(Op.PUT_KEYS, header.request_id, len(body)), body])

    async def _reserve(self, conn: ServerConn, header: frames.Header, payload: memoryview) -> None:
        """Slots for blocks a writer fills with WRITE_RANGES (layer by layer), then COMMITs."""
        store = self._require_store()
        ns_id, keys, parent = frames.unpack_put(payload)
        arena = store.shared_arena()
        reservation = await store.reserve(ns_id, keys, [parent, *keys[:-1]] if keys else [])
        if reservation.staged or arena is None:
            await store.abort(reservation)
            raise InvalidArgument("layer-wise writes need the store's DRAM tier on top")
        reservation_id = next(self._lease_ids)
        slots = [(b.position, b.slot * arena.slot_bytes) for b in reservation.blocks]
        self._writes[reservation_id] = reservation
        for _, offset in slots:
            self._writable[offset] = reservation
        body = frames.pack_reservation(reservation_id, slots)
        await conn.send([frames.pack_header(Op.RESERVE, header.request_id, len(body)), body])

    async def _finish(self, conn: ServerConn, header: frames.Header, reservation_id: int) -> None:
        store = self._require_store()
        reservation = self._writes.pop(reservation_id, None)
        if reservation is None:
            raise NotFound(f"no open reservation {reservation_id}")
        self._forget_writes(reservation)
        if header.op is Op.ABORT:
            await store.abort(reservation)
            await _reply(conn, header, Status.OK, b"")
            return
        result = await store.commit(reservation)
        body = frames.pack_put_result(*result)
        await conn.send([frames.pack_header(Op.COMMIT, header.request_id, len(body)), body])

    def _forget_writes(self, reservation: Reservation) -> None:
        arena = self._require_store().shared_arena()
        if arena is not None:
            for block in reservation.blocks:
                self._writable.pop(block.slot * arena.slot_bytes, None)

    def _check_arena_writes(self, ranges: Sequence[frames.WriteRange]) -> None:
        """Writes into the arena may only fill slots of open reservations: never a
        resident block, never past a block's end."""
        arena = self._require_store().shared_arena()
        slot_bytes = arena.slot_bytes if arena is not None else 1
        for r in ranges:
            start = r.offset - r.offset % slot_bytes
            writer = self._writable.get(start)
            if (
                writer is None
                or writer.state is not ReservationState.OPEN
                or r.offset + r.length > start + writer.namespace.block_bytes
            ):
                raise InvalidArgument(
                    f"arena range [{r.offset}, {r.offset + r.length}) is not in a reserved slot"
                )

    async def _release(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None and self.store is not None:
            await self.store.release_lease(lease.run)

    async def _read_ranges(
        self, conn: ServerConn, header: frames.Header, payload: memoryview
    ) -> None:
        name, ranges = frames.unpack_ranges(payload)
        segment = self.segments.get(name)
        views = [segment.slice(r.offset, r.length) for r in ranges]
        body = frames.pack_checksums([checksum(v) for v in views])
        await conn.send(
            [frames.pack_header(Op.READ_RANGES, header.request_id, len(body)), body, *views]
        )

    async def _write_ranges(
        self, conn: ServerConn, header: frames.Header, payload: memoryview
    ) -> None:
        name, transfer_id, layer, ranges = frames.unpack_write(payload)
        try:
            segment = self.segments.get(name)
            if name == ARENA_SEGMENT:
                self._check_arena_writes(ranges)
            views = [segment.slice(r.offset, r.length) for r in ranges]
        except KVStoreError as exc:
            for r in ranges:  # keep the stream in step: consume the bytes that follow
                await conn.recv_into(memoryview(bytearray(r.length)))
            raise exc
        for view in views:
            await conn.recv_into(view)
        if any(checksum(v) != r.checksum for v, r in zip(views, ranges, strict=True)):
            await _reply(conn, header, Status.CORRUPTED, b"a range arrived with a bad checksum")
            return
        if name != ARENA_SEGMENT:  # a store write is tracked by its reservation instead
            self.arrivals.mark(transfer_id, layer)
        await _reply(conn, header, Status.OK, b"")

    def _require_store(self) -> NodeStore:
        if self.store is None:
            raise NotFound("this process serves segments only, no store")
        return self.store

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._lease_ttl_s / 4))
            now = time.monotonic()
            for reservation_id, reservation in list(self._writes.items()):
                if reservation.state is not ReservationState.OPEN:  # reclaimed: writer gone
                    del self._writes[reservation_id]
                    self._forget_writes(reservation)
            for lease_id, lease in list(self._leases.items()):
                if lease.deadline_s <= now:
                    logger.debug(
                        "lease %d expired; unpinning %d blocks", lease_id, len(lease.run.blocks)
                    )
                    await self._release(lease_id)


def _status_of(exc: Exception) -> Status:
    if isinstance(exc, NotFound):
        return Status.NOT_FOUND
    if isinstance(exc, CapacityExceeded):
        return Status.FULL
    if isinstance(exc, InvalidArgument | ValueError):
        return Status.INVALID
    return Status.ERROR


async def _discard(conn: ServerConn, num_bytes: int) -> None:
    """Read and drop ``num_bytes`` (keeps the stream in step after a refused request)."""
    scratch = memoryview(bytearray(min(num_bytes, 1 << 20)))
    while num_bytes > 0:
        take = min(num_bytes, scratch.nbytes)
        await conn.recv_into(scratch[:take])
        num_bytes -= take


async def _reply(conn: ServerConn, header: frames.Header, status: Status, body: bytes) -> None:
    await conn.send([frames.pack_header(header.op, header.request_id, len(body), status), body])
