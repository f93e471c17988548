"""Transports: how bytes reach a peer, behind one small protocol.

    local   same process: a memory copy between registered segments (or the local store)
    shm     same host: map the peer's shared arena and copy out of it; one small
            round trip on the data plane pins the blocks (a lease) and says where they are
    tcp     other hosts: the data plane; ranges striped over several pooled connections
            and over every address of the peer; bytes land with ``recv_into``

RDMA or NVLink transports would implement the same four methods: register the local
segments with the NIC or GPU, and post one-sided reads and writes of (segment, offset,
length) ranges instead of copying through sockets.

Every block read by key is checked against its checksum on arrival; a block that does
not match ends the run there and is never returned. Blocking socket work runs on the
engine's worker threads, which release the GIL in every send and receive.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from kvstore.errors import TransferFailed
from kvstore.hashing import checksum
from kvstore.reservations import PutResult
from kvstore.transfer import frames
from kvstore.transfer.connection import (
    Connection,
    ConnectionPool,
    LoopChannel,
    SharedSegmentInfo,
)
from kvstore.transfer.frames import Op
from kvstore.transfer.segments import SegmentRegistry, SharedMappings
from kvstore.types import BlockKey, MissReason, NamespaceId, TierKind

logger = logging.getLogger(__name__)
T = TypeVar("T")

SMALL_READ_BYTES = 1 << 20  # reads up to this size go through the loop, not a worker
RELEASE_DELAY_S = 0.002  # how long an ended lease may wait for the next acquire


class TransportKind(enum.Enum):
    LOCAL = "local"
    SHM = "shm"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class RangeRead:
    segment: str
    offset: int
    dst: memoryview  # receives dst.nbytes bytes from the peer's segment at offset


@dataclass(frozen=True, slots=True)
class RangeWrite:
    segment: str
    offset: int
    src: memoryview  # src.nbytes bytes to the peer's segment at offset


class BlockRead(NamedTuple):
    num_hits: int
    tiers: list[TierKind]
    miss_reason: MissReason | None  # why the run ended (None: every key hit)


class WriteSlots(NamedTuple):
    reservation_id: int
    slots: list[tuple[int, int]]  # (position in the key list, arena offset) per block to write


class Transport(Protocol):
    kind: TransportKind

    async def read_blocks(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], dsts: Sequence[memoryview]
    ) -> BlockRead:
        """The peer's longest cached run of ``keys``, verified, into ``dsts``."""
        ...

    async def write_blocks(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[memoryview],
        parent: BlockKey | None,
    ) -> PutResult:
        """Store a chain of blocks on the peer's store (a put)."""
        ...

    async def reserve(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], parent: BlockKey | None
    ) -> WriteSlots:
        """Slots in the peer store's arena for the missing blocks of a chain: fill them
        with ``write_ranges`` (segment ``dram``), then ``finish`` to commit or abort."""
        ...

    async def finish(self, reservation_id: int, *, commit: bool) -> PutResult: ...

    async def read_ranges(self, reads: Sequence[RangeRead]) -> None: ...

    async def write_ranges(
        self, transfer_id: int, layer: int, writes: Sequence[RangeWrite]
    ) -> None:
        """Write ranges of the peer's segments; they count as layer ``layer`` of transfer
        ``transfer_id`` on arrival (the peer can wait for that layer alone)."""
        ...

    async def close(self) -> None: ...


