"""Counters of what the node store served, missed and moved, and their snapshots.

Hits and misses count blocks and tokens (blocks x the namespace's tokens per block). A
get of N keys that hits the first H blocks counts H hits, each under the tier that served
it, and N - H misses, all under the reason the block after the run missed (the block that
broke the prefix; the ones after it are unreachable whatever their own state).

Invariants:
    * Each block a client asked for is counted once, by the node that answered it: a
      hit in one of its tiers, a hit from a peer (``peer_hit_blocks``, fetched from
      another node for this client), or a miss. Lookups and leases that a reader follows
      with a read of the rest count no misses; the read that ends the request does.
    * A node that serves a peer counts those blocks as hits in its own tiers, so a
      cluster's total counts local hits and misses only: peer hits were counted by the
      node that held them (see ``kvstore.admin.summary.cluster_summary``).
    * ``since_s`` is the wall-clock time the counters were last zeroed (start or reset).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kvstore.types import MissReason, NamespaceId, TierKind

# A namespace whose model id ends so holds an engine's start-up profiling (its cost
# model's fit): statistics show it apart from users' traffic.
PROFILING_SUFFIX = "#profiling"


def is_profiling(model_id: str) -> bool:
    return model_id.endswith(PROFILING_SUFFIX)


def namespace_label(model_id: str, namespace_id: bytes) -> str:
    """How statistics name a namespace (tables, JSON, metric labels): its model id and the
    first 8 hex digits of its id. Never a tenant salt or secret."""
    return f"{model_id or '?'} ({bytes(namespace_id).hex()[:8]})"


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
    peer_hit_blocks: int

    @property
    def hit_rate(self) -> float:
        hits = sum(self.hit_blocks.values()) + self.peer_hit_blocks
        misses = sum(self.miss_blocks.values())
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
    since_s: float
    num_pinned_blocks: int
    put_slow_blocks: int = 0  # of put_blocks: admitted straight to the slowest tier
    put_skipped_blocks: int = 0  # refused by the admission policy: not stored
    # what readers and writers hold right now (0 on an idle node: anything else is a
    # read in flight, or a lease or reservation its client never ended)
    num_open_reservations: int = 0
    num_read_pins: int = 0  # block acquisitions by reads, moves and leases

    @property
    def hit_blocks(self) -> int:
        """Blocks served from this node's tiers or from peers."""
        return sum(sum(ns.hit_blocks.values()) + ns.peer_hit_blocks for ns in self.namespaces)

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

    since_s: float
    hit_blocks: Counter[tuple[NamespaceId, TierKind]] = field(default_factory=Counter)
    peer_hit_blocks: Counter[NamespaceId] = field(default_factory=Counter)
    miss_blocks: Counter[tuple[NamespaceId, MissReason]] = field(default_factory=Counter)
    evictions: Counter[TierKind] = field(default_factory=Counter)
    demotions: Counter[tuple[TierKind, TierKind]] = field(default_factory=Counter)
    promotions: Counter[tuple[TierKind, TierKind]] = field(default_factory=Counter)
    corrupted_blocks: Counter[TierKind] = field(default_factory=Counter)
    torn_writes: int = 0
    reservations_reclaimed: int = 0
    put_blocks: int = 0
    put_slow_blocks: int = 0  # of put_blocks: admitted straight to the slowest tier
    put_skipped_blocks: int = 0  # refused by the admission policy: not stored

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

    def record_peer_hits(self, ns_id: NamespaceId, num_blocks: int) -> None:
        """Blocks another node supplied for this node's client."""
        if num_blocks:
            self.peer_hit_blocks[ns_id] += num_blocks

    def reset(self, now_s: float) -> None:
        """Zero every counter; ``since_s`` becomes ``now_s``."""
        for counter in (
            self.hit_blocks,
            self.peer_hit_blocks,
            self.miss_blocks,
            self.evictions,
            self.demotions,
            self.promotions,
            self.corrupted_blocks,
        ):
            counter.clear()
        self.torn_writes = self.reservations_reclaimed = self.put_blocks = 0
        self.put_slow_blocks = self.put_skipped_blocks = 0
        self.since_s = now_s

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
            peer_hit_blocks=self.peer_hit_blocks[ns_id],
        )
