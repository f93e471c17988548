"""Identifiers, enums and small value types shared by every layer of the store.

Invariants:
    * A ``BlockKey`` and a ``NamespaceId`` are exactly 16 bytes (xxh3-128 digests).
    * ``TierKind`` ranks run fastest-first: ``HBM < DRAM < NVME``. Demotion moves a block
      to a higher rank, promotion to a lower one.
"""

from __future__ import annotations

import enum
from typing import NewType

from typing_extensions import Buffer

BlockKey = NewType("BlockKey", bytes)
"""128-bit chained prefix hash naming one block of one namespace (see ``hashing``)."""

NamespaceId = NewType("NamespaceId", bytes)
"""128-bit digest of a ``Namespace`` (model, KV layout, block size, tenant salt)."""

SlotId = NewType("SlotId", int)
"""Index of a fixed-size slot inside one tier's pool."""

KEY_BYTES = 16
MAX_KEYS_PER_REQUEST = 1 << 16  # keys in one request (1 MiB): bounds one call's work

__all__ = [
    "KEY_BYTES",
    "TIERS_FASTEST_FIRST",
    "AdmissionPolicyKind",
    "BlockKey",
    "BlockState",
    "Buffer",
    "EvictionPolicyKind",
    "MissReason",
    "NamespaceId",
    "SlotId",
    "TierKind",
]


class TierKind(enum.Enum):
    """A storage tier; ``rank`` orders them fastest first."""

    HBM = "hbm"
    DRAM = "dram"
    NVME = "nvme"

    # Members are singletons: identity hashing is exact and runs in C, unlike Enum's
    # Python-level hash of the name (hot in the index's per-tier tables).
    __hash__ = object.__hash__

    @property
    def rank(self) -> int:
        return _TIER_RANKS[self]


_TIER_RANKS = {TierKind.HBM: 0, TierKind.DRAM: 1, TierKind.NVME: 2}
TIERS_FASTEST_FIRST: tuple[TierKind, ...] = (TierKind.HBM, TierKind.DRAM, TierKind.NVME)


class BlockState(enum.Enum):
    """Lifecycle of a block's entry in the index.

    ``RESERVED`` entries live only in the store's reservation table, never in the index,
    so readers cannot see them. Allowed transitions (checked in every build)::

        RESERVED -> RESIDENT -> MOVING -> RESIDENT
                       |          |
                       +----------+--> REMOVED
    """

    RESERVED = "reserved"
    RESIDENT = "resident"
    MOVING = "moving"
    REMOVED = "removed"

    __hash__ = object.__hash__


class MissReason(enum.Enum):
    """Why a requested block was not served."""

    NEVER_STORED = "never_stored"
    EVICTED = "evicted"
    REMOVED = "removed"
    CORRUPTED = "corrupted"
    NAMESPACE_MISMATCH = "namespace_mismatch"
    NODE_LOST = "node_lost"  # the node holding it died (cluster reads)

    __hash__ = object.__hash__


class EvictionPolicyKind(enum.Enum):
    LRU = "lru"
    PREFIX_LRU = "prefix_lru"
    LFU = "lfu"
    SIEVE = "sieve"
    S3_FIFO = "s3_fifo"
    ARC = "arc"
    CHAIN_VALUE = "chain_value"


class AdmissionPolicyKind(enum.Enum):
    """Which blocks a put stores, and where (``kvstore.policy.admission``)."""

    ALL = "all"  # every block, into the fastest tier
    DOORKEEPER = "doorkeeper"  # first seen: the slowest tier; seen before: the fastest
    DOORKEEPER_SKIP = "doorkeeper_skip"  # first seen: not stored; seen before: the fastest
