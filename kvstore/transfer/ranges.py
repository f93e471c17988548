"""The segment ops: READ_RANGES and WRITE_RANGES of registered segments.

Every range travels with its checksum: a read answers each range's checksum before its
bytes; a write lands in its destination and counts for its (transfer, layer) only once
its checksum matches. A refused write drains the bytes that follow it (up to
``MAX_DRAIN_BYTES``), so the connection stays in step.

A segment may be guarded: whoever owns its bytes (the store, for its arena) decides which
ranges a request may read (given the capability id the reader presents: a lease) and
which it may write. A guarded segment without a guard for a direction refuses it, and
writes into a guarded segment are accounted by its owner, not as layer arrivals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore.errors import InvalidArgument, KVStoreError
from kvstore.hashing import checksum
from kvstore.transfer import frames
from kvstore.transfer.arrivals import LayerArrivals
from kvstore.transfer.conn import ServerConn
from kvstore.transfer.frames import Status
from kvstore.transfer.ops import Request
from kvstore.transfer.replies import discard, reply, reply_ok
from kvstore.transfer.segments import Segment, SegmentRegistry

MAX_DRAIN_BYTES = 1 << 30  # a refused write declaring more is hung up on, not drained
SCRATCH_BYTES = 256 << 10

ReadGuard = Callable[[int, Sequence[frames.Range]], None]  # (capability id, ranges)
WriteGuard = Callable[[Sequence[frames.WriteRange]], None]


@dataclass(frozen=True, slots=True)
class SegmentGuard:
    """Checks that raise ``InvalidArgument`` for a range a request may not touch; None
    refuses that direction altogether."""

    read: ReadGuard | None
    write: WriteGuard | None


class RangeOps:
    def __init__(self, segments: SegmentRegistry, arrivals: LayerArrivals) -> None:
        self.segments = segments
        self.arrivals = arrivals
        self._guards: dict[str, SegmentGuard] = {}
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))

    def guard(self, name: str, guard: SegmentGuard) -> None:
        if name in self._guards:
            raise InvalidArgument(f"segment {name!r} is already guarded")
        self._guards[name] = guard

    async def read(self, conn: ServerConn, request: Request) -> None:
        name, capability, ranges = frames.unpack_ranges(request.payload)
        segment = self.segments.get(name)
        guard = self._guards.get(name)
        if guard is not None:
            if guard.read is None:
                raise InvalidArgument(f"segment {name!r} is not readable over the data plane")
            guard.read(capability, ranges)
        views = [segment.slice(r.offset, r.length) for r in ranges]
        body = frames.pack_checksums([checksum(v) for v in views])
        await reply_ok(conn, request.header, body, views)

    async def write(self, conn: ServerConn, request: Request) -> None:
        name, transfer_id, layer, ranges = frames.unpack_write(request.payload)
        guard = self._guards.get(name)
        try:
            views = self._writable(self.segments.get(name), guard, ranges)
        except KVStoreError:
            # keep the stream in step by draining what follows into a fixed buffer, unless
            # the declared lengths are past any segment: then the peer is hung up on
            declared = sum(r.length for r in ranges)
            if declared > MAX_DRAIN_BYTES:
                raise frames.FrameError(f"{declared} bytes of refused ranges") from None
            await discard(conn, declared, self._scratch)
            raise
        for view in views:
            await conn.recv_into(view)
        if any(checksum(v) != r.checksum for v, r in zip(views, ranges, strict=True)):
            bad = b"a range arrived with a bad checksum"
            await reply(conn, request.header, Status.CORRUPTED, bad)
            return
        if guard is None:  # a guarded segment's owner tracks its writes itself
            self.arrivals.mark(transfer_id, layer)
        await reply(conn, request.header, Status.OK, b"")

    @staticmethod
    def _writable(
        segment: Segment, guard: SegmentGuard | None, ranges: Sequence[frames.WriteRange]
    ) -> list[memoryview]:
        if guard is not None:
            if guard.write is None:
                name = segment.name
                raise InvalidArgument(f"segment {name!r} is not writable over the data plane")
            guard.write(ranges)
        return [segment.slice(r.offset, r.length) for r in ranges]
