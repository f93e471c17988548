"""One simulated store node: the store's own ``BlockIndex`` over tiers of given sizes.

The node keeps no bytes, only the index the real node keeps, driven the way the real
node drives it (``kvstore/tiering.py``): a new block goes into the fastest tier that has
room configured; a tier over capacity gives up victims chosen by the index's eviction
policy (``kvstore.policy.eviction``), which are demoted to the next slower tier, or
dropped from the slowest; a hit in a slower tier promotes the block one tier up when the
``PromotionPolicy`` says so (then the faster tier makes room the same way).

Simplifications (stated, not hidden): promotion moves rather than copies (the real NVMe
tier is inclusive); reads pin nothing (a simulated read takes no time in the index); a
block's parent is the previous key of the prompt that first stored it.

Invariants: after every call each tier holds at most its capacity in blocks; a tier of
capacity 0 never holds a block; the index's own invariants (prefix-aware eviction order,
one tier per block) hold because only its public API is used.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.index import BlockIndex, BlockMeta, Observer
from kvstore.policy.eviction import EvictionPolicy
from kvstore.policy.promotion import PromotionPolicy
from kvstore.types import TIERS_FASTEST_FIRST, BlockKey, MissReason, NamespaceId, SlotId, TierKind

NAMESPACE = NamespaceId(bytes(16))
EVICTION_BUDGET = 1024  # heap pops per select_victims call, as the store's default


class NodeStore:
    """The block index of one node with per-tier capacities in blocks."""

    def __init__(
        self,
        capacities: dict[TierKind, int],
        eviction: EvictionPolicy,
        promotion: PromotionPolicy,
        observer: Observer | None = None,
    ) -> None:
        self.index = BlockIndex(eviction, removal_record_blocks=1)
        self.index.observer = observer
        self.promotion = promotion
        self.capacity = {t: max(0, capacities.get(t, 0)) for t in TIERS_FASTEST_FIRST}
        self.tiers = [t for t in TIERS_FASTEST_FIRST if self.capacity[t] > 0]
        self._slot = 0

    def run(self, keys: Sequence[BlockKey]) -> list[BlockMeta]:
        """The leading blocks of ``keys`` this node holds (any tier)."""
        return self.index.longest_run(NAMESPACE, keys).blocks

    def read(self, blocks: Sequence[BlockMeta], now_s: float) -> None:
        """Record hits on ``blocks`` (touch), promoting those the policy says to."""
        for meta in blocks:
            self.index.touch(meta, now_s)
            if self.promotion.should_promote(meta.num_hits, meta.tier):
                faster = self._next(meta.tier, -1)
                if faster is not None:
                    self.index.begin_move(meta)
                    self.index.move(meta, faster, self._new_slot())
                    self._make_room(now_s)

    def write(self, keys: Sequence[BlockKey], now_s: float) -> int:
        """Store ``keys`` (a prompt's full blocks): touch those present; make room for
        the rest in the fastest tier first (as the real store reserves slots before it
        writes), then insert them; returns how many were inserted."""
        if not self.tiers:
            return 0
        index = self.index
        new: dict[BlockKey, BlockKey | None] = {}  # key -> parent (a repeated key once)
        for i, key in enumerate(keys):
            meta = index.get(key)
            if meta is None:
                new.setdefault(key, keys[i - 1] if i else None)
            else:
                index.touch(meta, now_s)
        self._make_room(now_s, incoming=len(new))
        first = self.tiers[0]
        for key, parent in new.items():
            slot = self._new_slot()
            index.insert(BlockMeta(key, NAMESPACE, parent, 0, 0, first, slot, now_s, now_s))
        self._make_room(now_s)  # when the new blocks alone exceed the fastest tier
        return len(new)

    def num_blocks(self, tier: TierKind) -> int:
        return self.index.num_blocks(tier)

    def _make_room(self, now_s: float, incoming: int = 0) -> None:
        """Demote (or, from the slowest tier, drop) victims until every tier fits, the
        fastest with room left for ``incoming`` blocks."""
        index = self.index
        for tier in self.tiers:
            slower = self._next(tier, +1)
            room = self.capacity[tier] - (incoming if tier is self.tiers[0] else 0)
            while (excess := index.num_blocks(tier) - max(0, room)) > 0:
                batch = index.select_victims(tier, excess, now_s, EVICTION_BUDGET)
                for victim in batch.victims:
                    if slower is None:
                        index.remove(victim, MissReason.EVICTED)
                    else:
                        index.move(victim, slower, self._new_slot())
                if not batch.victims and not batch.work_left:
                    raise AssertionError(f"{tier.value}: {excess} blocks over, no victim")

    def _next(self, tier: TierKind, step: int) -> TierKind | None:
        """The next configured tier slower (+1) or faster (-1) than ``tier``, if any."""
        position = self.tiers.index(tier) + step
        return self.tiers[position] if 0 <= position < len(self.tiers) else None

    def _new_slot(self) -> SlotId:
        self._slot += 1
        return SlotId(self._slot)
