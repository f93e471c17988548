"""The store's reads on a node's data plane: READ_KEYS, and leases (ACQUIRE, RELEASE)
for readers on the same host, who copy leased blocks out of the shared arena themselves.

* READ_KEYS streams the longest cached run of a key list straight from the pinned slots
  (one round trip; the store's read path counts hits and misses);
* ACQUIRE pins the host-memory run, up to the caller's share of the arena
  (``ByteQuota``), and answers where each block lies in the arena; RELEASE (or the
  lease's deadline) unpins. The lease id is the capability that opens READ_RANGES of
  the arena (``check_leased``, the arena segment's read guard).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.access import Role
from kvstore.errors import InvalidArgument
from kvstore.reads import LeasedRun
from kvstore.server.quotas import ByteQuota
from kvstore.store import NodeStore
from kvstore.transfer import frames
from kvstore.transfer.conn import ServerConn
from kvstore.transfer.frames import Op
from kvstore.transfer.ops import Request, capability_id
from kvstore.transfer.replies import reply_ok
from kvstore.transfer.server import SegmentServer

logger = logging.getLogger(__name__)


@dataclass
class _Lease:
    run: LeasedRun
    deadline_s: float
    owner: int
    spans: dict[int, int]  # arena offset of each leased block -> its length


class StoreReads:
    def __init__(
        self, store: NodeStore, segment: str, *, lease_ttl_s: float, quota_fraction: float
    ) -> None:
        """``segment``: the arena's name on the data plane. ``quota_fraction``: the share
        of the arena's bytes all leases together may pin (one connection: half of that)."""
        self.store = store
        self.segment = segment
        self._lease_ttl_s = lease_ttl_s
        self._leases: dict[int, _Lease] = {}
        arena = store.shared_arena()
        self._quota = ByteQuota.of_arena(
            arena.capacity_bytes if arena is not None else 0, quota_fraction
        )

    def add_to(self, server: SegmentServer) -> None:
        server.register(Op.READ_KEYS, self.read_keys, role=Role.READER)
        server.register(Op.ACQUIRE, self.acquire, role=Role.READER)
        server.register(Op.RELEASE, self.release, role=Role.READER)
        server.attach(self)

    async def read_keys(self, conn: ServerConn, request: Request) -> None:
        ns_id, keys, count_misses = frames.unpack_read(request.payload)
        namespace = self.store.namespace(ns_id)
        async with self.store.read(ns_id, keys, count_misses=count_misses) as run:
            hits = [frames.Hit(v.checksum, v.tier) for v in run.blocks]
            meta = frames.pack_hits(namespace.block_bytes, hits, run.miss_reason)
            await reply_ok(conn, request.header, meta, [v.data for v in run.blocks])

    async def acquire(self, conn: ServerConn, request: Request) -> None:
        """Pin the host-memory run of the keys, up to the caller's quota (a shorter run is
        a normal answer: the reader fetches the rest whole)."""
        ns_id, keys, end = frames.unpack_keys(request.payload)
        ended = frames.unpack_ids(request.payload, end)
        for done in ended:  # the reader's earlier leases, ended
            await self._release(done)
        owner = request.caller.owner
        block_bytes = self.store.namespace(ns_id).block_bytes
        allowed = keys[: self._quota.available(owner) // block_bytes]
        arena = self.store.shared_arena()
        run = self.store.lease(ns_id, allowed) if arena is not None and allowed else None
        run = run if run is not None else LeasedRun([], None)
        lease_id = capability_id()
        blocks = [
            frames.LeasedBlock(self.segment, m.slot, m.length_bytes, m.checksum, m.tier)
            for m in run.blocks
        ]
        if run.blocks:
            spans = {b.offset: b.length for b in blocks}
            deadline_s = time.monotonic() + self._lease_ttl_s
            self._leases[lease_id] = _Lease(run, deadline_s, owner, spans)
            self._quota.take(owner, _bytes_of(run))
        await reply_ok(conn, request.header, frames.pack_lease(lease_id, blocks, run.miss_reason))

    async def release(self, conn: ServerConn, request: Request) -> None:
        """Fire and forget: no reply."""
        for lease_id in frames.unpack_ids(request.payload):
            await self._release(lease_id)

    def check_leased(self, lease_id: int, ranges: Sequence[frames.Range]) -> None:
        """Ranges of the arena may be read only within blocks of a lease the caller holds
        (its id is the capability): never free slots, never other callers' blocks."""
        lease = self._leases.get(lease_id)
        arena = self.store.shared_arena()
        for r in ranges:
            start = arena.slots.slot_containing(r.offset) if arena is not None else None
            length = lease.spans.get(start) if lease is not None and start is not None else None
            if start is None or length is None or r.offset + r.length > start + length:
                raise InvalidArgument(
                    f"arena range [{r.offset}, {r.offset + r.length}) is not in a block"
                    " leased to this reader"
                )

    async def run(self) -> None:
        """Unpin leases whose deadline passed (their reader died or forgot them)."""
        while True:
            await asyncio.sleep(max(0.05, self._lease_ttl_s / 4))
            now = time.monotonic()
            for lease_id, lease in list(self._leases.items()):
                if lease.deadline_s <= now:
                    logger.debug(
                        "lease %d expired; unpinning %d blocks", lease_id, len(lease.run.blocks)
                    )
                    await self._release(lease_id)

    async def close(self) -> None:
        for lease_id in list(self._leases):
            await self._release(lease_id)

    async def _release(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        self._quota.give_back(lease.owner, _bytes_of(lease.run))
        await self.store.release_lease(lease.run)


def _bytes_of(run: LeasedRun) -> int:
    """Arena bytes a lease pins (what the lease quota counts)."""
    return sum(m.length_bytes for m in run.blocks)