class TcpTransport:
    kind = TransportKind.TCP

    def __init__(
        self,
        pool: ConnectionPool,
        executor: ThreadPoolExecutor,
        verifier: ThreadPoolExecutor,
        *,
        stripes: int,
    ) -> None:
        self.pool = pool
        self._executor = executor
        self._verifier = verifier
        self._stripes = stripes
        self._control: LoopChannel | None = None  # small requests, from the loop
        self._releases: set[asyncio.Task[None]] = set()
        self._to_release: list[int] = []  # ended leases not yet told to the peer
        self._release_timer: asyncio.TimerHandle | None = None

    async def read_blocks(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], dsts: Sequence[memoryview]
    ) -> BlockRead:
        if self.pool.plain and sum(d.nbytes for d in dsts) <= SMALL_READ_BYTES:
            return await self._read_small(ns_id, keys, dsts)
        return await self._run(_read_keys, self.pool, self._verifier, ns_id, keys, dsts)

    async def _read_small(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], dsts: Sequence[memoryview]
    ) -> BlockRead:
        """A small read on the loop's connection: no worker-thread hop, half the latency."""
        hits: list[frames.Hit] = []
        block_bytes = 0

        def into(body: memoryview) -> list[memoryview]:
            nonlocal hits, block_bytes
            block_bytes, hits, _ = frames.unpack_hits(body)
            if len(hits) > len(dsts):
                raise TransferFailed(f"{len(hits)} blocks for {len(dsts)} buffers")
            return [d[:block_bytes] for d in dsts[: len(hits)]]

        channel = await self._channel()
        body = await channel.call(Op.READ_KEYS, frames.pack_keys(ns_id, keys), into)
        _, _, reason = frames.unpack_hits(body)
        good = next(
            (i for i, h in enumerate(hits) if checksum(dsts[i][:block_bytes]) != h.checksum),
            len(hits),
        )
        if good < len(hits):
            reason = MissReason.CORRUPTED
        return BlockRead(good, [h.tier for h in hits[:good]], reason)

    async def write_blocks(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[memoryview],
        parent: BlockKey | None,
    ) -> PutResult:
        return await self._run(_put_keys, self.pool, ns_id, keys, blocks, parent)

    async def reserve(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], parent: BlockKey | None
    ) -> WriteSlots:
        body = await self._small_call(Op.RESERVE, frames.pack_put(ns_id, keys, parent))
        return WriteSlots(*frames.unpack_reservation(body))

    async def finish(self, reservation_id: int, *, commit: bool) -> PutResult:
        op = Op.COMMIT if commit else Op.ABORT
        body = await self._small_call(op, frames.pack_u64(reservation_id))
        return PutResult(*frames.unpack_put_result(body)) if commit else PutResult(0, 0, 0)

    async def _small_call(self, op: Op, payload: bytes) -> memoryview:
        if not self.pool.plain:  # TLS sockets are driven from worker threads
            return await self._run(_call, self.pool, op, payload)
        channel = await self._channel()
        return await channel.call(op, payload)

    async def read_ranges(self, reads: Sequence[RangeRead]) -> None:
        def read(pool: ConnectionPool, part: Sequence[RangeRead]) -> None:
            _read_ranges(pool, self._verifier, part)

        await self._striped(read, reads)

    async def write_ranges(
        self, transfer_id: int, layer: int, writes: Sequence[RangeWrite]
    ) -> None:
        def write(pool: ConnectionPool, part: Sequence[RangeWrite]) -> None:
            _write_ranges(pool, transfer_id, layer, part)

        await self._striped(write, writes)

    async def acquire(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey]
    ) -> tuple[int, list[frames.LeasedBlock], MissReason | None]:
        """Pin the peer's host-memory run of ``keys``: (lease id, where each block is,
        why the run ended). Release it with ``release``."""
        done, self._to_release = self._to_release, []  # ended leases ride along
        payload = frames.pack_keys(ns_id, keys) + frames.pack_ids(done)
        return frames.unpack_lease(await self._small_call(Op.ACQUIRE, payload))

    def release(self, lease_id: int) -> None:
        """End a lease without waiting: it rides along with the next ``acquire``, or goes
        on its own after ``RELEASE_DELAY_S`` (the lease's deadline covers a lost one)."""
        self._to_release.append(lease_id)
        if self._release_timer is None:
            loop = asyncio.get_running_loop()
            self._release_timer = loop.call_later(RELEASE_DELAY_S, self._flush_releases)

    def _flush_releases(self) -> None:
        self._release_timer = None
        if not self._to_release:
            return
        ids, self._to_release = self._to_release, []
        task = asyncio.get_running_loop().create_task(self._send_release(ids))
        self._releases.add(task)
        task.add_done_callback(self._released)

    async def _send_release(self, ids: list[int]) -> None:
        payload = frames.pack_ids(ids)
        if not self.pool.plain:
            await self._run(_send, self.pool, Op.RELEASE, payload)
            return
        channel = await self._channel()
        await channel.send(Op.RELEASE, payload)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releases.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("releasing leases failed (their deadline will): %s", task.exception())

    async def _channel(self) -> LoopChannel:
        if self._control is not None and self._control.conn.broken:
            self.pool.give(self._control.conn)
            self._control = None
        if self._control is None:
            self._control = LoopChannel(await self._run(self.pool.take), self.pool.timeout_s)
        return self._control

    async def close(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._flush_releases()
        if self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)
        if self._control is not None:
            self._control.conn.broken = True  # not reusable by threads: close it
            self.pool.give(self._control.conn)
            self._control = None
        self.pool.close()

    async def _striped(
        self, fn: Callable[[ConnectionPool, Sequence[T]], None], items: Sequence[T]
    ) -> None:
        groups = _split(items, self._stripes)
        await asyncio.gather(*(self._run(fn, self.pool, group) for group in groups))

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


