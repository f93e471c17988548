"""The ``local`` transport: a peer in this very process (a node's engine reaching its
own data plane). Ranges are memory copies between this process's registered segments;
what concerns the store (reads by key, puts, reservations, leases) goes to ``blocks``,
the transport that reaches the store, and fails clearly without one."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvstore.errors import LeaseUnavailable, TransferFailed
from kvstore.reservations import PutResult
from kvstore.transfer.segments import SegmentRegistry
from kvstore.transfer.transports import (
    BlockRead,
    Lease,
    RangeRead,
    RangeWrite,
    Transport,
    TransportKind,
    WriteSlots,
)
from kvstore.types import BlockKey, NamespaceId


class LocalTransport:
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

    async def acquire(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> Lease:
        if self._blocks is None:
            raise LeaseUnavailable("no store in this process to lease blocks from")
        return await self._blocks.acquire(ns_id, keys)

    def release(self, lease: Lease) -> None:
        if self._blocks is not None:
            self._blocks.release(lease)

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
