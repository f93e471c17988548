"""Transports: how bytes reach a peer, behind one small protocol.

    local   same process: a memory copy between registered segments (or the local store)
    shm     same host: map the peer's shared arena and copy out of it; one small
            round trip on the data plane pins the blocks (a lease) and says where they are
    tcp     other hosts: the data plane; ranges striped over several pooled connections
            and over every address of the peer; bytes land with ``recv_into``
            (``kvstore.transfer.tcp``)

RDMA or NVLink transports would implement the same four methods: register the local
segments with the NIC or GPU, and post one-sided reads and writes of (segment, offset,
length) ranges instead of copying through sockets.

Every block read by key is checked against its checksum on arrival; a block that does
not match ends the run there and is never returned. Blocking socket work runs on the
engine's worker threads, which release the GIL in every send and receive.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from kvstore.errors import TransferFailed
from kvstore.hashing import checksum
from kvstore.reservations import PutResult
from kvstore.transfer.connection import (
    SharedSegmentInfo,
)
from kvstore.transfer.segments import SegmentRegistry, SharedMappings
from kvstore.types import BlockKey, MissReason, NamespaceId, TierKind

if TYPE_CHECKING:
    from kvstore.transfer.tcp import TcpTransport

logger = logging.getLogger(__name__)


class TransportKind(enum.Enum):
    LOCAL = "local"
    SHM = "shm"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class RangeRead:
    segment: str
    offset: int
    dst: memoryview  # receives dst.nbytes bytes from the peer's segment at offset
    lease_id: int = 0  # the lease covering the range (needed for the peer's arena)


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
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        *,
        count_misses: bool = True,
    ) -> BlockRead:
        """The peer's longest cached run of ``keys``, verified, into ``dsts``. The peer
        counts the hits, and the misses unless ``count_misses`` is False (the reader
        looks further, elsewhere, and that later read counts them)."""
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
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        *,
        count_misses: bool = True,
    ) -> BlockRead:
        lease_id, blocks, reason = await self.tcp.acquire(ns_id, keys)  # counts hits only
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
        # the run goes on in a slower tier, or the misses are the peer's to count
        if good < len(keys) and (reason is None or count_misses):
            rest = await self.tcp.read_blocks(
                ns_id, keys[good:], dsts[good:], count_misses=count_misses
            )
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
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        dsts: Sequence[memoryview],
        *,
        count_misses: bool = True,
    ) -> BlockRead:
        return await self._store().read_blocks(ns_id, keys, dsts, count_misses=count_misses)

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