class ShmTransport:
    """Same host: blocks and shared segments are copied straight out of the peer's
    mapped memory; writes (which the peer must be told about) go over ``tcp``."""

    kind = TransportKind.SHM

    def __init__(
        self, tcp: TcpTransport, shared: Sequence[SharedSegmentInfo], mappings: SharedMappings
    ) -> None:
        self.tcp = tcp
        self._paths = {s.name: Path(s.path) for s in shared}
        self._sizes = {s.name: s.size for s in shared}
        self._mappings = mappings

    def segment_size(self, name: str) -> int:
        """Size of a segment this transport maps (0 if it does not map it)."""
        return self._sizes.get(name, 0)

    async def read_blocks(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], dsts: Sequence[memoryview]
    ) -> BlockRead:
        lease_id, blocks, reason = await self.tcp.acquire(ns_id, keys)
        try:
            good = 0
            for block, dst in zip(blocks, dsts, strict=False):
                src = self._mappings.view(self._paths[block.segment])[
                    block.offset : block.offset + block.length
                ]
                dst[: block.length] = src
                if checksum(dst[: block.length]) != block.checksum:
                    logger.warning("block %d from shared memory failed its checksum", good)
                    break
                good += 1
        finally:
            if blocks:
                self.tcp.release(lease_id)
        tiers = [b.tier for b in blocks[:good]]
        if good < len(blocks):
            return BlockRead(good, tiers, MissReason.CORRUPTED)
        if good < len(keys) and reason is None:  # the run goes on in a slower tier
            rest = await self.tcp.read_blocks(ns_id, keys[good:], dsts[good:])
            return BlockRead(good + rest.num_hits, tiers + rest.tiers, rest.miss_reason)
        return BlockRead(good, tiers, reason)

    async def read_ranges(self, reads: Sequence[RangeRead]) -> None:
        remote = [r for r in reads if r.segment not in self._paths]
        for read in reads:
            if read.segment in self._paths:
                view = self._mappings.view(self._paths[read.segment])
                read.dst[:] = view[read.offset : read.offset + read.dst.nbytes]
        if remote:
            await self.tcp.read_ranges(remote)

    async def write_blocks(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[memoryview],
        parent: BlockKey | None,
    ) -> PutResult:
        return await self.tcp.write_blocks(ns_id, keys, blocks, parent)

    async def reserve(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], parent: BlockKey | None
    ) -> WriteSlots:
        return await self.tcp.reserve(ns_id, keys, parent)

    async def finish(self, reservation_id: int, *, commit: bool) -> PutResult:
        return await self.tcp.finish(reservation_id, commit=commit)

    async def write_ranges(
        self, transfer_id: int, layer: int, writes: Sequence[RangeWrite]
    ) -> None:
        await self.tcp.write_ranges(transfer_id, layer, writes)

    async def close(self) -> None:
        await self.tcp.close()


class LocalTransport:
    """Same process: copies between this process's registered segments."""

    kind = TransportKind.LOCAL

    def __init__(
        self,
        registry: SegmentRegistry,
        arrived: Callable[[int, int], None],
        blocks: Transport | None,
    ) -> None:
        self._registry = registry
        self._arrived = arrived
        self._blocks = blocks

    async def read_blocks(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], dsts: Sequence[memoryview]
    ) -> BlockRead:
        return await self._store().read_blocks(ns_id, keys, dsts)

    async def write_blocks(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[memoryview],
        parent: BlockKey | None,
    ) -> PutResult:
        return await self._store().write_blocks(ns_id, keys, blocks, parent)

    async def reserve(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], parent: BlockKey | None
    ) -> WriteSlots:
        return await self._store().reserve(ns_id, keys, parent)

    async def finish(self, reservation_id: int, *, commit: bool) -> PutResult:
        return await self._store().finish(reservation_id, commit=commit)

    def _store(self) -> Transport:
        if self._blocks is None:
            raise TransferFailed("no store in this process")
        return self._blocks

    async def read_ranges(self, reads: Sequence[RangeRead]) -> None:
        for read in reads:
            read.dst[:] = self._registry.get(read.segment).slice(read.offset, read.dst.nbytes)

    async def write_ranges(
        self, transfer_id: int, layer: int, writes: Sequence[RangeWrite]
    ) -> None:
        for write in writes:
            self._registry.get(write.segment).slice(write.offset, write.src.nbytes)[:] = write.src
        self._arrived(transfer_id, layer)

    async def close(self) -> None:
        return None


