"""Eviction policies by name: the registry the store's configuration selects from.

Every policy is an ``EvictionPolicy`` (``kvstore.policy.candidates``): it makes one
``VictimQueue`` per tier and says whether only leaves may be evicted. The mechanism (the
index, the tiering) never branches on a policy's kind; it only calls the queue.
"""

from __future__ import annotations

from kvstore.policy.arc import Arc
from kvstore.policy.candidates import Candidate, EvictionPolicy, VictimQueue
from kvstore.policy.chain_value import ChainValue
from kvstore.policy.priority import LFU, LRU, PrefixLRU
from kvstore.policy.s3fifo import S3Fifo
from kvstore.policy.sieve import Sieve
from kvstore.types import EvictionPolicyKind

__all__ = [
    "LFU",
    "LRU",
    "Candidate",
    "EvictionPolicy",
    "PrefixLRU",
    "VictimQueue",
    "make_eviction_policy",
]


def make_eviction_policy(kind: EvictionPolicyKind) -> EvictionPolicy:
    """A fresh policy of ``kind`` (each index needs its own: queues may keep state)."""
    policies: dict[EvictionPolicyKind, EvictionPolicy] = {
        EvictionPolicyKind.LRU: LRU(),
        EvictionPolicyKind.PREFIX_LRU: PrefixLRU(),
        EvictionPolicyKind.LFU: LFU(),
        EvictionPolicyKind.SIEVE: Sieve(),
        EvictionPolicyKind.S3_FIFO: S3Fifo(),
        EvictionPolicyKind.ARC: Arc(),
        EvictionPolicyKind.CHAIN_VALUE: ChainValue(),
    }
    return policies[kind]
