"""The node's block index: which blocks are resident where, and who leaves first.

The index is bookkeeping only (no bytes, no I/O, no clock: ``now_s`` is passed in). The
node store applies its decisions to the tiers; the hit-rate benchmark drives it directly.

State kept per block (``BlockMeta``) and per index::

    entries      key -> BlockMeta                 resident blocks (RESIDENT or MOVING)
    children     parent key -> [n_hbm, n_dram, n_nvme]
                                                  cached children per tier, kept even while
                                                  the parent itself is absent
    queues[tier, length]  the policy's VictimQueue
                                                  eviction candidates in evict-first order,
                                                  per tier and block size (size class)
    removals     key -> MissReason                bounded record of recent removals

Invariants:
    * a block has one home tier (``tier``, ``slot``); ``num_blocks(t)`` counts entries with
      ``tier == t``. A block homed in a faster tier may also keep an NVMe copy
      (``nvme_slot``): the mover's business, invisible to lookups and to eviction order;
    * ``children[p][r]`` counts the RESIDENT entries with parent ``p`` in the tier of rank r;
      a MOVING block counts nowhere (it is leaving its tier), so its parent can become a
      victim in the same ``select_victims`` call and eviction order stays exact;
    * ``meta.queued`` iff the queue of the block's tier and length holds it; only the index pushes,
      withdraws (a block that just got a cached child, for leaves-only policies) and
      discards; the queue only orders (and drops non-evictable blocks it pops);
    * a block is a *leaf* in its tier when no child is cached in that tier or a faster one,
      so prefix-aware policies never evict (or demote) a parent before its children;
    * a victim is RESIDENT, unread, unpinned and (for prefix-aware policies) a leaf.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kvstore.policy.candidates import Candidate, EvictionPolicy, VictimQueue
from kvstore.types import (
    TIERS_FASTEST_FIRST,
    BlockKey,
    BlockState,
    MissReason,
    NamespaceId,
    SlotId,
    TierKind,
)

_ALLOWED_TRANSITIONS = {
    BlockState.RESERVED: {BlockState.RESIDENT, BlockState.REMOVED},
    BlockState.RESIDENT: {BlockState.MOVING, BlockState.REMOVED},
    BlockState.MOVING: {BlockState.RESIDENT, BlockState.REMOVED},
    BlockState.REMOVED: set(),
}


@dataclass(slots=True, eq=False)
class BlockMeta:
    """Everything the node knows about one block besides its bytes."""

    key: BlockKey
    namespace_id: NamespaceId
    parent: BlockKey | None
    length_bytes: int
    checksum: int
    tier: TierKind
    slot: SlotId
    created_s: float
    last_access_s: float
    state: BlockState = BlockState.RESERVED
    last_access_seq: int = 0
    num_hits: int = 0
    num_readers: int = 0
    pinned_until_s: float | None = None
    depth: int = 0  # blocks before it in its chain, as far as the index saw its ancestors
    queued: bool = False
    retired_slots: list[tuple[TierKind, SlotId]] = field(default_factory=list)
    nvme_slot: SlotId | None = None  # an inclusive NVMe copy while ``tier`` is faster

    def transition(self, new_state: BlockState) -> None:
        """Move to ``new_state``; an illegal transition is a bug and raises at once."""
        if new_state not in _ALLOWED_TRANSITIONS[self.state]:
            raise AssertionError(f"block {self.key.hex()}: {self.state} -> {new_state}")
        self.state = new_state


class Run(NamedTuple):
    """The longest leading run of a key list that the index holds."""

    blocks: list[BlockMeta]
    miss_reason: MissReason | None  # why the block after the run missed; None if all hit


class VictimBatch(NamedTuple):
    victims: list[BlockMeta]
    work_left: bool  # candidates remain but the budget ran out
    num_examined: int  # heap items popped (the work done)


Observer = Callable[[BlockKey, TierKind | None], None]
"""Told of every residency change: (key, its tier now) or (key, None) when it left."""


class BlockIndex:
    """Resident blocks, their prefix tree and per-tier eviction queues."""

    def __init__(self, policy: EvictionPolicy, *, removal_record_blocks: int = 100_000) -> None:
        self.policy = policy
        self.observer: Observer | None = None
        self._entries: dict[BlockKey, BlockMeta] = {}
        self._children: dict[BlockKey, list[int]] = {}
        self._queues: dict[tuple[TierKind, int], VictimQueue] = {}
        self._num_blocks = dict.fromkeys(TIERS_FASTEST_FIRST, 0)
        self._num_bytes = dict.fromkeys(TIERS_FASTEST_FIRST, 0)
        self._removals: OrderedDict[BlockKey, MissReason] = OrderedDict()
        self._removal_record_blocks = removal_record_blocks
        self._pin_expiries: list[tuple[float, BlockKey]] = []
        self._access_seq = 0
        self._token = 0
        self.num_read_pins = 0  # acquisitions not yet released (reads, moves, leases)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: BlockKey) -> bool:
        return key in self._entries

    def get(self, key: BlockKey) -> BlockMeta | None:
        return self._entries.get(key)

    def num_blocks(self, tier: TierKind) -> int:
        return self._num_blocks[tier]

    def num_bytes(self, tier: TierKind) -> int:
        """Bytes of the blocks resident in ``tier`` (their lengths, not their slots)."""
        return self._num_bytes[tier]

    def blocks(self) -> list[BlockMeta]:
        return list(self._entries.values())

    # -- membership -------------------------------------------------------------------

    def insert(self, meta: BlockMeta) -> None:
        """Add a committed block; it becomes visible to readers and to eviction."""
        if meta.key in self._entries:
            raise AssertionError(f"block {meta.key.hex()} inserted twice")
        meta.transition(BlockState.RESIDENT)
        parent = self._entries.get(meta.parent) if meta.parent is not None else None
        meta.depth = parent.depth + 1 if parent is not None else 0
        self._entries[meta.key] = meta
        self._removals.pop(meta.key, None)
        self._count_block(meta.tier, meta.length_bytes, +1)
        self._count_child(meta, meta.tier, +1)
        self._stamp(meta)
        self._enqueue_if_evictable(meta)
        if self.observer is not None:
            self.observer(meta.key, meta.tier)

    def remove(self, meta: BlockMeta, reason: MissReason) -> None:
        """Drop a block from the index and remember why (for miss classification)."""
        if self._entries.get(meta.key) is not meta:
            raise AssertionError(f"block {meta.key.hex()} is not in the index")
        if meta.state is BlockState.RESIDENT:
            self._count_child(meta, meta.tier, -1)
        meta.transition(BlockState.REMOVED)
        del self._entries[meta.key]
        self._unqueue(meta)
        self._count_block(meta.tier, meta.length_bytes, -1)
        self._removals[meta.key] = reason
        self._removals.move_to_end(meta.key)
        if len(self._removals) > self._removal_record_blocks:
            self._removals.popitem(last=False)
        if self.observer is not None:
            self.observer(meta.key, None)

    def move(self, meta: BlockMeta, tier: TierKind, slot: SlotId) -> None:
        """A MOVING block now lives in ``slot`` of ``tier`` (demotion or promotion)."""
        meta.transition(BlockState.RESIDENT)
        self._count_block(meta.tier, meta.length_bytes, -1)
        self._count_block(tier, meta.length_bytes, +1)
        meta.tier, meta.slot = tier, slot
        self._count_child(meta, tier, +1)
        self._enqueue_if_evictable(meta)
        if self.observer is not None:
            self.observer(meta.key, tier)

    # -- reads ------------------------------------------------------------------------

    def longest_run(self, ns_id: NamespaceId, keys: Sequence[BlockKey]) -> Run:
        """The leading blocks of ``keys`` that are resident, and why the next one is not."""
        blocks: list[BlockMeta] = []
        for key in keys:
            meta = self._entries.get(key)
            if meta is None:
                return Run(blocks, self._removals.get(key, MissReason.NEVER_STORED))
            if meta.namespace_id != ns_id:
                return Run(blocks, MissReason.NAMESPACE_MISMATCH)
            blocks.append(meta)
        return Run(blocks, None)

    def touch(self, meta: BlockMeta, now_s: float) -> None:
        """Record a hit: the block becomes the most recently (and once more) used."""
        meta.num_hits += 1
        meta.last_access_s = now_s
        self._stamp(meta)
        self._queue(meta.tier, meta.length_bytes).touch(meta)

    def acquire(self, meta: BlockMeta) -> None:
        """Pin a block for a read: it is not evicted, moved away or freed until released."""
        meta.num_readers += 1
        self.num_read_pins += 1

    def release(self, meta: BlockMeta) -> None:
        if meta.num_readers <= 0:
            raise AssertionError(f"block {meta.key.hex()} released more often than acquired")
        meta.num_readers -= 1
        self.num_read_pins -= 1
        if meta.num_readers == 0:
            self._enqueue_if_evictable(meta)

    def pin(self, meta: BlockMeta, until_s: float) -> None:
        """Keep a block where it is (no eviction, no demotion) until ``until_s``."""
        meta.pinned_until_s = until_s
        heapq.heappush(self._pin_expiries, (until_s, meta.key))

    def num_pinned(self, now_s: float) -> int:
        """Blocks under an admin pin that has not expired at ``now_s`` (O(pins))."""
        return len(self.pinned(now_s))

    def pinned(self, now_s: float) -> list[BlockMeta]:
        """Blocks under an admin pin that has not expired at ``now_s``, soonest to expire
        first (O(pins log pins))."""
        out: dict[BlockKey, BlockMeta] = {}
        for until_s, key in sorted(self._pin_expiries):
            meta = self._entries.get(key)
            if until_s > now_s and meta is not None and meta.pinned_until_s == until_s:
                out[key] = meta
        return list(out.values())

    def unpin(self, meta: BlockMeta) -> None:
        meta.pinned_until_s = None
        self._enqueue_if_evictable(meta)

    def begin_move(self, meta: BlockMeta) -> None:
        """Mark a block MOVING: still readable, no longer a candidate and no longer a child
        in its tier, until ``move``, ``remove`` or ``abandon_move``."""
        meta.transition(BlockState.MOVING)
        self._unqueue(meta)
        self._count_child(meta, meta.tier, -1)

    def abandon_move(self, meta: BlockMeta) -> None:
        """The block stays where it was and becomes a candidate again."""
        meta.transition(BlockState.RESIDENT)
        self._count_child(meta, meta.tier, +1)
        self._enqueue_if_evictable(meta)

    def has_cached_children(self, meta: BlockMeta) -> bool:
        """Whether any child of ``meta`` is resident in any tier (dropping it strands them)."""
        counts = self._children.get(meta.key)
        return counts is not None and any(counts)

    # -- eviction ---------------------------------------------------------------------

    def select_victims(
        self,
        tier: TierKind,
        num_blocks: int,
        now_s: float,
        budget: int,
        length_bytes: int | None = None,
    ) -> VictimBatch:
        """Take up to ``num_blocks`` victims out of ``tier``, examining at most ``budget``
        candidates: blocks of ``length_bytes`` only (their slots are what a size class
        needs), or of any length. A policy orders the blocks of one queue (one size
        class); across classes, the queue with the most candidates goes first (the admin
        ``evict`` of any size). Victims come back MOVING; the caller moves (``move``),
        drops (``remove``) or keeps (``abandon_move``) each one. Prefix-aware policies
        yield leaves only, but a victim stops counting as its parent's child at once, so
        the parent may follow in the same call: the order is the same as evicting one
        block per call.
        """
        self._expire_pins(now_s)
        candidates = [
            q
            for (t, length), q in self._queues.items()
            if t is tier and (length_bytes is None or length == length_bytes)
        ]
        queues = list(candidates)  # those that may still yield a victim in this call
        victims: list[BlockMeta] = []
        num_examined = 0

        def evictable(block: Candidate) -> bool:
            return self._evictable(self._entries[block.key], now_s)

        while len(victims) < num_blocks and num_examined < budget:
            queue = max((q for q in queues if len(q)), key=len, default=None)
            if queue is None:
                break
            popped = queue.pop(evictable, budget - num_examined)
            num_examined += max(1, popped.num_examined)
            for block in popped.unqueued:
                self._entries[block.key].queued = False  # an event pushes it again
            if popped.victim is None:
                queues.remove(queue)  # nothing there can go now (or the budget is spent)
                continue
            victim = self._entries[popped.victim.key]
            victim.queued = False
            self.begin_move(victim)
            victims.append(victim)
        work_left = any(len(q) for q in candidates) and len(victims) < num_blocks
        return VictimBatch(victims, work_left, num_examined)

    def take_all(
        self,
        tier: TierKind,
        slots: Sequence[tuple[SlotId, BlockKey]],
        now_s: float,
        *,
        keep_parents: bool,
    ) -> list[BlockMeta] | None:
        """All the blocks in these slots of ``tier`` as victims (MOVING, children first),
        whatever their recency, or None (nothing taken) if one of them cannot go now: a
        slot that holds no resident block (reserved, or freed when its readers finish),
        a block being read, moved or pinned, or, with ``keep_parents``, a block with a
        cached child outside the set (dropping it would strand the child).
        """
        self._expire_pins(now_s)
        metas = []
        for slot, key in slots:
            meta = self._entries.get(key)
            if (
                meta is None
                or meta.tier is not tier
                or meta.slot != slot
                or meta.state is not BlockState.RESIDENT
                or meta.num_readers
                or (meta.pinned_until_s is not None and meta.pinned_until_s > now_s)
            ):
                return None
            metas.append(meta)
        ordered = _children_first(metas)
        for meta in ordered:
            self.begin_move(meta)
        if keep_parents and any(self.has_cached_children(m) for m in ordered):
            for meta in reversed(ordered):
                self.abandon_move(meta)
            return None
        return ordered

    def is_leaf(self, meta: BlockMeta) -> bool:
        counts = self._children.get(meta.key)
        return counts is None or sum(counts[: meta.tier.rank + 1]) == 0

    def miss_reason(self, key: BlockKey) -> MissReason:
        return self._removals.get(key, MissReason.NEVER_STORED)

    # -- internals --------------------------------------------------------------------

    def _stamp(self, meta: BlockMeta) -> None:
        self._access_seq += 1
        meta.last_access_seq = self._access_seq

    def _count_child(self, meta: BlockMeta, tier: TierKind, delta: int) -> None:
        if meta.parent is None:
            return
        counts = self._children.get(meta.parent)
        if counts is None:
            counts = self._children[meta.parent] = [0, 0, 0]
        counts[tier.rank] += delta
        if delta > 0:
            parent = self._entries.get(meta.parent)
            if parent is not None and parent.queued and not self._evictable(parent, now_s=0.0):
                parent.queued = False  # no longer a leaf: out of the queue until one again
                self._queue(parent.tier, parent.length_bytes).withdraw(parent)
        if delta < 0:
            if not any(counts):
                del self._children[meta.parent]
            parent = self._entries.get(meta.parent)
            if parent is not None:
                self._enqueue_if_evictable(parent)

    def _evictable(self, meta: BlockMeta, now_s: float) -> bool:
        return (
            meta.state is BlockState.RESIDENT
            and meta.num_readers == 0
            and (meta.pinned_until_s is None or meta.pinned_until_s <= now_s)
            and (not self.policy.leaves_only or self.is_leaf(meta))
        )

    def _enqueue_if_evictable(self, meta: BlockMeta) -> None:
        # Pins are checked against their expiry at pop time; here any pin defers the push.
        unqueued_unpinned = not meta.queued and meta.pinned_until_s is None
        if unqueued_unpinned and self._evictable(meta, now_s=0.0):
            meta.queued = True
            self._queue(meta.tier, meta.length_bytes).push(meta)

    def _queue(self, tier: TierKind, length_bytes: int) -> VictimQueue:
        """The eviction queue of ``tier``'s blocks of ``length_bytes`` (made when needed)."""
        queue = self._queues.get((tier, length_bytes))
        if queue is None:
            queue = self._queues[tier, length_bytes] = self.policy.new_queue()
        return queue

    def _count_block(self, tier: TierKind, length_bytes: int, delta: int) -> None:
        self._num_blocks[tier] += delta
        self._num_bytes[tier] += delta * length_bytes

    def _unqueue(self, meta: BlockMeta) -> None:
        """``meta`` leaves its tier (or starts moving): its queue forgets it."""
        meta.queued = False
        self._queue(meta.tier, meta.length_bytes).discard(meta)

    def _expire_pins(self, now_s: float) -> None:
        while self._pin_expiries and self._pin_expiries[0][0] <= now_s:
            until_s, key = heapq.heappop(self._pin_expiries)
            meta = self._entries.get(key)
            if meta is not None and meta.pinned_until_s == until_s:
                self.unpin(meta)


def _children_first(metas: list[BlockMeta]) -> list[BlockMeta]:
    """``metas`` ordered so that a block comes before its parent when both are in it."""
    keys = {m.key: m for m in metas}
    depth: dict[BlockKey, int] = {}
    for meta in metas:
        chain = []
        node: BlockMeta | None = meta
        while node is not None and node.key not in depth:
            chain.append(node)
            node = keys.get(node.parent) if node.parent is not None else None
        base = depth[node.key] if node is not None else -1
        for i, item in enumerate(reversed(chain)):
            depth[item.key] = base + 1 + i
    return sorted(metas, key=lambda m: -depth[m.key])
