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
import itertools
import logging
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.access import Access, Role
from kvstore.errors import CapacityExceeded, InvalidArgument, KVStoreError, NotFound
from kvstore.hashing import checksum
from kvstore.reads import LeasedRun
from kvstore.reservations import Reservation, ReservationState
from kvstore.store import NodeStore
from kvstore.transfer import frames
from kvstore.transfer.conn import PlainConn, ServerConn, StreamConn
from kvstore.transfer.frames import Op, Status
from kvstore.transfer.quotas import ByteQuota
from kvstore.transfer.segments import SegmentRegistry

logger = logging.getLogger(__name__)

ARENA_SEGMENT = "dram"
OPEN = Access()  # no tokens: every peer holds every right
ACCEPT_BACKOFF_S = 0.05  # pause after a failed accept (out of descriptors, say)
MAX_DRAIN_BYTES = 1 << 30  # a refused write declaring more is hung up on, not drained
SCRATCH_BYTES = 256 << 10


class _RateLimitedWarning:
    """One WARNING per ``interval_s`` for a recurring failure, with how many were quiet."""

    def __init__(self, what: str, interval_s: float = 10.0) -> None:
        self._what = what
        self._interval_s = interval_s
        self._last_s = -interval_s
        self._quiet = 0

    def note(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_s < self._interval_s:
            self._quiet += 1
            return
        logger.warning("%s: %s (%d more since the last warning)", self._what, exc, self._quiet)
        self._last_s, self._quiet = now, 0


@dataclass(frozen=True, slots=True)
class _Caller:
    """One connection's identity: who it is (for quotas) and what its token allows."""

    owner: int
    role: Role


@dataclass
class _Lease:
    run: LeasedRun
    deadline_s: float
    owner: int
    spans: dict[int, int]  # arena offset of each leased block -> its length


@dataclass
class _Write:
    reservation: Reservation
    owner: int
    num_bytes: int


# the role each op needs (kvstore.access)
_NEEDED = {
    Op.READ_KEYS: Role.READER,
    Op.READ_RANGES: Role.READER,
    Op.ACQUIRE: Role.READER,
    Op.RELEASE: Role.READER,
    Op.WRITE_RANGES: Role.WRITER,
    Op.PUT_KEYS: Role.WRITER,
    Op.RESERVE: Role.WRITER,
    Op.COMMIT: Role.WRITER,
    Op.ABORT: Role.WRITER,
}


def _new_id() -> int:
    """A lease or reservation id: unguessable, so only its holder can use or end it."""
    return secrets.randbits(63) + 1


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
        access: Access = OPEN,
        ssl_context: ssl.SSLContext | None = None,
        lease_ttl_s: float = 10.0,
        idle_timeout_s: float = 300.0,
        max_connections_per_peer: int = 256,
        quota_fraction: float = 0.5,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``access``: the tokens that admit a peer, and the role each grants (none
        configured: no authentication). ``quota_fraction``: the share of the arena's
        slots all leases together, and all RESERVEs together, may hold (one connection:
        half of that). ``idle_timeout_s`` bounds each request, from
        waiting for its header to its reply (an idle or stalled peer is hung up on);
        ``max_connections_per_peer`` caps open connections per peer address.
        ``observe(op, seconds)`` times each request."""
        self.node_id = node_id
        self.host_id = host_id
        self.store = store
        self.segments = segments
        self.arrivals = LayerArrivals()
        self._access = access
        self._ssl = ssl_context
        self._lease_ttl_s = lease_ttl_s
        self._idle_timeout_s = idle_timeout_s
        self._max_per_peer = max_connections_per_peer
        self._per_peer: Counter[str] = Counter()
        self._accept_errors = _RateLimitedWarning("data-plane accept failed")
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))
        self._observe = observe
        self._leases: dict[int, _Lease] = {}
        self._writes: dict[int, _Write] = {}  # open RESERVEs, by id
        self._writable: dict[int, Reservation] = {}  # arena offset of a slot -> its writer
        self._owners = itertools.count(1)
        arena = store.shared_arena() if store is not None else None
        arena_bytes = arena.capacity_bytes if arena is not None else 0
        self._lease_quota = ByteQuota(arena_bytes, quota_fraction, quota_fraction / 2)
        self._reserve_quota = ByteQuota(arena_bytes, quota_fraction, quota_fraction / 2)
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
        for reservation_id in list(self._writes):
            await self._drop_write(reservation_id, abort=True)
        self._writable.clear()

    async def wait_layer(self, transfer_id: int, layer: int, timeout_s: float = 30.0) -> None:
        """Wait until layer ``layer`` of incoming transfer ``transfer_id`` has landed."""
        await self.arrivals.wait(transfer_id, layer, timeout_s)

    # -- connections ------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket, address: str) -> None:
        """Accept until closed. An accept error (out of descriptors, buffers or memory; a
        peer that gave up in the backlog) costs a short pause, never the listener."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:
                if listener.fileno() < 0:
                    return  # closed under us
                self._accept_errors.note(exc)
                await asyncio.sleep(ACCEPT_BACKOFF_S)
                continue
            self.accepted[address] += 1
            if not self._admit(peer[0]):
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve(PlainConn(sock), peer[0]))

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        if not self._admit(peer):
            writer.close()
            return
        await self._serve(StreamConn(reader, writer), peer)

    def _admit(self, peer: str) -> bool:
        """Count a connection from ``peer``; False when the peer is at its cap."""
        if self._per_peer[peer] >= self._max_per_peer:
            logger.debug("refused a connection from %s: %d open", peer, self._per_peer[peer])
            return False
        self._per_peer[peer] += 1
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: ServerConn, peer: str) -> None:
        header_buf = memoryview(bytearray(frames.HEADER_BYTES))
        caller: _Caller | None = None
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout_s):
                    header, payload = await self._receive(conn, header_buf, caller is not None)
                    if caller is None:
                        caller = await self._hello(conn, header, payload)
                        if caller is None:
                            return
                        continue
                    await self._dispatch(conn, header, payload, caller)
        except frames.FrameError as exc:
            logger.debug("data-plane peer %s sent a malformed frame: %s", peer, exc)
        except TimeoutError:
            logger.debug("data-plane connection from %s idle or stalled; closed", peer)
        except (ConnectionError, OSError) as exc:
            logger.debug("data-plane connection ended: %s", exc)
        except Exception:
            logger.exception("data-plane connection from %s failed", peer)
        finally:
            conn.close()
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]

    async def _receive(
        self, conn: ServerConn, header_buf: memoryview, greeted: bool
    ) -> tuple[frames.Header, memoryview]:
        """One request's header and metadata. Before HELLO a peer may make us allocate
        at most ``MAX_HELLO_BYTES``; a frame over its bound is answered, then dropped."""
        await conn.recv_into(header_buf)
        header = frames.unpack_header(header_buf)
        limit = frames.MAX_METADATA_BYTES if greeted else frames.MAX_HELLO_BYTES
        if header.payload_bytes > limit:
            status = Status.INVALID if greeted else Status.DENIED
            message = f"metadata of {header.payload_bytes} bytes; at most {limit} here"
            await _reply(conn, header, status, message.encode())
            raise frames.FrameError(message)
        payload = memoryview(bytearray(header.payload_bytes))
        await conn.recv_into(payload)
        return header, payload

    async def _hello(
        self, conn: ServerConn, header: frames.Header, payload: memoryview
    ) -> _Caller | None:
        if header.op is not Op.HELLO:
            await _reply(conn, header, Status.DENIED, b"say HELLO first")
            return None
        token, _ = frames.unpack_str(payload, 0)
        role = self._access.role_of(token.encode() if token else None)
        if role is None:
            await _reply(conn, header, Status.DENIED, b"invalid cluster token")
            return None
        await _reply(conn, header, Status.OK, self._greeting())
        return _Caller(next(self._owners), role)

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

    async def _dispatch(
        self, conn: ServerConn, header: frames.Header, payload: memoryview, caller: _Caller
    ) -> None:
        needed = _NEEDED.get(header.op)
        if needed is not None and caller.role < needed:  # data may follow: answer, hang up
            await _reply(
                conn, header, Status.DENIED, f"{header.op.name} needs a writer token".encode()
            )
            raise ConnectionError(f"{header.op.name} refused to a {caller.role.name}")
        start = time.perf_counter()
        try:
            await self._handle(conn, header, payload, caller)
        except frames.FrameError as exc:  # the stream may be out of step: answer, hang up
            await _reply(conn, header, Status.INVALID, str(exc).encode())
            raise
        finally:
            if self._observe is not None:
                self._observe(header.op.name, time.perf_counter() - start)

    async def _handle(
        self, conn: ServerConn, header: frames.Header, payload: memoryview, caller: _Caller
    ) -> None:
        try:
            if header.op is Op.READ_KEYS:
                await self._read_keys(conn, header, payload)
            elif header.op is Op.READ_RANGES:
                await self._read_ranges(conn, header, payload)
            elif header.op is Op.WRITE_RANGES:
                await self._write_ranges(conn, header, payload)
            elif header.op is Op.ACQUIRE:
                await self._acquire(conn, header, payload, caller)
            elif header.op is Op.RELEASE:
                for lease_id in frames.unpack_ids(payload):
                    await self._release(lease_id)
            elif header.op is Op.PUT_KEYS:
                await self._put_keys(conn, header, payload)
            elif header.op is Op.RESERVE:
                await self._reserve(conn, header, payload, caller)
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
        ns_id, keys, count_misses = frames.unpack_read(payload)
        store = self._require_store()
        namespace = store.namespace(ns_id)
        async with store.read(ns_id, keys, count_misses=count_misses) as run:
            hits = [frames.Hit(v.checksum, v.tier) for v in run.blocks]
            meta = frames.pack_hits(namespace.block_bytes, hits, run.miss_reason)
            head = frames.pack_header(Op.READ_KEYS, header.request_id, len(meta))
            await conn.send([head, meta, *(v.data for v in run.blocks)])

    async def _acquire(
        self, conn: ServerConn, header: frames.Header, payload: memoryview, caller: _Caller
    ) -> None:
        """Pin the host-memory run of the keys, up to the caller's quota (a shorter run is
        a normal answer: the reader fetches the rest whole)."""
        ns_id, keys, end = frames.unpack_keys(payload)
        ended = frames.unpack_ids(payload, end)
        store = self._require_store()
        for done in ended:  # the reader's earlier leases, ended
            await self._release(done)
        arena = store.shared_arena()
        block_bytes = store.namespace(ns_id).block_bytes
        allowed = keys[: self._lease_quota.available(caller.owner) // block_bytes]
        run = store.lease(ns_id, allowed) if arena is not None and allowed else None
        run = run if run is not None else LeasedRun([], None)
        lease_id = _new_id()
        blocks = [
            frames.LeasedBlock(ARENA_SEGMENT, m.slot, m.length_bytes, m.checksum, m.tier)
            for m in run.blocks
        ]
        if run.blocks:
            spans = {b.offset: b.length for b in blocks}
            deadline_s = time.monotonic() + self._lease_ttl_s
            self._leases[lease_id] = _Lease(run, deadline_s, caller.owner, spans)
            self._lease_quota.take(caller.owner, _bytes_of(run))
        body = frames.pack_lease(lease_id, blocks, run.miss_reason)
        await conn.send([frames.pack_header(Op.ACQUIRE, header.request_id, len(body)), body])

    async def _put_keys(self, conn: ServerConn, header: frames.Header, payload: memoryview) -> None:
        """Receive blocks straight into reserved slots (staging for a disk tier), commit."""
        ns_id, keys, parent = frames.unpack_put(payload)
        store = self._require_store()
        try:
            namespace = store.namespace(ns_id)
        except NotFound:
            raise ConnectionError("put for an unknown namespace") from None
        size = namespace.block_bytes
        try:
            reservation = await store.reserve(ns_id, keys, [parent, *keys[:-1]] if keys else [])
        except KVStoreError:
            await _discard(conn, len(keys) * size, self._scratch)
            raise
        try:
            dsts: list[memoryview | None] = [None] * len(keys)
            for block in reservation.blocks:
                dsts[block.position] = block.buffer
            for dst in dsts:
                if dst is None:
                    await _discard(conn, size, self._scratch)
                else:
                    await conn.recv_into(dst[:size])
            result = await store.commit(reservation)
        except BaseException:
            await store.abort(reservation)
            raise
        body = frames.pack_put_result(*result)
        await conn.send([frames.pack_header(Op.PUT_KEYS, header.request_id, len(body)), body])

    async def _reserve(
        self, conn: ServerConn, header: frames.Header, payload: memoryview, caller: _Caller
    ) -> None:
        """Slots for blocks a writer fills with WRITE_RANGES (layer by layer), then COMMITs;
        within the caller's quota, so that open reservations never hold the whole arena."""
        ns_id, keys, parent = frames.unpack_put(payload)
        store = self._require_store()
        arena = store.shared_arena()
        if arena is None:
            raise InvalidArgument("layer-wise writes need the store's DRAM tier on top")
        wanted = len(keys) * store.namespace(ns_id).block_bytes
        if not self._reserve_quota.can_take(caller.owner, wanted):
            raise CapacityExceeded(
                f"{len(keys)} blocks ({wanted} bytes) would exceed this client's share of"
                f" reserved arena bytes ({self._reserve_quota.available(caller.owner)} left)"
            )
        reservation = await store.reserve(ns_id, keys, [parent, *keys[:-1]] if keys else [])
        if reservation.staged:
            await store.abort(reservation)
            raise InvalidArgument("layer-wise writes need the store's DRAM tier on top")
        reserved = len(reservation.blocks) * reservation.namespace.block_bytes
        if not self._reserve_quota.can_take(caller.owner, reserved):
            await store.abort(reservation)  # others reserved meanwhile
            raise CapacityExceeded("this client's share of reserved arena bytes is taken")
        self._reserve_quota.take(caller.owner, reserved)
        reservation_id = _new_id()
        slots = [(b.position, int(b.slot)) for b in reservation.blocks]
        self._writes[reservation_id] = _Write(reservation, caller.owner, reserved)
        for _, offset in slots:
            self._writable[offset] = reservation
        body = frames.pack_reservation(reservation_id, slots)
        await conn.send([frames.pack_header(Op.RESERVE, header.request_id, len(body)), body])

    async def _finish(self, conn: ServerConn, header: frames.Header, reservation_id: int) -> None:
        store = self._require_store()
        write = self._writes.get(reservation_id)
        if write is None:
            raise NotFound(f"no open reservation {reservation_id}")
        if header.op is Op.ABORT:
            await self._drop_write(reservation_id, abort=True)
            await _reply(conn, header, Status.OK, b"")
            return
        await self._drop_write(reservation_id, abort=False)
        result = await store.commit(write.reservation)
        body = frames.pack_put_result(*result)
        await conn.send([frames.pack_header(Op.COMMIT, header.request_id, len(body)), body])

    async def _drop_write(self, reservation_id: int, *, abort: bool) -> None:
        """Forget an open RESERVE (and give its slots back to the quota); abort it too."""
        write = self._writes.pop(reservation_id)
        self._forget_writes(write.reservation)
        self._reserve_quota.give_back(write.owner, write.num_bytes)
        if abort and self.store is not None:
            await self.store.abort(write.reservation)

    def _forget_writes(self, reservation: Reservation) -> None:
        for block in reservation.blocks:
            self._writable.pop(block.slot, None)

    def _check_arena_writes(self, ranges: Sequence[frames.WriteRange]) -> None:
        """Writes into the arena may only fill slots of open reservations: never a
        resident block, never past a block's end."""
        arena = self._require_store().shared_arena()
        for r in ranges:
            start = arena.slots.slot_containing(r.offset) if arena is not None else None
            writer = self._writable.get(start) if start is not None else None
            if (
                start is None
                or writer is None
                or writer.state is not ReservationState.OPEN
                or r.offset + r.length > start + writer.namespace.block_bytes
            ):
                raise InvalidArgument(
                    f"arena range [{r.offset}, {r.offset + r.length}) is not in a reserved slot"
                )

    async def _release(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        self._lease_quota.give_back(lease.owner, _bytes_of(lease.run))
        if self.store is not None:
            await self.store.release_lease(lease.run)

    async def _read_ranges(
        self, conn: ServerConn, header: frames.Header, payload: memoryview
    ) -> None:
        name, lease_id, ranges = frames.unpack_ranges(payload)
        segment = self.segments.get(name)
        if name == ARENA_SEGMENT:
            self._check_leased(lease_id, ranges)
        views = [segment.slice(r.offset, r.length) for r in ranges]
        body = frames.pack_checksums([checksum(v) for v in views])
        await conn.send(
            [frames.pack_header(Op.READ_RANGES, header.request_id, len(body)), body, *views]
        )

    def _check_leased(self, lease_id: int, ranges: Sequence[frames.Range]) -> None:
        """Ranges of the arena may be read only within blocks of a lease the caller holds
        (its id is the capability): never free slots, never other callers' blocks."""
        lease = self._leases.get(lease_id)
        arena = self._require_store().shared_arena()
        for r in ranges:
            start = arena.slots.slot_containing(r.offset) if arena is not None else None
            length = lease.spans.get(start) if lease is not None and start is not None else None
            if start is None or length is None or r.offset + r.length > start + length:
                raise InvalidArgument(
                    f"arena range [{r.offset}, {r.offset + r.length}) is not in a block"
                    " leased to this reader"
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
        except KVStoreError:
            # keep the stream in step by draining what follows into a fixed buffer, unless
            # the declared lengths are past any segment: then the peer is hung up on
            declared = sum(r.length for r in ranges)
            if declared > MAX_DRAIN_BYTES:
                raise frames.FrameError(f"{declared} bytes of refused ranges") from None
            await _discard(conn, declared, self._scratch)
            raise
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
            for reservation_id, write in list(self._writes.items()):
                if write.reservation.state is not ReservationState.OPEN:  # reclaimed
                    await self._drop_write(reservation_id, abort=False)
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


async def _discard(conn: ServerConn, num_bytes: int, scratch: memoryview) -> None:
    """Read and drop ``num_bytes`` into ``scratch`` (keeps the stream in step after a
    refused request without allocating what the peer declared)."""
    while num_bytes > 0:
        take = min(num_bytes, scratch.nbytes)
        await conn.recv_into(scratch[:take])
        num_bytes -= take


async def _reply(conn: ServerConn, header: frames.Header, status: Status, body: bytes) -> None:
    await conn.send([frames.pack_header(header.op, header.request_id, len(body), status), body])


def _bytes_of(run: LeasedRun) -> int:
    """Arena bytes a lease pins (what the lease quota counts)."""
    return sum(m.length_bytes for m in run.blocks)
