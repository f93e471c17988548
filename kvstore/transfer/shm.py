"""The ``shm`` transport: a peer on this host whose DRAM arena this process can map.

A read by key leases the peer's host-memory run over the data plane (one small round
trip), copies each block straight out of the mapped arena, checks its checksum and ends
the lease; the rest of the run (a slower tier) comes over ``tcp``. Everything the peer
must be told about (writes, reservations, leases) goes over ``tcp`` too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from kvstore.hashing import checksum
from kvstore.reservations import PutResult
from kvstore.transfer.connection import SharedSegmentInfo
from kvstore.transfer.segments import SharedMappings
from kvstore.transfer.tcp import TcpTransport
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


class ShmTransport:
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
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        *,
        count_misses: bool = True,
    ) -> BlockRead:
        lease = await self.tcp.acquire(ns_id, keys)  # counts hits only
        try:
            good = 0
            for block, dst in zip(lease.blocks, dsts, strict=False):
                src = self._mappings.view(self._paths[block.segment])[
                    block.offset : block.offset + block.length
                ]
                dst[: block.length] = src
                if checksum(dst[: block.length]) != block.checksum:
                    logger.warning("block %d from shared memory failed its checksum", good)
                    break
                good += 1
        finally:
            self.tcp.release(lease)
        tiers = [b.tier for b in lease.blocks[:good]]
        if good < len(lease.blocks):
            return BlockRead(good, tiers, MissReason.CORRUPTED)
        # the run goes on in a slower tier, or the misses are the peer's to count
        if good < len(keys) and (lease.miss_reason is None or count_misses):
            rest = await self.tcp.read_blocks(
                ns_id, keys[good:], dsts[good:], count_misses=count_misses
            )
            return BlockRead(good + rest.num_hits, tiers + rest.tiers, rest.miss_reason)
        return BlockRead(good, tiers, lease.miss_reason)

    async def read_ranges(self, reads: Sequence[RangeRead]) -> None:
        remote = [r for r in reads if r.segment not in self._paths]
        for read in reads:
            if read.segment in self._paths:
                view = self._mappings.view(self._paths[read.segment])
                read.dst[:] = view[read.offset : read.offset + read.dst.nbytes]
        if remote:
            await self.tcp.read_ranges(remote)

    async def acquire(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> Lease:
        return await self.tcp.acquire(ns_id, keys)

    def release(self, lease: Lease) -> None:
        self.tcp.release(lease)

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
