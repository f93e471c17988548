"""Moving blocks between tiers: making room, demotion, promotion, dropping, freeing.

This is the mechanism half of eviction: the index (with its policy) names victims, this
module moves their bytes and keeps the invariants:

* **One home.** A block lives in exactly one tier. A move copies the bytes, verifies
  them, points the index at the new slot, and only then lets go of the old slot.
* **No free under a reader.** A slot is returned to its pool only when no reader holds
  the block; otherwise it waits on the block's ``retired_slots`` and is freed when the
  last reader releases (``release``). The mover itself holds the block as a reader.
* **Size classes.** Slots come from a tier's pages, each carved for one block size
  (``tiers.slots``). Room for blocks of size S is made by evicting blocks of size S
  (their slots are the ones that help), or, when S's class holds less than its fair
  share of pages (``policy.pages``), by evicting every block of one page of another
  class so the page can be re-carved; never by evicting blocks that free nothing usable.
* **Bounded work.** ``make_room`` examines at most ``budget_blocks + 2 * needed``
  candidates per call (a candidate touched since it was queued costs one re-queue; a
  page examined costs its blocks) and reports failure instead of scanning the tier.
* **Demote, don't drop.** Victims of tier T go to the next slower enabled tier; only the
  slowest tier drops blocks. If the slower tier cannot take them (each of its blocks is
  an ancestor of a cached block, pinned or being read; or an I/O error), the victims
  with no cached child anywhere are dropped and the others stay, so nothing is stranded.

Checksums are verified whenever bytes leave memory for disk (demotion to NVMe) and
whenever they come back (every NVMe read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from kvstore.buffers import StagingPool
from kvstore.errors import CapacityExceeded, KVStoreError
from kvstore.hashing import checksum
from kvstore.index import BlockIndex, BlockMeta
from kvstore.policy.pages import FairSharePages
from kvstore.policy.promotion import PromotionPolicy
from kvstore.stats import StoreStats
from kvstore.tiers.base import BlockRecord, ReadItem, SlotRef, Tier, WriteItem
from kvstore.types import BlockKey, BlockState, MissReason, SlotId, TierKind

logger = logging.getLogger(__name__)


class Tiering:
    def __init__(
        self,
        tiers: dict[TierKind, Tier],
        index: BlockIndex,
        stats: StoreStats,
        *,
        staging: StagingPool,
        promotion: PromotionPolicy,
        budget_blocks: int,
        clock: Callable[[], float],
    ) -> None:
        self.tiers = tiers
        self.order = sorted(tiers, key=lambda t: t.rank)
        self.index = index
        self.stats = stats
        self.staging = staging
        self.promotion = promotion
        self.pages = FairSharePages()
        self.budget_blocks = budget_blocks
        self._clock = clock

    @property
    def top(self) -> TierKind:
        return self.order[0]

    def below(self, tier: TierKind) -> TierKind | None:
        i = self.order.index(tier)
        return self.order[i + 1] if i + 1 < len(self.order) else None

    def above(self, tier: TierKind) -> TierKind | None:
        i = self.order.index(tier)
        return self.order[i - 1] if i > 0 else None

    # -- allocation -------------------------------------------------------------------

    async def allocate(
        self, tier: TierKind, length_bytes: int, owners: Sequence[BlockKey]
    ) -> list[SlotId]:
        """One slot of ``tier`` per owner, for blocks of ``length_bytes``, evicting as
        needed; all or nothing.

        Raises:
            CapacityExceeded: the tier is too small, or too few blocks could be evicted
                within the budget (the rest are pinned or being read).
        """
        pool = self.tiers[tier].slots
        count = len(owners)
        if count > pool.max_slots(length_bytes):
            raise CapacityExceeded(
                f"{count} blocks of {length_bytes} bytes do not fit tier {tier.value}"
                f" ({pool.max_slots(length_bytes)} slots of that size)"
            )
        await self.make_room(tier, length_bytes, count)
        slots = pool.allocate(length_bytes, owners)
        if slots is None:
            raise CapacityExceeded(
                f"tier {tier.value}: {count} slots of {length_bytes} bytes needed,"
                f" {pool.available(length_bytes)} free; the other blocks are pinned,"
                " being read or being moved"
            )
        return slots

    async def make_room(self, tier: TierKind, length_bytes: int, count: int) -> bool:
        """Evict from ``tier`` until ``count`` slots for blocks of ``length_bytes`` are free:
        blocks of that size, or a whole page of another size class when the pages policy
        says so. False if the budget ran out."""
        pool = self.tiers[tier].slots
        budget = self.budget_blocks + 2 * count
        while pool.available(length_bytes) < count and budget > 0:
            victims = self._page_victims(tier, length_bytes, budget)
            if victims:
                budget -= len(victims)
            else:
                needed = count - pool.available(length_bytes)
                now = self._clock()
                batch = self.index.select_victims(tier, needed, now, budget, length_bytes)
                budget -= max(batch.num_examined, 1)
                victims = batch.victims
            if not victims:
                break
            await self.evict(victims, tier)
        return pool.available(length_bytes) >= count

    async def evict_blocks(self, tier: TierKind, num_blocks: int) -> None:
        """Push up to ``num_blocks`` blocks of any size out of ``tier``, least recent first."""
        budget = self.budget_blocks + 2 * num_blocks
        while num_blocks > 0 and budget > 0:
            batch = self.index.select_victims(tier, num_blocks, self._clock(), budget)
            budget -= max(batch.num_examined, 1)
            if not batch.victims:
                break
            num_blocks -= len(batch.victims)
            await self.evict(batch.victims, tier)

    def _page_victims(
        self, tier: TierKind, length_bytes: int, budget: int
    ) -> list[BlockMeta] | None:
        """Every block of one page of another size class, when ``length_bytes``'s class is
        below its share of pages (``FairSharePages``): the donor's page with the fewest
        blocks that can all go now. None when the class must evict its own blocks."""
        pool = self.tiers[tier].slots
        donor = self.pages.donor(length_bytes, pool.pages_per_class(), pool.num_pages)
        if donor is None:
            return None
        slowest = self.below(tier) is None
        for page in pool.pages_of(donor):
            owners = pool.owners_in(page)
            if not owners:
                continue  # an empty page: the allocator takes it over by itself
            victims = self.index.take_all(tier, owners, self._clock(), keep_parents=slowest)
            if victims is not None:
                return victims
            budget -= len(owners)
            if budget <= 0:
                break
        return None

    async def evict(self, victims: list[BlockMeta], tier: TierKind) -> None:
        """Demote ``victims`` (all in ``tier``) one tier down, or drop them from the last."""
        lower = self.below(tier)
        if lower is None:
            await self.drop(victims, MissReason.EVICTED)
            return
        for meta in victims:
            self.index.acquire(meta)
        try:
            moved = await self._move(victims, lower)
            self.stats.demotions[tier, lower] += moved
        except (KVStoreError, OSError) as exc:
            # CapacityExceeded is the normal case: every block of the slower tier is an
            # ancestor of a cached block, pinned or being read. Anything else is an error.
            log = logger.debug if isinstance(exc, CapacityExceeded) else logger.warning
            log("demotion %s -> %s failed (%s); dropping instead", tier.value, lower.value, exc)
            await self._drop_leaves(victims)
        finally:
            await self.release(victims)

    async def _drop_leaves(self, victims: list[BlockMeta]) -> None:
        """Drop the victims that strand nothing; keep the others where they are.

        Victims come children first, so each check sees the fate of the ones before it.
        """
        for meta in victims:
            if meta.state is not BlockState.MOVING:
                continue
            if self.index.has_cached_children(meta):
                self.index.abandon_move(meta)
            else:
                await self.drop([meta], MissReason.EVICTED)

    async def drop(self, victims: Sequence[BlockMeta], reason: MissReason) -> None:
        """Remove blocks from the store; their slots are freed once no reader holds them."""
        for meta in victims:
            if meta.state is BlockState.REMOVED:
                continue
            if reason is MissReason.EVICTED:
                self.stats.evictions[meta.tier] += 1
            self.index.remove(meta, reason)
            self.retire(meta, meta.tier, meta.slot)
        await self._flush_ready(victims)

    # -- promotion --------------------------------------------------------------------

    async def promote(self, hits: Sequence[tuple[BlockMeta, memoryview]]) -> None:
        """Move blocks just served from a slow tier up one tier, per the promotion policy.

        ``hits`` pairs each block with its verified bytes, so no second read is needed.
        Promotion is best effort: when the faster tier cannot make room, blocks stay.
        """
        by_target: dict[TierKind, list[tuple[BlockMeta, memoryview]]] = {}
        for meta, data in hits:
            target = self.above(meta.tier)
            if (
                target is not None
                and meta.state is BlockState.RESIDENT
                and self.promotion.should_promote(meta.num_hits, meta.tier)
            ):
                by_target.setdefault(target, []).append((meta, data))
        for target, items in by_target.items():
            metas = [meta for meta, _ in items]
            source = metas[0].tier
            for meta in metas:
                self.index.begin_move(meta)
                self.index.acquire(meta)
            try:
                moved = await self._move(metas, target, data=[d for _, d in items])
                self.stats.promotions[source, target] += moved
            except (KVStoreError, OSError) as exc:
                logger.debug("promotion to %s skipped: %s", target.value, exc)
                for meta in metas:
                    if meta.state is BlockState.MOVING:
                        self.index.abandon_move(meta)
            finally:
                await self.release(metas)

    # -- readers and freeing ------------------------------------------------------------

    async def release(self, metas: Sequence[BlockMeta]) -> None:
        """Readers (or a mover) are done with ``metas``; free slots nobody holds any more."""
        for meta in metas:
            self.index.release(meta)
        await self._flush_ready(metas)

    def retire(self, meta: BlockMeta, tier: TierKind, slot: SlotId) -> None:
        """``meta`` no longer lives in ``slot``; free it when no reader holds ``meta``."""
        meta.retired_slots.append((tier, slot))

    # -- internals --------------------------------------------------------------------

    async def _move(
        self,
        metas: list[BlockMeta],
        target: TierKind,
        data: Sequence[memoryview] | None = None,
    ) -> int:
        """Copy MOVING blocks into new slots of ``target`` and repoint the index.

        ``data``, when given, holds each block's verified bytes; otherwise they are read
        from the blocks' current tier. Returns how many blocks moved.
        """
        pool = self.tiers[target].slots
        slots = await self._allocate_for(target, metas)
        staging: list[memoryview] = []
        try:
            sources = list(data) if data is not None else await self._source(metas, staging)
            items, kept = [], []
            for meta, slot, src in zip(metas, slots, sources, strict=True):
                if src is None or (
                    target is TierKind.NVME and checksum(src[: meta.length_bytes]) != meta.checksum
                ):
                    self._corrupted(meta)
                    pool.free(slot)
                    continue
                items.append(WriteItem(block_record(meta, slot), src[: meta.length_bytes]))
                kept.append((meta, slot))
            try:
                await self.tiers[target].write(items)
            except BaseException:
                for _, slot in kept:
                    pool.free(slot)
                raise
        finally:
            self.staging.give(staging)
        moved = 0
        for meta, slot in kept:
            if meta.state is BlockState.REMOVED:  # removed while moving: undo the copy
                await self.tiers[target].free([SlotRef(slot, meta.key)])
                continue
            self.retire(meta, meta.tier, meta.slot)
            self.index.move(meta, target, slot)
            moved += 1
        return moved

    async def _allocate_for(self, tier: TierKind, metas: list[BlockMeta]) -> list[SlotId]:
        """A slot of ``tier`` for each block (grouped by size class); all or nothing."""
        by_length: dict[int, list[int]] = {}
        for i, meta in enumerate(metas):
            by_length.setdefault(meta.length_bytes, []).append(i)
        slots: list[SlotId | None] = [None] * len(metas)
        try:
            for length, positions in by_length.items():
                got = await self.allocate(tier, length, [metas[i].key for i in positions])
                for i, slot in zip(positions, got, strict=True):
                    slots[i] = slot
        except BaseException:
            for taken in slots:
                if taken is not None:
                    self.tiers[tier].slots.free(taken)
            raise
        return [s for s in slots if s is not None]

    async def _source(
        self, metas: list[BlockMeta], staging: list[memoryview]
    ) -> list[memoryview | None]:
        """Each block's bytes in host memory: a view of its slot, or a verified copy in
        pooled ``staging``; None for a block whose copy failed its checksum."""
        tier = self.tiers[metas[0].tier]
        views = [tier.view(meta.slot) for meta in metas]
        if all(v is not None for v in views):
            return list(views)
        for meta in metas:
            staging.extend(self.staging.take(1, meta.length_bytes))
        items = [
            ReadItem(m.slot, m.length_bytes, m.checksum, b[: m.length_bytes])
            for m, b in zip(metas, staging, strict=True)
        ]
        ok = await tier.read(items)
        return [item.dst if good else None for item, good in zip(items, ok, strict=True)]

    async def discard_corrupted(self, metas: Sequence[BlockMeta]) -> None:
        """Remove blocks whose bytes failed their checksum; they are never served."""
        for meta in metas:
            self._corrupted(meta)
        await self._flush_ready(metas)

    def _corrupted(self, meta: BlockMeta) -> None:
        logger.warning("block %s corrupted in tier %s", meta.key.hex(), meta.tier.value)
        self.stats.corrupted_blocks[meta.tier] += 1
        if meta.state is not BlockState.REMOVED:
            self.index.remove(meta, MissReason.CORRUPTED)
            self.retire(meta, meta.tier, meta.slot)

    async def _flush_ready(self, metas: Sequence[BlockMeta]) -> None:
        """Free the retired slots of blocks that no reader holds, one batch per tier."""
        refs: dict[TierKind, list[SlotRef]] = {}
        for meta in metas:
            if meta.num_readers == 0:
                for tier, slot in meta.retired_slots:
                    refs.setdefault(tier, []).append(SlotRef(slot, meta.key))
                meta.retired_slots.clear()
        for tier, tier_refs in refs.items():
            await self.tiers[tier].free(tier_refs)


def block_meta(record: BlockRecord, tier: TierKind) -> BlockMeta:
    """The index entry of a block a persistent tier recovered (inverse of block_record)."""
    return BlockMeta(
        key=record.key,
        namespace_id=record.namespace_id,
        parent=record.parent,
        length_bytes=record.length_bytes,
        checksum=record.checksum,
        tier=tier,
        slot=record.slot,
        created_s=record.created_s,
        last_access_s=record.last_access_s,
    )


def block_record(meta: BlockMeta, slot: SlotId) -> BlockRecord:
    """What a persistent tier stores about ``meta`` once it lives in ``slot``."""
    return BlockRecord(
        key=meta.key,
        namespace_id=meta.namespace_id,
        parent=meta.parent,
        slot=slot,
        length_bytes=meta.length_bytes,
        checksum=meta.checksum,
        created_s=meta.created_s,
        last_access_s=meta.last_access_s,
    )
