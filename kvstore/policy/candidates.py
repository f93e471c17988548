"""The eviction interface: what a policy sees of a block, and the queue it keeps per tier.

A policy owns the *order* of one tier's eviction candidates; the index owns everything
else (which blocks are candidates at all: resident, unread, unpinned, and for
``leaves_only`` policies a leaf). The index drives a ``VictimQueue`` with five calls::

    push(block)        the block became a candidate (committed, moved in, released,
                       unpinned, or its last cached child left)
    touch(block)       a hit; the block may or may not be queued
    withdraw(block)    the block stays in the tier but is no longer a candidate (it
                       just got a cached child); it comes back through ``push``
    discard(block)     the block leaves the tier (removed, or moving out): forget it,
                       whether queued or not (queues may remember blocks they unqueued)
    pop(ok, budget)    the next victim in evict-first order, examining at most
                       ``budget`` items; candidates failing ``ok`` leave the queue and
                       come back through ``push`` when the index says so

Invariants every queue keeps: it holds each pushed block at most once; ``pop`` returns
only blocks it holds and removes them; its work per call is bounded by ``budget`` (plus
O(1) bookkeeping), never by the number of blocks it holds. Queues are pure: no I/O, no
clock (``last_access_s`` is whatever time the caller passed in), no store internals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from kvstore.types import BlockKey, EvictionPolicyKind


class Candidate(Protocol):
    """What a policy may read about a block (the index's ``BlockMeta`` satisfies it)."""

    @property
    def key(self) -> BlockKey: ...

    @property
    def parent(self) -> BlockKey | None: ...

    @property
    def depth(self) -> int: ...

    @property
    def last_access_seq(self) -> int: ...

    @property
    def last_access_s(self) -> float: ...

    @property
    def num_hits(self) -> int: ...


Evictable = Callable[[Candidate], bool]


class Popped(NamedTuple):
    """One ``pop``: the victim (None if none within the budget), the candidates examined
    and found not evictable (now out of the queue), and the items examined."""

    victim: Candidate | None
    unqueued: list[Candidate]
    num_examined: int


class VictimQueue(Protocol):
    """One tier's candidates in evict-first order (see the module docstring)."""

    def __len__(self) -> int: ...

    def push(self, block: Candidate) -> None: ...

    def touch(self, block: Candidate) -> None: ...

    def withdraw(self, block: Candidate) -> None: ...

    def discard(self, block: Candidate) -> None: ...

    def pop(self, evictable: Evictable, budget: int) -> Popped: ...


class EvictionPolicy(Protocol):
    """A named way to order candidates; makes one fresh queue per tier."""

    @property
    def kind(self) -> EvictionPolicyKind: ...

    @property
    def leaves_only(self) -> bool: ...

    def new_queue(self) -> VictimQueue: ...
