"""The write path: two-phase puts into the fastest tier.

``reserve`` takes slots (evicting as needed, all or nothing) and hands out the buffers
to write: the slots themselves in a memory tier, pooled staging buffers otherwise.
``commit`` checksums the bytes, writes staged ones through to their tier, and inserts
the blocks into the index, which makes them visible. With ``write_through``, commit
then gives the blocks an NVMe copy before it returns; if that fails, the blocks are
removed again and the put fails (``TierUnavailable``), so a put that returned is durable.
``put`` is both phases at once and skips the staging copy: bytes go straight from the
caller's buffers to a disk or device tier, or are copied once into DRAM slots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from kvstore.buffers import StagingPool
from kvstore.errors import KVStoreError, LeaseExpired
from kvstore.hashing import Namespace, checksum
from kvstore.index import BlockIndex, BlockMeta
from kvstore.reservations import (
    PutResult,
    Reservation,
    ReservationState,
    ReservationTable,
    ReservedBlock,
)
from kvstore.stats import StoreStats
from kvstore.tiering import Tiering, block_record
from kvstore.tiers.base import WriteItem
from kvstore.types import BlockKey, MissReason, SlotId, TierKind


class WritePath:
    def __init__(
        self,
        index: BlockIndex,
        tiering: Tiering,
        stats: StoreStats,
        staging: StagingPool,
        *,
        reservation_timeout_s: float,
        clock: Callable[[], float],
        write_through: bool = False,
    ) -> None:
        self.index = index
        self.tiering = tiering
        self.stats = stats
        self.staging = staging
        self.reservations = ReservationTable()
        self._timeout_s = reservation_timeout_s
        self._clock = clock
        self.write_through = write_through and TierKind.NVME in tiering.tiers

    async def reserve(
        self,
        namespace: Namespace,
        keys: Sequence[BlockKey],
        parents: Sequence[BlockKey | None],
        sources: Sequence[memoryview] | None = None,
    ) -> Reservation:
        """Slots for the keys not stored or being written yet (validated by the caller).

        ``sources``, one per key, are the bytes a one-shot ``put`` will store; a tier with
        no host view then writes straight from them instead of from staging.
        """
        self.reclaim_expired()
        todo: list[tuple[int, BlockKey, BlockKey | None]] = []
        seen: set[BlockKey] = set()
        num_present = num_in_flight = 0
        for i, key in enumerate(keys):
            if key in self.index:
                num_present += 1
            elif key in seen or self.reservations.is_writing(key):
                num_in_flight += 1
            else:
                seen.add(key)
                todo.append((i, key, parents[i]))
        tier = self.tiering.top
        claimed = [key for _, key, _ in todo]
        self.reservations.claim(claimed)
        try:
            slots = await self.tiering.allocate(tier, namespace.block_bytes, claimed)
        except BaseException:
            self.reservations.unclaim(claimed)
            raise
        srcs = [sources[i] for i, _, _ in todo] if sources is not None else None
        buffers, staged, staging = self._buffers(tier, slots, namespace.block_bytes, srcs)
        reservation = Reservation(
            id=self.reservations.next_id(),
            namespace=namespace,
            tier=tier,
            blocks=[
                ReservedBlock(i, key, parent, slot, buf)
                for (i, key, parent), slot, buf in zip(todo, slots, buffers, strict=True)
            ],
            deadline_s=self._clock() + self._timeout_s,
            num_present=num_present,
            num_in_flight=num_in_flight,
            staged=staged,
            staging=staging,
        )
        self.reservations.add(reservation)
        return reservation

    async def commit(self, reservation: Reservation) -> PutResult:
        try:
            self.reservations.begin_commit(reservation, self._clock())
        except LeaseExpired:
            self.abort(reservation)
            raise
        namespace = reservation.namespace
        now = time.time()
        metas = [
            BlockMeta(
                key=b.key,
                namespace_id=namespace.id,
                parent=b.parent,
                length_bytes=namespace.block_bytes,
                checksum=checksum(b.buffer[: namespace.block_bytes]),
                tier=reservation.tier,
                slot=b.slot,
                created_s=now,
                last_access_s=now,
            )
            for b in reservation.blocks
        ]
        try:
            if reservation.staged and metas:
                items = [
                    WriteItem(block_record(m, m.slot), b.buffer[: m.length_bytes])
                    for m, b in zip(metas, reservation.blocks, strict=True)
                ]
                await self.tiering.tiers[reservation.tier].write(items)
        except BaseException:
            self._finish(reservation, ReservationState.RECLAIMED)
            raise
        for meta in metas:
            self.index.insert(meta)
        self._finish(reservation, ReservationState.DONE)
        if self.write_through:
            await self._write_through(metas)
        self.stats.put_blocks += len(metas)
        return PutResult(len(metas), reservation.num_present, reservation.num_in_flight)

    async def _write_through(self, metas: list[BlockMeta]) -> None:
        """Copy just-committed blocks to NVMe; on failure take them out again and raise."""
        try:
            await self.tiering.write_copies(metas)
        except KVStoreError:
            await self.tiering.drop(metas, MissReason.REMOVED)
            raise

    def abort(self, reservation: Reservation) -> None:
        """Give an open reservation's slots back without storing anything."""
        if reservation.state is ReservationState.OPEN:
            self._finish(reservation, ReservationState.RECLAIMED)

    def reclaim_expired(self) -> int:
        expired = self.reservations.expired(self._clock())
        for reservation in expired:
            self._finish(reservation, ReservationState.RECLAIMED)
        self.stats.reservations_reclaimed += len(expired)
        return len(expired)

    def _finish(self, reservation: Reservation, state: ReservationState) -> None:
        """End a reservation: free its slots unless committed, return staging buffers."""
        if state is not ReservationState.DONE:
            pool = self.tiering.tiers[reservation.tier].slots
            for block in reservation.blocks:
                pool.free(block.slot)
        self.staging.give(reservation.staging)
        reservation.staging = []
        self.reservations.finish(reservation, state)

    def _buffers(
        self,
        tier: TierKind,
        slots: list[SlotId],
        block_bytes: int,
        sources: list[memoryview] | None,
    ) -> tuple[list[memoryview], bool, list[memoryview]]:
        """Where each block is written, whether the tier still has to be written at
        commit (staged), and the pooled staging buffers used (to give back)."""
        views = [self.tiering.tiers[tier].view(slot) for slot in slots]
        if all(v is not None for v in views):
            return [v[:block_bytes] for v in views if v is not None], False, []
        if sources is not None:
            return list(sources), True, []
        staging = self.staging.take(len(slots), block_bytes)
        return [b[:block_bytes] for b in staging], True, staging
