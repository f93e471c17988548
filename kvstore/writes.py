"""The write path: two-phase puts, each block into the tier its admission chose.

``reserve`` offers the keys not stored yet to the admission policy, parent first
(``kvstore.policy.admission``): ``FAST`` takes a slot of the fastest tier, ``SLOW`` one of
the slowest (NVMe, when enabled: cold storage that displaces nothing hot), ``SKIP``
stores that key and every later one of the put not at all (a block is useful only with
its ancestors); the put's result counts them as skipped. Without a policy
(``store.admission_policy = "all"``) nothing is offered and every block takes the fastest
tier. Slots are taken per tier, evicting as needed, all or nothing; the reservation
hands out the buffers to write: the slots themselves in a memory tier, the caller's
bytes (a one-shot ``put``) or pooled staging buffers otherwise.

A caller that writes into the slots itself (``in_memory``: layer-wise writes into the
shared arena) gets fastest-tier slots for every block; blocks admitted to a slower tier
sink there at commit (best effort: one that cannot move stays where it was written).

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
from typing import NamedTuple

from kvstore.buffers import StagingPool
from kvstore.errors import KVStoreError, LeaseExpired
from kvstore.hashing import Namespace, checksum
from kvstore.index import BlockIndex, BlockMeta
from kvstore.policy.admission import Admission, AdmissionPolicy, Offer
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


class Placed(NamedTuple):
    """A key to write, and the tier its admission chose."""

    position: int  # in the caller's key list
    key: BlockKey
    parent: BlockKey | None
    home: TierKind


class Missing(NamedTuple):
    todo: list[tuple[int, BlockKey, BlockKey | None]]  # (position, key, parent), in order
    num_present: int
    num_in_flight: int


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
        admission: AdmissionPolicy | None = None,
    ) -> None:
        self.index = index
        self.tiering = tiering
        self.stats = stats
        self.staging = staging
        self.reservations = ReservationTable()
        self._timeout_s = reservation_timeout_s
        self._clock = clock
        self.write_through = write_through and TierKind.NVME in tiering.tiers
        self.admission = admission
        self._tier_of = {Admission.FAST: tiering.top, Admission.SLOW: tiering.order[-1]}

    async def reserve(
        self,
        namespace: Namespace,
        keys: Sequence[BlockKey],
        parents: Sequence[BlockKey | None],
        sources: Sequence[memoryview] | None = None,
        *,
        in_memory: bool = False,
    ) -> Reservation:
        """Slots for the keys not stored or being written yet (validated by the caller).

        Args:
            sources: One per key, the bytes a one-shot ``put`` will store; a tier with no
                host view then writes straight from them instead of from staging.
            in_memory: Every block gets a slot of the fastest tier (the caller writes
                into the slots itself); those admitted to a slower one sink at commit.
        """
        self.reclaim_expired()
        missing = self._missing(keys, parents)
        placed, num_skipped = self._admit(missing.todo, len(keys))
        claimed = [p.key for p in placed]
        self.reservations.claim(claimed)
        staging: list[memoryview] = []
        try:
            blocks = await self._allocate(namespace, placed, sources, staging, in_memory)
        except BaseException:
            self.reservations.unclaim(claimed)
            self.staging.give(staging)
            raise
        reservation = Reservation(
            id=self.reservations.next_id(),
            namespace=namespace,
            blocks=blocks,
            deadline_s=self._clock() + self._timeout_s,
            num_present=missing.num_present,
            num_in_flight=missing.num_in_flight,
            num_skipped=num_skipped,
            staging=staging,
        )
        self.reservations.add(reservation)
        return reservation

    def _missing(self, keys: Sequence[BlockKey], parents: Sequence[BlockKey | None]) -> Missing:
        """The keys neither stored nor being written (by another put, or earlier in this one)."""
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
        return Missing(todo, num_present, num_in_flight)

    def _admit(
        self, todo: list[tuple[int, BlockKey, BlockKey | None]], num_keys: int
    ) -> tuple[list[Placed], int]:
        """Each missing key's tier, parent first, up to the first the policy refuses;
        and how many keys were refused (that one and every one after it)."""
        top = self.tiering.top
        if self.admission is None:
            return [Placed(i, key, parent, top) for i, key, parent in todo], 0
        placed: list[Placed] = []
        for n, (i, key, parent) in enumerate(todo):
            # the store sees whole blocks of bytes only; whether the tokens filled them
            # is the client's knowledge (see kvstore.policy.admission)
            decision = self.admission.admit(Offer(key, i, i == num_keys - 1, True))
            if decision is Admission.SKIP:
                return placed, len(todo) - n
            placed.append(Placed(i, key, parent, self._tier_of[decision]))
        return placed, 0

    async def _allocate(
        self,
        namespace: Namespace,
        placed: list[Placed],
        sources: Sequence[memoryview] | None,
        staging: list[memoryview],
        in_memory: bool,
    ) -> list[ReservedBlock]:
        """Slots and buffers for ``placed``, one allocation per tier, all or nothing
        (pooled staging buffers taken are appended to ``staging``)."""
        groups: dict[tuple[TierKind, TierKind], list[Placed]] = {}
        for p in placed:
            tier = self.tiering.top if in_memory else p.home
            groups.setdefault((tier, p.home), []).append(p)
        blocks: list[ReservedBlock] = []
        size = namespace.block_bytes
        try:
            for (tier, home), group in groups.items():
                slots = await self.tiering.allocate(tier, size, [p.key for p in group])
                srcs = [sources[p.position] for p in group] if sources is not None else None
                buffers, staged = self._buffers(tier, slots, size, srcs, staging)
                blocks += [
                    ReservedBlock(
                        p.position, p.key, p.parent, slot, buf, tier, staged, home != tier
                    )
                    for p, slot, buf in zip(group, slots, buffers, strict=True)
                ]
        except BaseException:
            for block in blocks:
                self.tiering.tiers[block.tier].slots.free(block.slot)
            raise
        blocks.sort(key=lambda b: b.position)
        return blocks

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
                tier=b.tier,
                slot=b.slot,
                created_s=now,
                last_access_s=now,
            )
            for b in reservation.blocks
        ]
        try:
            await self._write_staged(reservation, metas)
        except BaseException:
            self._finish(reservation, ReservationState.RECLAIMED)
            raise
        for meta in metas:
            self.index.insert(meta)
        self._finish(reservation, ReservationState.DONE)
        sinking = [m for m, b in zip(metas, reservation.blocks, strict=True) if b.sink]
        if sinking:
            await self.tiering.sink(sinking)
        if self.write_through:
            await self._write_through(metas)
        self._count(reservation)
        return PutResult(
            len(metas), reservation.num_present, reservation.num_in_flight, reservation.num_skipped
        )

    async def _write_staged(self, reservation: Reservation, metas: list[BlockMeta]) -> None:
        """Write the blocks whose buffers are not their slots into their tiers."""
        by_tier: dict[TierKind, list[WriteItem]] = {}
        for meta, block in zip(metas, reservation.blocks, strict=True):
            if block.staged:
                item = WriteItem(block_record(meta, meta.slot), block.buffer[: meta.length_bytes])
                by_tier.setdefault(block.tier, []).append(item)
        for tier, items in by_tier.items():
            await self.tiering.tiers[tier].write(items)

    def _count(self, reservation: Reservation) -> None:
        top = self.tiering.top
        self.stats.put_blocks += len(reservation.blocks)
        self.stats.put_slow_blocks += sum(
            1 for b in reservation.blocks if b.sink or b.tier is not top
        )
        self.stats.put_skipped_blocks += reservation.num_skipped

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
            for block in reservation.blocks:
                self.tiering.tiers[block.tier].slots.free(block.slot)
        self.staging.give(reservation.staging)
        reservation.staging = []
        self.reservations.finish(reservation, state)

    def _buffers(
        self,
        tier: TierKind,
        slots: list[SlotId],
        block_bytes: int,
        sources: list[memoryview] | None,
        staging: list[memoryview],
    ) -> tuple[list[memoryview], bool]:
        """Where each block is written, and whether the tier still has to be written at
        commit (staged); pooled staging buffers taken are appended to ``staging``."""
        views = [self.tiering.tiers[tier].view(slot) for slot in slots]
        if all(v is not None for v in views):
            return [v[:block_bytes] for v in views if v is not None], False
        if sources is not None:
            return list(sources), True
        taken = self.staging.take(len(slots), block_bytes)
        staging.extend(taken)
        return [b[:block_bytes] for b in taken], True
