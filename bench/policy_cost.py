"""Cost of an eviction policy per block access, with many blocks resident.

The index holds ``num_blocks`` blocks (chains of ``CHAIN_BLOCKS``, as the trace's
requests) under the policy. Then each timed access is one of, alternately:

* a hit: ``touch`` of a random resident block;
* a miss: ``insert`` of a new block continuing a random chain's leaf, then
  ``select_victims`` of one block and its ``remove``: what a put costs the index.

Each access is timed alone (``perf_counter_ns``) twice over: the time spent inside the
policy's queue (``push``/``touch``/``discard``/``pop``, through a timing wrapper), which
is the policy's cost, and the whole index call, which adds the index's own bookkeeping
(prefix-tree counts, state checks) that every policy pays alike. p50 and p99 in µs over
hits and misses together. The objects built before timing are frozen out of the garbage
collector (``gc.freeze``) and the collector is off while timing: its pauses (100-300 µs
every few hundred accesses here, for every policy alike) are the runtime's, not the
policy's, and a store tunes them once for all policies. Seeded.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from typing import NamedTuple

from bench.cache_replay import BLOCK_BYTES, NAMESPACE, Variant
from kvstore.index import BlockIndex, BlockMeta
from kvstore.policy.candidates import Candidate, Evictable, EvictionPolicy, Popped, VictimQueue
from kvstore.types import BlockKey, EvictionPolicyKind, MissReason, SlotId, TierKind

CHAIN_BLOCKS = 16
DRAM = TierKind.DRAM


class Cost(NamedTuple):
    policy_p50_us: float
    policy_p99_us: float
    index_p50_us: float
    index_p99_us: float


class TimedQueue:
    """Passes every call to ``inner`` and adds the time it took to ``spent_ns``."""

    def __init__(self, inner: VictimQueue) -> None:
        self.inner = inner
        self.spent_ns = 0

    def __len__(self) -> int:
        return len(self.inner)

    def push(self, block: Candidate) -> None:
        start = time.perf_counter_ns()
        self.inner.push(block)
        self.spent_ns += time.perf_counter_ns() - start

    def touch(self, block: Candidate) -> None:
        start = time.perf_counter_ns()
        self.inner.touch(block)
        self.spent_ns += time.perf_counter_ns() - start

    def withdraw(self, block: Candidate) -> None:
        start = time.perf_counter_ns()
        self.inner.withdraw(block)
        self.spent_ns += time.perf_counter_ns() - start

    def discard(self, block: Candidate) -> None:
        start = time.perf_counter_ns()
        self.inner.discard(block)
        self.spent_ns += time.perf_counter_ns() - start

    def pop(self, evictable: Evictable, budget: int) -> Popped:
        start = time.perf_counter_ns()
        popped = self.inner.pop(evictable, budget)
        self.spent_ns += time.perf_counter_ns() - start
        return popped


class TimedPolicy:
    """``policy`` whose queues are ``TimedQueue``s; ``queues`` lists them."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy
        self.queues: list[TimedQueue] = []

    @property
    def kind(self) -> EvictionPolicyKind:
        return self.policy.kind

    @property
    def leaves_only(self) -> bool:
        return self.policy.leaves_only

    def new_queue(self) -> VictimQueue:
        self.queues.append(TimedQueue(self.policy.new_queue()))
        return self.queues[-1]

    def spent_ns(self) -> int:
        return sum(q.spent_ns for q in self.queues)


def _meta(n: int, parent: BlockKey | None) -> BlockMeta:
    key = BlockKey(n.to_bytes(16, "little"))
    return BlockMeta(key, NAMESPACE.id, parent, BLOCK_BYTES, 0, DRAM, SlotId(0), 0.0, 0.0)


def access_cost(variant: Variant, num_blocks: int, num_accesses: int, seed: int) -> Cost:
    """µs per access of ``variant``'s eviction policy with ``num_blocks`` resident."""
    rng = random.Random(seed)
    policy = TimedPolicy(variant.eviction())
    index = BlockIndex(policy)
    leaves = _fill(index, num_blocks)
    resident = index.blocks()
    gc.collect()
    gc.freeze()
    gc.disable()
    policy_ns: list[int] = []
    index_ns: list[int] = []
    try:
        for i in range(num_accesses):
            before = policy.spent_ns()
            start = time.perf_counter_ns()
            if i % 2 == 0:
                _hit(index, rng.choice(resident), float(i))
            else:
                leaf = rng.choice(leaves)
                parent = leaf.key if leaf.state.name == "RESIDENT" else None
                meta = _meta(num_blocks + i, parent)
                start = time.perf_counter_ns()
                _miss(index, meta, float(i))
                resident.append(meta)
            index_ns.append(time.perf_counter_ns() - start)
            policy_ns.append(policy.spent_ns() - before)
    finally:
        gc.enable()
        gc.unfreeze()
    p, x = statistics.quantiles(policy_ns, n=100), statistics.quantiles(index_ns, n=100)
    return Cost(p[49] / 1000, p[98] / 1000, x[49] / 1000, x[98] / 1000)


def _fill(index: BlockIndex, num_blocks: int) -> list[BlockMeta]:
    """Insert ``num_blocks`` blocks as chains; returns the chains' last blocks."""
    leaves: list[BlockMeta] = []
    parent: BlockKey | None = None
    for n in range(num_blocks):
        meta = _meta(n, None if n % CHAIN_BLOCKS == 0 else parent)
        index.insert(meta)
        parent = meta.key
        if n % CHAIN_BLOCKS == CHAIN_BLOCKS - 1:
            leaves.append(meta)
    return leaves


def _hit(index: BlockIndex, block: BlockMeta, now: float) -> None:
    if block.state.name == "RESIDENT":
        index.touch(block, now)


def _miss(index: BlockIndex, meta: BlockMeta, now: float) -> None:
    index.insert(meta)
    batch = index.select_victims(DRAM, 1, now, 1024)
    for victim in batch.victims:
        index.remove(victim, MissReason.EVICTED)
