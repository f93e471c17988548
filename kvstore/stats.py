"""Counters of what the node store served, missed and moved, and their snapshots.

Hits and misses count blocks and tokens (blocks x the namespace's tokens per block). A
get of N keys that hits the first H blocks counts H hits, each under the tier that served
it, and N - H misses, all under the reason the block after the run missed (the block that
broke the prefix; the ones after it are unreachable whatever their own state).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kvstore.types import MissReason, NamespaceId, TierKind


@dataclass(frozen=True, slots=True)
class TierUsage:
    tier: TierKind
    capacity_bytes: int
    used_bytes: int  # the slots in use (blocks and open reservations)
    stored_bytes: int  # the resident blocks' own lengths
    carved_bytes: int  # pages carved for a size class (free pages are not)
    num_used_slots: int
    num_blocks: int  # blocks whose home is this tier
    num_copies: int = 0  # NVMe only: copies of blocks whose home is a faster tier


@dataclass(frozen=True, slots=True)
class NamespaceStats:
    namespace_id: NamespaceId
    model_id: str
    block_tokens: int
    hit_blocks: dict[TierKind, int]
    hit_tokens: dict[TierKind, int]
    miss_blocks: dict[MissReason, int]
    miss_tokens: dict[MissReason, int]

    @property
    def hit_rate(self) -> float:
        hits, misses = sum(self.hit_blocks.values()), sum(self.miss_blocks.values())
        return hits / (hits + misses) if hits + misses else 0.0


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    tiers: list[TierUsage]
    namespaces: list[NamespaceStats]
    evictions: dict[TierKind, int]
    demotions: dict[tuple[TierKind, TierKind], int]
    promotions: dict[tuple[TierKind, TierKind], int]
    corrupted_blocks: dict[TierKind, int]
    torn_writes: int
    reservations_reclaimed: int
    put_blocks: int

    @property
    def hit_blocks(self) -> int:
        return sum(sum(ns.hit_blocks.values()) for ns in self.namespaces)

    @property
    def miss_blocks(self) -> int:
        return sum(sum(ns.miss_blocks.values()) for ns in self.namespaces)

    @property
    def hit_rate(self) -> float:
        total = self.hit_blocks + self.miss_blocks
        return self.hit_blocks / total if total else 0.0

    def hit_blocks_by_tier(self) -> dict[TierKind, int]:
        out: Counter[TierKind] = Counter()
        for ns in self.namespaces:
            out.update(ns.hit_blocks)
        return dict(out)


@dataclass(slots=True)
class StoreStats:
    """Mutable counters, updated on the event-loop thread only."""

    hit_blocks: Counter[tuple[NamespaceId, TierKind]] = field(default_factory=Counter)
    miss_blocks: Counter[tuple[NamespaceId, MissReason]] = field(default_factory=Counter)
    evictions: Counter[TierKind] = field(default_factory=Counter)
    demotions: Counter[tuple[TierKind, TierKind]] = field(default_factory=Counter)
    promotions: Counter[tuple[TierKind, TierKind]] = field(default_factory=Counter)
    corrupted_blocks: Counter[TierKind] = field(default_factory=Counter)
    torn_writes: int = 0
    reservations_reclaimed: int = 0
    put_blocks: int = 0

    def record_get(
        self,
        ns_id: NamespaceId,
        hit_tiers: list[TierKind],
        num_missed: int,
        reason: MissReason | None,
    ) -> None:
        for tier in hit_tiers:
            self.hit_blocks[ns_id, tier] += 1
        if num_missed and reason is not None:
            self.miss_blocks[ns_id, reason] += num_missed

    def namespace_stats(
        self, ns_id: NamespaceId, model_id: str, block_tokens: int
    ) -> NamespaceStats:
        hits = {t: n for (ns, t), n in self.hit_blocks.items() if ns == ns_id}
        misses = {r: n for (ns, r), n in self.miss_blocks.items() if ns == ns_id}
        return NamespaceStats(
            namespace_id=ns_id,
            model_id=model_id,
            block_tokens=block_tokens,
            hit_blocks=hits,
            hit_tokens={t: n * block_tokens for t, n in hits.items()},
            miss_blocks=misses,
            miss_tokens={r: n * block_tokens for r, n in misses.items()},
        )
