"""Eviction policies: which block of a tier leaves first.

A policy only scores. The index keeps, per tier, a min-heap of candidates keyed by
``priority`` (lower = evict first) and asks the policy nothing else:

* ``LRU``: priority = the block's last access sequence number. Flat: any block is a
  candidate, so a parent may go before its children and strand them.
* ``PREFIX_LRU``: the same priority, but only *leaves* are candidates: blocks with no
  cached child in the same or a faster tier. Evicting a parent strands every descendant
  (a prefix key is useful only when its ancestors are reachable), so leaves go first.
* ``LFU``: priority = (hits, last access), so among equally used blocks the least recent
  goes first. Flat, like ``LRU``.

Exactness: the heap is updated lazily (a hit does not touch it); a popped candidate whose
priority has grown since it was pushed is pushed back with its current priority. This is
exact, not an approximation, because every priority here only grows over a block's life;
a policy whose priorities can shrink must not be plugged in. Cost: O(log n) per victim
plus one re-push per block touched since its last push.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kvstore.types import EvictionPolicyKind


class UsageView(Protocol):
    """What a policy may read about a block."""

    @property
    def last_access_seq(self) -> int: ...

    @property
    def num_hits(self) -> int: ...


Priority = tuple[int, ...]


class EvictionPolicy(Protocol):
    """Scores blocks for eviction. Lower priority = evicted first; must never decrease."""

    @property
    def kind(self) -> EvictionPolicyKind: ...

    @property
    def leaves_only(self) -> bool: ...

    def priority(self, usage: UsageView) -> Priority: ...


@dataclass(frozen=True, slots=True)
class LRU:
    kind: EvictionPolicyKind = EvictionPolicyKind.LRU
    leaves_only: bool = False

    def priority(self, usage: UsageView) -> Priority:
        return (usage.last_access_seq,)


@dataclass(frozen=True, slots=True)
class PrefixLRU:
    kind: EvictionPolicyKind = EvictionPolicyKind.PREFIX_LRU
    leaves_only: bool = True

    def priority(self, usage: UsageView) -> Priority:
        return (usage.last_access_seq,)


@dataclass(frozen=True, slots=True)
class LFU:
    kind: EvictionPolicyKind = EvictionPolicyKind.LFU
    leaves_only: bool = False

    def priority(self, usage: UsageView) -> Priority:
        return (usage.num_hits, usage.last_access_seq)


def make_eviction_policy(kind: EvictionPolicyKind) -> EvictionPolicy:
    policies: dict[EvictionPolicyKind, EvictionPolicy] = {
        EvictionPolicyKind.LRU: LRU(),
        EvictionPolicyKind.PREFIX_LRU: PrefixLRU(),
        EvictionPolicyKind.LFU: LFU(),
    }
    return policies[kind]
