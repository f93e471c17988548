"""Moving blocks between tiers: making room, demotion, promotion, dropping, freeing.

This is the mechanism half of eviction: the index (with its policy) names victims, this
module moves their bytes and keeps the invariants:

* **One home, plus an inclusive NVMe copy.** A block lives in exactly one tier (its home:
  ``meta.tier``/``meta.slot``, what lookups report). A block homed in a faster tier may
  also keep a copy on NVMe (``meta.nvme_slot``, listed in ``copies``): promotion from
  NVMe keeps the NVMe slot as that copy, write-through and the shutdown write-down make
  one. A move copies the bytes, verifies them, points the index at the new slot, and only
  then lets go of the old slot (unless the old slot becomes the copy).
* **Evicting a block that has a copy is a drop, not a demotion.** No bytes move: the
  copy becomes the home and the fast slot is freed (counted as a demotion, since the
  block now answers from NVMe). When NVMe needs room and its own victims run out, copies
  are dropped, oldest first (an approximation of LRU: a copy's age, not its last access);
  their blocks stay cached in the faster tier, only no longer durable.
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
* **A failed tier is left alone for a while.** When a write into a tier fails (a full
  disk), the tier is *down* for ``retry_s``: allocations in it fail at once with
  ``TierUnavailable`` (so nothing is evicted from it for nothing), demotions skip it. One
  warning per episode; the next write after ``retry_s`` tries again.

Checksums are verified whenever bytes leave memory for disk (demotion to NVMe, copies)
and whenever they come back (every NVMe read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from kvstore.buffers import StagingPool
from kvstore.errors import CapacityExceeded, KVStoreError, TierUnavailable
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
        retry_s: float = 1.0,
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
        self.retry_s = retry_s
        self.copies: dict[BlockKey, BlockMeta] = {}  # blocks with an NVMe copy, oldest first
        self._down_until: dict[TierKind, float] = {}

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
        if self.is_down(tier):
            raise TierUnavailable(
                f"tier {tier.value} is unavailable after a failed write; retrying within"
                f" {self.retry_s:g} s"
            )
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
        if tier is TierKind.NVME and pool.available(length_bytes) < count:
            await self.drop_copies(count - pool.available(length_bytes), length_bytes)
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

    def is_down(self, tier: TierKind) -> bool:
        """Whether a recent write into ``tier`` failed (see the module docstring)."""
        until = self._down_until.get(tier)
        return until is not None and self._clock() < until

    async def evict(self, victims: list[BlockMeta], tier: TierKind) -> None:
        """Demote ``victims`` (all in ``tier``) one tier down, or drop them from the last."""
        lower = self.below(tier)
        if lower is None:
            await self.drop(victims, MissReason.EVICTED)
            return
        if lower is TierKind.NVME:
            backed = [meta for meta in victims if meta.nvme_slot is not None]
            self._fall_back_to_copies(backed)
            await self._flush_ready(backed)
            victims = [meta for meta in victims if meta.state is BlockState.MOVING]
            if not victims:
                return
        for meta in victims:
            self.index.acquire(meta)
        try:
            moved = await self._move(victims, lower)
            self.stats.demotions[tier, lower] += moved
        except (KVStoreError, OSError) as exc:
            # CapacityExceeded is the normal case: every block of the slower tier is an
            # ancestor of a cached block, pinned or being read; TierUnavailable from a
            # tier already down was reported when it went down. Anything else is news.
            quiet = isinstance(exc, CapacityExceeded) or self.is_down(lower)
            log = logger.debug if quiet else logger.warning
            log("demotion %s -> %s failed (%s); dropping instead", tier.value, lower.value, exc)
            await self._drop_leaves(victims)
        finally:
            await self.release(victims)

    def _fall_back_to_copies(self, metas: Sequence[BlockMeta]) -> None:
        """MOVING blocks with an NVMe copy leave their tier: the copy becomes their home.
        No bytes move; the old slots are retired (freed by the caller's flush)."""
        for meta in metas:
            slot, source = meta.nvme_slot, meta.tier
            assert slot is not None and meta.state is BlockState.MOVING
            meta.nvme_slot = None
            self.copies.pop(meta.key, None)
            self.retire(meta, meta.tier, meta.slot)
            self.index.move(meta, TierKind.NVME, slot)
            self.stats.demotions[source, TierKind.NVME] += 1

    async def _drop_leaves(self, victims: list[BlockMeta]) -> None:
        """Drop the victims that strand nothing; keep the others where they are.

        Victims come children first, so each check sees the fate of the ones before it.
        """
        for meta in victims:
            if meta.state is not BlockState.MOVING:
                continue
            if meta.nvme_slot is not None:
                self._fall_back_to_copies([meta])
            elif self.index.has_cached_children(meta):
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
            self._retire_copy(meta)
        await self._flush_ready(victims)

    async def drop_copies(self, count: int, length_bytes: int | None = None) -> int:
        """Let go of up to ``count`` NVMe copies (of blocks of ``length_bytes``, when
        given: the size class that needs the slots), oldest first; their blocks stay
        cached in their faster tier. Returns how many copies went."""
        metas: list[BlockMeta] = []
        for meta in self.copies.values():  # oldest first; stops at ``count``
            if len(metas) >= count:
                break
            if length_bytes is None or meta.length_bytes == length_bytes:
                metas.append(meta)
        for meta in metas:
            self._retire_copy(meta)
        await self._flush_ready(metas)
        return len(metas)

    def _retire_copy(self, meta: BlockMeta) -> None:
        if meta.nvme_slot is not None:
            self.retire(meta, TierKind.NVME, meta.nvme_slot)
            meta.nvme_slot = None
        self.copies.pop(meta.key, None)

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

    async def sink(self, metas: Sequence[BlockMeta]) -> int:
        """Move just-committed blocks to the slowest tier: their admission put them there,
        but their writer could only write into the fastest tier's memory. Best effort: a
        block that cannot move (the slow tier is full of ancestors, or fails) stays where
        it is. Returns how many moved."""
        lowest = self.order[-1]
        todo = [m for m in metas if m.state is BlockState.RESIDENT and m.tier is not lowest]
        if not todo:
            return 0
        for meta in todo:
            self.index.begin_move(meta)
            self.index.acquire(meta)
        try:
            return await self._move(todo, lowest)
        except (KVStoreError, OSError) as exc:
            logger.debug("%d admitted blocks stay in %s: %s", len(todo), todo[0].tier.value, exc)
            for meta in todo:
                if meta.state is BlockState.MOVING:
                    self.index.abandon_move(meta)
            return 0
        finally:
            await self.release(todo)

    # -- NVMe copies -------------------------------------------------------------------

    async def write_copies(self, metas: Sequence[BlockMeta]) -> int:
        """Give each resident block homed in a faster tier, and without one, an NVMe copy.

        The blocks are held (as readers) while their bytes are copied. Returns how many
        copies were made. All or nothing per tier of origin.

        Raises:
            TierUnavailable: the NVMe tier failed (or is down after a recent failure).
            CapacityExceeded: NVMe could not make room.
        """
        todo = [
            meta
            for meta in metas
            if meta.state is BlockState.RESIDENT
            and meta.tier is not TierKind.NVME
            and meta.nvme_slot is None
        ]
        made = 0
        for tier in {meta.tier for meta in todo}:
            group = [meta for meta in todo if meta.tier is tier]
            for meta in group:
                self.index.acquire(meta)
            try:
                made += await self._copy_down(group)
            finally:
                await self.release(group)
        return made

    async def _copy_down(self, metas: list[BlockMeta]) -> int:
        made = 0
        for meta, slot in await self._copy_to(metas, TierKind.NVME, None):
            if meta.state is BlockState.REMOVED or meta.nvme_slot is not None:
                await self.tiers[TierKind.NVME].free([SlotRef(slot, meta.key)])
                continue
            meta.nvme_slot = slot
            self.copies[meta.key] = meta
            made += 1
        return made

    async def write_down(self, deadline_s: float, batch_blocks: int = 64) -> int:
        """Copy blocks held only by faster tiers down to NVMe, in index order (parents
        before children) and in batches, until ``deadline_s`` (checked between batches).
        Returns how many blocks got a copy; 0 without an NVMe tier under a faster one."""
        if TierKind.NVME not in self.tiers or self.top is TierKind.NVME:
            return 0
        todo = [
            meta
            for meta in self.index.blocks()
            if meta.tier is not TierKind.NVME and meta.nvme_slot is None
        ]
        made = 0
        for start in range(0, len(todo), batch_blocks):
            if self._clock() >= deadline_s:
                logger.warning(
                    "write-down stopped at its deadline: %d blocks left", len(todo) - start
                )
                break
            try:
                made += await self.write_copies(todo[start : start + batch_blocks])
            except KVStoreError as exc:
                logger.warning("write-down stopped after %d blocks: %s", made, exc)
                break
        return made

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
        from the blocks' current tier. A block leaving NVMe keeps its NVMe slot as its
        copy. Returns how many blocks moved.
        """
        moved = 0
        for meta, slot in await self._copy_to(metas, target, data):
            if meta.state is BlockState.REMOVED:  # removed while moving: undo the copy
                await self.tiers[target].free([SlotRef(slot, meta.key)])
                continue
            if meta.tier is TierKind.NVME:
                meta.nvme_slot = meta.slot
                self.copies[meta.key] = meta
            else:
                self.retire(meta, meta.tier, meta.slot)
            self.index.move(meta, target, slot)
            moved += 1
        return moved

    async def _copy_to(
        self,
        metas: list[BlockMeta],
        target: TierKind,
        data: Sequence[memoryview] | None,
    ) -> list[tuple[BlockMeta, SlotId]]:
        """Write the blocks' bytes into new slots of ``target``; (block, slot) for each
        block written. Blocks whose bytes fail their checksum are removed on the way.

        Raises:
            TierUnavailable: the write failed (``target`` is then down for ``retry_s``).
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
            except BaseException as exc:
                for _, slot in kept:
                    pool.free(slot)
                if isinstance(exc, (KVStoreError, OSError)):
                    self._went_down(target, exc)
                raise
        finally:
            self.staging.give(staging)
        if self._down_until.pop(target, None) is not None:
            logger.info("tier %s takes writes again", target.value)
        return kept

    def _went_down(self, tier: TierKind, exc: BaseException) -> None:
        if tier not in self._down_until:
            logger.warning(
                "tier %s failed a write (%s); it is skipped for %g s at a time until a write"
                " succeeds",
                tier.value,
                exc,
                self.retry_s,
            )
        self._down_until[tier] = self._clock() + self.retry_s

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
            self._retire_copy(meta)

    async def _flush_ready(self, metas: Sequence[BlockMeta]) -> None:
        """Free the retired slots of blocks that no reader holds, one batch per tier.

        A slot leaves ``retired_slots`` only once its tier took the free; if the tier
        raises, the slots go back to their blocks and the next release retries them.
        """
        owners: dict[TierKind, list[tuple[BlockMeta, SlotId]]] = {}
        for meta in metas:
            if meta.num_readers == 0:
                for tier, slot in meta.retired_slots:
                    owners.setdefault(tier, []).append((meta, slot))
                meta.retired_slots.clear()
        for tier, owned in owners.items():
            try:
                await self.tiers[tier].free([SlotRef(slot, meta.key) for meta, slot in owned])
            except (KVStoreError, OSError) as exc:
                logger.warning("freeing %d %s slots failed: %s", len(owned), tier.value, exc)
                for meta, slot in owned:
                    meta.retired_slots.append((tier, slot))


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
