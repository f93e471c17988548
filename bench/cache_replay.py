"""Replaying a trace through the store's own ``BlockIndex``: one policy, one tier, C blocks.

Model (the same as the oracles of ``bench.traces``): each request looks up its longest
cached leading run (the hits) and touches it in order; then its missing blocks are
offered to the admission policy, parent first, and stored until the first ``SKIP``
(a block stranded behind a hole is touched instead). After each insert, victims from
``select_victims`` are removed until the tier holds C blocks again. Time is the trace's
arrival time, so pins expire on the trace's clock.

Queue-aware protection (``lookahead_s`` > 0): before request i is served, every request
that has arrived by ``arrival[i] + lookahead_s`` is known; for each newly known one,
``QueueProtection`` names its leading resident run and the replay pins those blocks
until that request's own arrival (when it is served). Only arrived requests are used.
When every block is pinned or an ancestor, the tier may run over C for a moment; the
number of such overflows is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from bench.traces import Trace, block_key
from kvstore.hashing import Namespace
from kvstore.index import BlockIndex, BlockMeta
from kvstore.layout import BlockSpec, KVDtype
from kvstore.policy.admission import (
    Admission,
    AdmissionPolicy,
    AdmitAll,
    FrequencyAdmission,
    FullBlocksOnly,
    Offer,
)
from kvstore.policy.candidates import EvictionPolicy
from kvstore.policy.chain_value import ChainValue
from kvstore.policy.eviction import make_eviction_policy
from kvstore.policy.protection import QueueProtection
from kvstore.types import BlockKey, EvictionPolicyKind, MissReason, SlotId, TierKind

# 1 layer x K,V x 16 tokens x 1 head x 64 dims x 2 bytes = 4096 bytes a block.
NAMESPACE = Namespace("strata-bench-hitrate", BlockSpec(1, 1, 64, KVDtype.FLOAT16, 16))
BLOCK_BYTES = NAMESPACE.block_bytes
EVICTION_BUDGET = 1024  # items examined per select_victims call, as the store's default
DRAM = TierKind.DRAM

Advance = Callable[[int], None]


class Variant(NamedTuple):
    """One row of the benchmark: an eviction policy and an admission policy."""

    name: str
    eviction: Callable[[], EvictionPolicy]
    admission: Callable[[], AdmissionPolicy]


def _kind(kind: EvictionPolicyKind) -> Callable[[], EvictionPolicy]:
    return lambda: make_eviction_policy(kind)


EVICTION_VARIANTS = tuple(Variant(k.value, _kind(k), AdmitAll) for k in EvictionPolicyKind)
KV_VARIANTS = (
    Variant("chain_value_depth", lambda: ChainValue(depth_weight=0.5), AdmitAll),
    Variant(
        "prefix_lru+tinylfu",
        _kind(EvictionPolicyKind.PREFIX_LRU),
        lambda: FrequencyAdmission(first_seen=Admission.SKIP),  # one tier: nowhere slower
    ),
    Variant("prefix_lru+full", _kind(EvictionPolicyKind.PREFIX_LRU), FullBlocksOnly),
    Variant("s3_fifo+full", _kind(EvictionPolicyKind.S3_FIFO), FullBlocksOnly),
    Variant("chain_value+full", _kind(EvictionPolicyKind.CHAIN_VALUE), FullBlocksOnly),
)
VARIANTS = EVICTION_VARIANTS + KV_VARIANTS


class Replay(NamedTuple):
    hit_rate: float
    num_overflows: int  # inserts after which nothing could be evicted (all pinned)


def keyed(trace: Trace) -> list[list[BlockKey]]:
    """Each request's block keys (computed once, shared by every replay)."""
    return [[block_key(h) for h in request] for request in trace.requests]


def replay(
    trace: Trace,
    requests: list[list[BlockKey]],
    variant: Variant,
    capacity_blocks: int | None,
    *,
    lookahead_s: float = 0.0,
    score_from: int = 0,
    advance: Advance | None = None,
) -> Replay:
    """Hit rate of ``variant`` over one tier of ``capacity_blocks`` (None: unbounded),
    counting requests from index ``score_from`` on (earlier ones only warm the cache)."""
    index = BlockIndex(variant.eviction())
    admission = variant.admission()
    protection = QueueProtection()
    hits = total = num_inserted = num_overflows = 0
    known = 0  # requests [0, known) have arrived
    for i, keys in enumerate(requests):
        now = trace.arrivals_s[i]
        if lookahead_s > 0:
            known = max(known, i + 1)
            while known < len(requests) and trace.arrivals_s[known] <= now + lookahead_s:
                _protect(index, protection, requests[known], trace.arrivals_s[known])
                known += 1
        run = index.longest_run(NAMESPACE.id, keys)
        if i >= score_from:
            hits, total = hits + len(run.blocks), total + len(keys)
        for hit in run.blocks:
            index.touch(hit, now)
        for j in range(len(run.blocks), len(keys)):
            stranded = index.get(keys[j])  # resident although a block before it is not
            if stranded is not None:
                index.touch(stranded, now)
                continue
            offer = Offer(keys[j], j, j == len(keys) - 1, j < len(keys) - 1 or trace.last_full[i])
            if admission.admit(offer) is Admission.SKIP:
                break
            parent = keys[j - 1] if j else None
            meta = BlockMeta(
                keys[j], NAMESPACE.id, parent, BLOCK_BYTES, 0, DRAM, SlotId(0), now, now
            )
            index.insert(meta)
            num_inserted += 1
            if capacity_blocks is not None and not _evict_down_to(index, capacity_blocks, now):
                num_overflows += 1
        if advance is not None and i % 256 == 255:
            advance(256)
    return Replay(hits / max(1, total), num_overflows)


def _protect(
    index: BlockIndex, protection: QueueProtection, keys: list[BlockKey], until_s: float
) -> None:
    def where(key: BlockKey) -> TierKind | None:
        meta = index.get(key)
        return meta.tier if meta is not None else None

    for key in protection.plan(keys, where, DRAM).pin:
        meta = index.get(key)
        assert meta is not None
        index.pin(meta, max(until_s, meta.pinned_until_s or 0.0))


def _evict_down_to(index: BlockIndex, capacity_blocks: int, now: float) -> bool:
    """Evict until the tier holds ``capacity_blocks``; False if nothing else can go."""
    while (excess := index.num_blocks(DRAM) - capacity_blocks) > 0:
        batch = index.select_victims(DRAM, excess, now, EVICTION_BUDGET)
        for victim in batch.victims:
            index.remove(victim, MissReason.EVICTED)
        if not batch.victims and not batch.work_left:
            return False
    return True
