"""The ``tcp`` transport: a peer's data plane over pooled connections, ranges striped
over the connections and over every address of the peer, bytes landing with
``recv_into``; every block read by key checked against its checksum on arrival. Blocking
socket work runs on the engine's worker threads, which release the GIL in every send and
receive."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from kvstore.errors import TransferFailed
from kvstore.hashing import checksum
from kvstore.reservations import PutResult
from kvstore.transfer import frames
from kvstore.transfer.connection import Connection, ConnectionPool, LoopChannel
from kvstore.transfer.frames import Op
from kvstore.transfer.transports import (
    BlockRead,
    Lease,
    RangeRead,
    RangeWrite,
    TransportKind,
    WriteSlots,
)
from kvstore.types import BlockKey, MissReason, NamespaceId

logger = logging.getLogger(__name__)
T = TypeVar("T")

SMALL_READ_BYTES = 1 << 20  # reads up to this size go through the loop, not a worker
RELEASE_DELAY_S = 0.002  # how long an ended lease may wait for the next acquire


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
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        *,
        count_misses: bool = True,
    ) -> BlockRead:
        payload = frames.pack_read(ns_id, keys, count_misses=count_misses)
        if self.pool.plain and sum(d.nbytes for d in dsts) <= SMALL_READ_BYTES:
            return await self._read_small(payload, dsts)
        return await self._run(_read_keys, self.pool, self._verifier, payload, dsts)

    async def _read_small(self, payload: bytes, dsts: Sequence[memoryview]) -> BlockRead:
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
        body = await channel.call(Op.READ_KEYS, payload, into)
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
        return PutResult(*frames.unpack_put_result(body)) if commit else PutResult(0, 0, 0, 0)

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

    async def acquire(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> Lease:
        """Pin the peer's host-memory run of ``keys``; end it with ``release``."""
        done, self._to_release = self._to_release, []  # ended leases ride along
        payload = frames.pack_keys(ns_id, keys) + frames.pack_ids(done)
        return Lease(*frames.unpack_lease(await self._small_call(Op.ACQUIRE, payload)))

    def release(self, lease: Lease) -> None:
        """End a lease without waiting: it rides along with the next ``acquire``, or goes
        on its own after ``RELEASE_DELAY_S`` (the lease's deadline covers a lost one).
        An empty lease pins nothing and needs no message."""
        if not lease.blocks:
            return
        self._to_release.append(lease.lease_id)
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


def _read_keys(
    pool: ConnectionPool,
    verifier: ThreadPoolExecutor,
    payload: bytes,
    dsts: Sequence[memoryview],
) -> BlockRead:
    conn = pool.take()
    try:
        _, body = conn.call(Op.READ_KEYS, payload)
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
    by_segment: dict[tuple[str, int], list[RangeRead]] = {}
    for read in reads:
        by_segment.setdefault((read.segment, read.lease_id), []).append(read)
    conn = pool.take()
    try:
        for (segment, lease_id), group in by_segment.items():
            ranges = [frames.Range(r.offset, r.dst.nbytes) for r in group]
            _, body = conn.call(Op.READ_RANGES, frames.pack_ranges(segment, ranges, lease_id))
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
