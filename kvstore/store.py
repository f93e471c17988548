"""The node store: one process's tiered, prefix-keyed KV block store.

Puts land in the tier their admission policy chooses (the fastest by default; see
``writes``) and sink as they age (hbm -> dram -> nvme -> dropped); hits in a slow tier
may rise again (promotion). All bookkeeping happens on the event-loop thread, so metadata
changes between two ``await`` points are atomic; byte copies to and from disk and device
run on the tiers' own threads.

Guarantees (each tested):
    * Readers never see partial bytes: a block is visible only after ``commit``.
    * A block being read is never evicted, moved away or overwritten: reads pin blocks
      for their duration, and slots are freed only when no reader holds them.
    * A miss is a normal result: gets return how many leading blocks hit.
    * A block whose checksum fails is never served: it is removed and counted.
    * Keys are immutable: putting a key that is present stores nothing.
    * Namespaces are bounded: at most ``store.max_namespaces`` are registered, each
      model id and salt at most ``store.max_model_id_bytes`` bytes; a removed namespace
      keeps no block and does not come back after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple

from kvstore.buffers import StagingPool
from kvstore.config import Config
from kvstore.errors import CapacityExceeded, InvalidArgument, NotFound
from kvstore.hashing import Namespace, check_key
from kvstore.index import BlockIndex, BlockMeta
from kvstore.policy.admission import make_admission_policy
from kvstore.policy.eviction import make_eviction_policy
from kvstore.policy.promotion import PromotionPolicy
from kvstore.reads import LeasedRun, ReadPath
from kvstore.reservations import PutResult, Reservation
from kvstore.stats import StatsSnapshot, StoreStats, TierUsage
from kvstore.tiering import Tiering, block_meta
from kvstore.tiers.base import Tier
from kvstore.tiers.dram import DramTier
from kvstore.tiers.factory import open_tiers
from kvstore.types import BlockKey, MissReason, NamespaceId, TierKind
from kvstore.validation import check_keys, readable, writable
from kvstore.writes import WritePath

logger = logging.getLogger(__name__)


class GetResult(NamedTuple):
    num_hits: int  # leading blocks copied into the caller's buffers
    tiers: list[TierKind]  # the tier that served each hit


class LookupResult(NamedTuple):
    num_blocks: int  # length of the longest cached leading run
    tiers: list[TierKind]  # where each block of the run lives
    miss_reason: MissReason | None  # why the block after the run is missing


class BlockView(NamedTuple):
    key: BlockKey
    tier: TierKind
    checksum: int  # xxh3-64 of data
    data: memoryview  # read-only; valid until the read context exits


class PinnedBlock(NamedTuple):
    meta: BlockMeta
    ttl_s: float  # seconds left


class ReadRun(NamedTuple):
    blocks: list[BlockView]  # the longest cached leading run
    miss_reason: MissReason | None  # why the block after it was not served


class NodeStore:
    """Tiered block store of one node. Create with ``await NodeStore.open(config)``."""

    def __init__(
        self,
        config: Config,
        tiers: dict[TierKind, Tier],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._namespaces: dict[NamespaceId, Namespace] = {}
        self._stats = StoreStats(since_s=time.time())
        self.index = BlockIndex(
            make_eviction_policy(config.store.eviction_policy),
            removal_record_blocks=config.store.removal_record_blocks,
        )
        staging = StagingPool(config.store.staging_bytes)
        self.tiering = Tiering(
            tiers,
            self.index,
            self._stats,
            staging=staging,
            promotion=PromotionPolicy(config.store.promotion_min_hits),
            budget_blocks=config.store.eviction_budget_blocks,
            clock=clock,
        )
        self._writes = WritePath(
            self.index,
            self.tiering,
            self._stats,
            staging,
            reservation_timeout_s=config.store.reservation_timeout_s,
            clock=clock,
            write_through=config.tiers.nvme.write_through,
            admission=make_admission_policy(
                config.store.admission_policy, config.store.admission_window_blocks
            ),
        )
        self._reads = ReadPath(self.index, self.tiering, self._stats, staging)
        self.closed = False
        self._recover()

    @classmethod
    async def open(
        cls, config: Config, *, clock: Callable[[], float] = time.monotonic
    ) -> NodeStore:
        """Open the configured tiers (recovering persistent ones) and the store over them."""
        tiers = await asyncio.to_thread(open_tiers, config)
        return cls(config, tiers, clock=clock)

    async def close(self) -> None:
        """Abandon open reservations and close the tiers; idempotent."""
        if self.closed:
            return
        self.closed = True
        for reservation in self._writes.reservations.expired(float("inf")):
            self._writes.abort(reservation)
        for tier in self.tiering.tiers.values():
            await tier.close()

    async def __aenter__(self) -> NodeStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- namespaces ---------------------------------------------------------------------

    def register_namespace(self, namespace: Namespace) -> NamespaceId:
        """Accept blocks of ``namespace``; idempotent. Returns its id.

        Raises:
            InvalidArgument: blocks too large, or a model id or salt over the limit.
            CapacityExceeded: ``store.max_namespaces`` namespaces are registered already.
        """
        limits = self.config.store
        if namespace.block_bytes > limits.block_bytes:
            raise InvalidArgument(
                f"namespace {namespace.model_id!r} has blocks of {namespace.block_bytes} bytes,"
                f" larger than this node's largest block, store.block_bytes ="
                f" {limits.block_bytes}: raise store.block_bytes (and store.page_bytes) to at"
                f" least {namespace.block_bytes}, or use fewer tokens per block"
            )
        for name, value in (("model_id", namespace.model_id), ("salt", namespace.salt)):
            if (length := len(value.encode())) > limits.max_model_id_bytes:
                raise InvalidArgument(
                    f"namespace.{name}: {length} bytes, over store.max_model_id_bytes"
                    f" = {limits.max_model_id_bytes} (model id {_shown(namespace.model_id)})"
                )
        ns_id = namespace.id
        if ns_id not in self._namespaces:
            if len(self._namespaces) >= limits.max_namespaces:
                raise CapacityExceeded(
                    f"store.max_namespaces = {limits.max_namespaces} namespaces are registered;"
                    f" model id {_shown(namespace.model_id)} refused (an admin can remove one:"
                    " kvstore admin remove-namespace)"
                )
            for tier in self.tiering.tiers.values():
                tier.save_namespace(namespace)
            self._namespaces[ns_id] = namespace
        return ns_id

    async def remove_namespace(self, ns_id: NamespaceId) -> int:
        """Forget a namespace and every block of it, here and in persistent tiers.

        Open reservations of the namespace are aborted; a commit already under way
        drops its blocks when it lands. Returns how many blocks were removed.

        Raises:
            NotFound: unknown namespace.
        """
        self.namespace(ns_id)
        del self._namespaces[ns_id]
        for reservation in self._writes.reservations.expired(float("inf")):
            if reservation.namespace.id == ns_id:
                self._writes.abort(reservation)
        for tier in self.tiering.tiers.values():
            tier.forget_namespace(ns_id)
        metas = [m for m in self.index.blocks() if m.namespace_id == ns_id]
        await self.tiering.drop(metas, MissReason.REMOVED)
        logger.info("removed namespace %s and %d blocks", bytes(ns_id).hex(), len(metas))
        return len(metas)

    def namespace(self, ns_id: NamespaceId) -> Namespace:
        """The registered namespace, or NotFound."""
        try:
            return self._namespaces[ns_id]
        except KeyError:
            raise NotFound(f"unknown namespace {bytes(ns_id).hex()}") from None

    def namespaces(self) -> list[Namespace]:
        return list(self._namespaces.values())

    # -- put ----------------------------------------------------------------------------

    async def reserve(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        parents: Sequence[BlockKey | None],
        *,
        in_memory: bool = False,
    ) -> Reservation:
        """Phase one of a put: slots for the keys that are not stored yet and that the
        admission policy takes (``Reservation.num_skipped`` counts those it refused),
        all or nothing.

        Write each ``ReservedBlock.buffer`` (exactly ``block_bytes``), then ``commit``.
        With ``in_memory`` every buffer is a slot of the fastest tier (blocks admitted
        to a slower tier move there at commit).

        Raises:
            NotFound: unknown namespace. InvalidArgument: malformed keys.
            CapacityExceeded: not enough slots can be freed in the fastest tier.
        """
        namespace = self.namespace(ns_id)
        check_keys(keys)
        if len(parents) != len(keys):
            raise InvalidArgument(f"{len(keys)} keys but {len(parents)} parents")
        check_keys([p for p in parents if p is not None], "parent key")
        return await self._writes.reserve(namespace, keys, parents, in_memory=in_memory)

    async def commit(self, reservation: Reservation) -> PutResult:
        """Phase two: checksum the written bytes and make the blocks visible.

        Raises:
            LeaseExpired: the reservation passed its deadline and was reclaimed.
        """
        return await self._commit(reservation)

    async def abort(self, reservation: Reservation) -> None:
        """Give a reservation's slots back without storing anything."""
        self._writes.abort(reservation)

    async def put(
        self,
        ns_id: NamespaceId,
        keys: Sequence[BlockKey],
        blocks: Sequence[object],
        parent: BlockKey | None = None,
    ) -> PutResult:
        """Store a chain of blocks: ``keys[0]``'s parent is ``parent``, then each the next's.

        Args:
            blocks: One buffer of exactly the namespace's ``block_bytes`` per key.

        Returns:
            How many keys were stored, already present, being written by another put,
            or refused by the admission policy (not stored; a later get misses them).
        """
        namespace = self.namespace(ns_id)
        check_keys(keys)
        if parent is not None:
            check_key(parent, "parent key")
        if len(blocks) != len(keys):
            raise InvalidArgument(f"{len(keys)} keys but {len(blocks)} blocks")
        views = [readable(b, namespace.block_bytes, i) for i, b in enumerate(blocks)]
        parents = [parent, *keys[:-1]] if keys else []
        reservation = await self._writes.reserve(namespace, keys, parents, sources=views)
        for block in reservation.blocks:
            if not block.staged:
                block.buffer[: namespace.block_bytes] = views[block.position]
        return await self._commit(reservation)

    # -- get ----------------------------------------------------------------------------

    async def get_into(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], buffers: Sequence[object]
    ) -> GetResult:
        """Copy the longest cached leading run of ``keys`` into ``buffers``.

        Args:
            buffers: One writable buffer of at least ``block_bytes`` per key; the bytes of
                buffers past ``num_hits`` are unspecified.
        """
        namespace = self.namespace(ns_id)
        check_keys(keys)
        if len(buffers) < len(keys):
            raise InvalidArgument(f"{len(keys)} keys but only {len(buffers)} buffers")
        dsts = [writable(b, namespace.block_bytes, i) for i, b in enumerate(buffers[: len(keys)])]
        async with self._reads.acquire(namespace, keys, dsts) as (hits, _):
            return GetResult(len(hits), [meta.tier for meta, _ in hits])

    @contextlib.asynccontextmanager
    async def read(
        self, ns_id: NamespaceId, keys: Sequence[BlockKey], *, count_misses: bool = True
    ) -> AsyncIterator[ReadRun]:
        """Zero-copy read of the longest cached leading run: memory-tier blocks are views
        of their slots, pinned until the context exits; disk blocks are verified copies.

        Args:
            count_misses: False when the caller looks for the rest of the run elsewhere
                (a peer) and counts what stays missing itself (``record_misses``).
        """
        namespace = self.namespace(ns_id)
        check_keys(keys)
        async with self._reads.acquire(namespace, keys, None, count_misses=count_misses) as (
            hits,
            reason,
        ):
            views = [BlockView(m.key, m.tier, m.checksum, data.toreadonly()) for m, data in hits]
            try:
                yield ReadRun(views, reason)
            finally:
                for view in views:
                    view.data.release()

    def lease(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> LeasedRun:
        """Pin the leading run of host-memory blocks for a reader that copies them out of
        the shared arena itself (see ``ReadPath.lease``); ``release_lease`` unpins.
        Counts hits only: a reader left short reads the rest, which counts the misses."""
        namespace = self.namespace(ns_id)
        check_keys(keys)
        return self._reads.lease(namespace, keys)

    async def release_lease(self, run: LeasedRun) -> None:
        await self._reads.release(run.blocks)

    def shared_arena(self) -> DramTier | None:
        """The DRAM tier, whose arena other processes on the host can map."""
        tier = self.tiering.tiers.get(TierKind.DRAM)
        return tier if isinstance(tier, DramTier) else None

    def record_peer_read(
        self,
        ns_id: NamespaceId,
        num_peer_blocks: int,
        num_missed: int,
        reason: MissReason | None,
    ) -> None:
        """Count the end of a read that went on at a peer (after ``read(count_misses=False)``):
        ``num_peer_blocks`` served from peers, then ``num_missed`` missing for ``reason``."""
        self._stats.record_peer_hits(ns_id, num_peer_blocks)
        self._stats.record_get(ns_id, [], num_missed, reason)

    # -- metadata-only queries ----------------------------------------------------------

    def lookup(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> LookupResult:
        """How long a leading run of ``keys`` is cached, and where. No data, no stats."""
        self.namespace(ns_id)
        check_keys(keys)
        run = self.index.longest_run(ns_id, keys)
        return LookupResult(len(run.blocks), [m.tier for m in run.blocks], run.miss_reason)

    def exists(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> list[bool]:
        """Whether each key is stored (in any position, not only as a leading run)."""
        self.namespace(ns_id)
        check_keys(keys)
        return [(m := self.index.get(k)) is not None and m.namespace_id == ns_id for k in keys]

    async def remove(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> int:
        """Remove stored keys; returns how many were removed. Readers finish first."""
        metas = self._present(ns_id, keys)
        await self.tiering.drop(metas, MissReason.REMOVED)
        return len(metas)

    def pin(self, ns_id: NamespaceId, keys: Sequence[BlockKey], ttl_s: float | None = None) -> int:
        """Keep stored keys in their tier (no eviction or demotion) for ``ttl_s`` seconds."""
        ttl_s = self.config.store.default_pin_ttl_s if ttl_s is None else ttl_s
        if not ttl_s > 0:
            raise InvalidArgument(f"ttl_s must be positive, got {ttl_s}")
        metas = self._present(ns_id, keys)
        for meta in metas:
            self.index.pin(meta, self._clock() + ttl_s)
        return len(metas)

    def pins(self) -> list[PinnedBlock]:
        """Blocks under an unexpired admin pin, soonest to expire first."""
        now = self._clock()
        return [
            PinnedBlock(meta, max(0.0, (meta.pinned_until_s or now) - now))
            for meta in self.index.pinned(now)
        ]

    def unpin(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> int:
        metas = self._present(ns_id, keys)
        for meta in metas:
            self.index.unpin(meta)
        return len(metas)

    # -- administration -----------------------------------------------------------------

    async def evict(self, tier: TierKind, num_blocks: int) -> int:
        """Push up to ``num_blocks`` blocks out of ``tier`` (demoted, or dropped from the
        slowest tier). Returns how many left."""
        if tier not in self.tiering.tiers:
            raise InvalidArgument(f"tier {tier.value} is not enabled")
        before = self.index.num_blocks(tier)
        await self.tiering.evict_blocks(tier, num_blocks)
        return before - self.index.num_blocks(tier)

    async def write_down(self, budget_s: float) -> int:
        """Give every block held only by HBM or DRAM an NVMe copy, for up to ``budget_s``
        seconds (a graceful shutdown calls this so a planned restart loses no cache).
        Returns how many blocks were copied; 0 when NVMe is off or the only tier."""
        made = await self.tiering.write_down(self._clock() + budget_s)
        if made:
            logger.info("wrote %d blocks down to NVMe", made)
        return made

    def reclaim_expired(self) -> int:
        """Free the slots of reservations past their deadline. Returns how many."""
        return self._writes.reclaim_expired()

    def reset_stats(self) -> None:
        """Zero the hit, miss and move counters (an operator's fresh start)."""
        self._stats.reset(time.time())

    def stats(self) -> StatsSnapshot:
        s = self._stats
        return StatsSnapshot(
            tiers=[self._usage(kind, tier) for kind, tier in self.tiering.tiers.items()],
            namespaces=[
                s.namespace_stats(ns.id, ns.model_id, ns.block_tokens)
                for ns in self._namespaces.values()
            ],
            evictions=dict(s.evictions),
            demotions=dict(s.demotions),
            promotions=dict(s.promotions),
            corrupted_blocks=dict(s.corrupted_blocks),
            torn_writes=s.torn_writes,
            reservations_reclaimed=s.reservations_reclaimed,
            put_blocks=s.put_blocks,
            put_slow_blocks=s.put_slow_blocks,
            put_skipped_blocks=s.put_skipped_blocks,
            since_s=s.since_s,
            num_pinned_blocks=self.index.num_pinned(self._clock()),
            num_open_reservations=len(self._writes.reservations),
            num_read_pins=self.index.num_read_pins,
        )

    # -- internals ----------------------------------------------------------------------

    async def _commit(self, reservation: Reservation) -> PutResult:
        """Commit, then undo it if the namespace was removed while the bytes were written."""
        result = await self._writes.commit(reservation)
        ns_id = reservation.namespace.id
        if ns_id not in self._namespaces:
            keys = [b.key for b in reservation.blocks]
            metas = [
                m for k in keys if (m := self.index.get(k)) is not None and m.namespace_id == ns_id
            ]
            await self.tiering.drop(metas, MissReason.REMOVED)
            raise NotFound(f"namespace {bytes(ns_id).hex()} was removed during the put")
        return result

    def _present(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> list[BlockMeta]:
        self.namespace(ns_id)
        check_keys(keys)
        return [
            meta
            for key in keys
            if (meta := self.index.get(key)) is not None and meta.namespace_id == ns_id
        ]

    def _usage(self, kind: TierKind, tier: Tier) -> TierUsage:
        pool = tier.slots
        return TierUsage(
            tier=kind,
            capacity_bytes=pool.capacity_bytes,
            used_bytes=pool.used_bytes,
            stored_bytes=self.index.num_bytes(kind),
            carved_bytes=pool.carved_bytes(),
            num_used_slots=pool.num_used,
            num_blocks=self.index.num_blocks(kind),
            num_copies=len(self.tiering.copies) if kind is TierKind.NVME else 0,
        )

    def _recover(self) -> None:
        """Rebuild the index from persistent tiers, oldest access first (LRU order)."""
        for kind, tier in self.tiering.tiers.items():
            recovered = tier.recover()
            for namespace in recovered.namespaces:
                self._namespaces.setdefault(namespace.id, namespace)
            for record in sorted(recovered.records, key=lambda r: r.last_access_s):
                self.index.insert(block_meta(record, kind))
            self._stats.torn_writes += recovered.num_torn_writes
            if recovered.records:
                logger.info("recovered %d blocks from %s", len(recovered.records), kind.value)


def _shown(model_id: str, limit: int = 64) -> str:
    """A model id short enough for an error message."""
    return repr(model_id if len(model_id) <= limit else model_id[:limit] + "...")
