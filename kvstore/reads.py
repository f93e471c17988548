"""The read path: pin the longest cached run, copy or view its bytes, account for it.

Blocks are acquired for the whole read, so they cannot be evicted, moved away or freed
underneath it. Memory-tier blocks are copied straight from their slots (or handed out as
views); disk and device blocks are read by their tier, which verifies checksums. A block
that fails its checksum ends the run there, is removed and counted, and is never served.
Hits are touched in key order (parents first) and may be promoted before the pins drop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

from kvstore.buffers import StagingPool
from kvstore.hashing import Namespace
from kvstore.index import BlockIndex, BlockMeta
from kvstore.stats import StoreStats
from kvstore.tiering import Tiering
from kvstore.tiers.base import ReadItem
from kvstore.types import BlockKey, MissReason, TierKind

Hit = tuple[BlockMeta, memoryview]


class LeasedRun(NamedTuple):
    blocks: list[BlockMeta]  # pinned, in host-memory tiers, until released
    miss_reason: MissReason | None  # set when the run ended at a missing block


class ReadPath:
    def __init__(
        self, index: BlockIndex, tiering: Tiering, stats: StoreStats, staging: StagingPool
    ) -> None:
        self.index = index
        self.tiering = tiering
        self.stats = stats
        self.staging = staging

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        namespace: Namespace,
        keys: Sequence[BlockKey],
        dsts: list[memoryview] | None,
        *,
        count_misses: bool = True,
    ) -> AsyncIterator[tuple[list[Hit], MissReason | None]]:
        """Pin and read the leading run; yields (block, bytes) for each verified hit, and
        why the block after the run was not served. Counts the hits, and the misses unless
        ``count_misses`` is False (the caller goes on elsewhere and counts them).

        With ``dsts``, bytes are copied there; without, memory blocks are views of their
        slots and other blocks are pooled copies, both valid until the context exits.
        """
        run = self.index.longest_run(namespace.id, keys)
        metas = run.blocks
        staging: list[memoryview] = []
        for meta in metas:
            self.index.acquire(meta)
        try:
            datas = await self._read(metas, dsts, staging)
            num_hits = next((i for i, d in enumerate(datas) if d is None), len(datas))
            hits = [(m, d) for m, d in zip(metas[:num_hits], datas, strict=False) if d is not None]
            reason = run.miss_reason if num_hits == len(metas) else MissReason.CORRUPTED
            num_missed = len(keys) - num_hits if count_misses else 0
            self.stats.record_get(namespace.id, [m.tier for m, _ in hits], num_missed, reason)
            now = time.time()
            for meta, _ in hits:
                self.index.touch(meta, now)
            yield hits, (reason if num_hits < len(keys) else None)
            await self.tiering.promote([h for h in hits if h[0].tier is not self.tiering.top])
        finally:
            await self.tiering.release(metas)
            self.staging.give(staging)

    def lease(self, namespace: Namespace, keys: Sequence[BlockKey]) -> LeasedRun:
        """Pin the leading run of blocks that sit in host memory, for a reader in another
        process that copies them out of the shared arena itself; ``release`` unpins.

        Counts hits for the leased blocks and no misses: a reader left short fetches the
        rest another way (a read of the remaining keys), and that read counts them, so a
        block is never counted twice.
        """
        run = self.index.longest_run(namespace.id, keys)
        leased: list[BlockMeta] = []
        for meta in run.blocks:
            if self.tiering.tiers[meta.tier].view(meta.slot) is None:
                break
            self.index.acquire(meta)
            leased.append(meta)
        complete_run = len(leased) == len(run.blocks)
        reason = run.miss_reason if complete_run and len(leased) < len(keys) else None
        self.stats.record_get(namespace.id, [m.tier for m in leased], 0, None)
        now = time.time()
        for meta in leased:
            self.index.touch(meta, now)
        return LeasedRun(leased, reason)

    async def release(self, metas: Sequence[BlockMeta]) -> None:
        await self.tiering.release(metas)

    async def _read(
        self, metas: list[BlockMeta], dsts: list[memoryview] | None, staging: list[memoryview]
    ) -> list[memoryview | None]:
        """Each block's bytes, or None where its checksum failed."""
        out: list[memoryview | None] = [None] * len(metas)
        pending: dict[TierKind, list[tuple[int, ReadItem]]] = {}
        for i, meta in enumerate(metas):
            view = self.tiering.tiers[meta.tier].view(meta.slot)
            if view is not None:
                src = view[: meta.length_bytes]
                if dsts is not None:
                    dsts[i][: meta.length_bytes] = src
                out[i] = src if dsts is None else dsts[i]
                continue
            if dsts is not None:
                dst = dsts[i]
            else:
                (buffer,) = self.staging.take(1, meta.length_bytes)
                staging.append(buffer)
                dst = buffer[: meta.length_bytes]
            pending.setdefault(meta.tier, []).append(
                (i, ReadItem(meta.slot, meta.length_bytes, meta.checksum, dst))
            )
        for kind, entries in pending.items():
            ok = await self.tiering.tiers[kind].read([item for _, item in entries])
            bad = [metas[i] for (i, _), good in zip(entries, ok, strict=True) if not good]
            for (i, item), good in zip(entries, ok, strict=True):
                out[i] = item.dst if good else None
            await self.tiering.discard_corrupted(bad)
        return out