# -- blocking calls, on worker threads ----------------------------------------------------


def _read_keys(
    pool: ConnectionPool,
    verifier: ThreadPoolExecutor,
    ns_id: NamespaceId,
    keys: Sequence[BlockKey],
    dsts: Sequence[memoryview],
) -> BlockRead:
    conn = pool.take()
    try:
        _, body = conn.call(Op.READ_KEYS, frames.pack_keys(ns_id, keys))
        block_bytes, hits, reason = frames.unpack_hits(body)
        if len(hits) > len(dsts):
            conn.broken = True
            raise TransferFailed(
                f"data plane {conn.address}: {len(hits)} blocks for {len(dsts)} buffers"
            )
        views = [dst[:block_bytes] for dst in dsts[: len(hits)]]
        matches = _receive_verified(conn, views, [h.checksum for h in hits], verifier)
        good = next((i for i, ok in enumerate(matches) if not ok), len(hits))
        if good < len(hits):
            logger.warning(
                "block %d from %s failed its checksum; run cut there", good, conn.address
            )
            reason = MissReason.CORRUPTED
        return BlockRead(good, [h.tier for h in hits[:good]], reason)
    finally:
        pool.give(conn)


def _receive_verified(
    conn: Connection, views: Sequence[memoryview], sums: Sequence[int], verifier: ThreadPoolExecutor
) -> list[bool]:
    """Receive each view in turn; checksum each one on the verifier thread while the next
    is still arriving (a receive releases the GIL while it waits), so verification costs
    no transfer time."""
    pending = []
    for view in views:
        conn.recv_into(view)
        pending.append(verifier.submit(checksum, view))
    return [future.result() == expected for future, expected in zip(pending, sums, strict=True)]


def _call(pool: ConnectionPool, op: Op, payload: bytes) -> memoryview:
    conn = pool.take()
    try:
        return conn.call(op, payload)[1]
    finally:
        pool.give(conn)


def _send(pool: ConnectionPool, op: Op, payload: bytes) -> None:
    conn = pool.take()
    try:
        conn.send(op, payload)
    finally:
        pool.give(conn)


def _put_keys(
    pool: ConnectionPool,
    ns_id: NamespaceId,
    keys: Sequence[BlockKey],
    blocks: Sequence[memoryview],
    parent: BlockKey | None,
) -> PutResult:
    conn = pool.take()
    try:
        _, body = conn.call(Op.PUT_KEYS, frames.pack_put(ns_id, keys, parent), blocks)
        return PutResult(*frames.unpack_put_result(body))
    finally:
        pool.give(conn)


def _read_ranges(
    pool: ConnectionPool, verifier: ThreadPoolExecutor, reads: Sequence[RangeRead]
) -> None:
    by_segment: dict[str, list[RangeRead]] = {}
    for read in reads:
        by_segment.setdefault(read.segment, []).append(read)
    conn = pool.take()
    try:
        for segment, group in by_segment.items():
            ranges = [frames.Range(r.offset, r.dst.nbytes) for r in group]
            _, body = conn.call(Op.READ_RANGES, frames.pack_ranges(segment, ranges))
            sums = frames.unpack_checksums(body, len(group))
            if not all(_receive_verified(conn, [r.dst for r in group], sums, verifier)):
                raise TransferFailed(
                    f"data plane {conn.address}: a range of {segment!r} arrived corrupted"
                )
    finally:
        pool.give(conn)


def _write_ranges(
    pool: ConnectionPool, transfer_id: int, layer: int, writes: Sequence[RangeWrite]
) -> None:
    by_segment: dict[str, list[RangeWrite]] = {}
    for write in writes:
        by_segment.setdefault(write.segment, []).append(write)
    conn = pool.take()
    try:
        for segment, group in by_segment.items():
            ranges = [frames.WriteRange(w.offset, w.src.nbytes, checksum(w.src)) for w in group]
            payload = frames.pack_write(segment, transfer_id, layer, ranges)
            conn.call(Op.WRITE_RANGES, payload, [w.src for w in group])
    finally:
        pool.give(conn)


def _split(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """Contiguous groups of about equal count (ranges within a batch are alike in size)."""
    parts = max(1, min(parts, len(items)))
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]
