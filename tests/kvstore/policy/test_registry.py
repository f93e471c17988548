"""Every configurable eviction policy plugs into the real index and keeps its invariants."""

import random

import pytest

from kvstore.index import BlockIndex, BlockMeta
from kvstore.policy.eviction import make_eviction_policy
from kvstore.types import EvictionPolicyKind, MissReason, SlotId
from tests.kvstore.policy.helpers import DRAM, NS, key


@pytest.mark.parametrize("kind", list(EvictionPolicyKind))
def test_random_workload_keeps_capacity_and_prefix_order(kind: EvictionPolicyKind) -> None:
    """Random chains, hits and evictions: the tier never exceeds its capacity, and a
    leaves-only policy never evicts a block with a cached child."""
    policy = make_eviction_policy(kind)
    index = BlockIndex(policy)
    rng = random.Random(7)
    capacity, names = 40, 0
    for _ in range(400):
        parent = None
        if len(index) and rng.random() < 0.6:
            parent = rng.choice(index.blocks()).key
        for _ in range(rng.randint(1, 5)):
            names += 1
            meta = BlockMeta(key(str(names)), NS, parent, 1, 0, DRAM, SlotId(0), 0.0, 0.0)
            index.insert(meta)
            parent = meta.key
        for hit in rng.sample(index.blocks(), min(3, len(index))):
            index.touch(hit, 0.0)
        while index.num_blocks(DRAM) > capacity:
            batch = index.select_victims(DRAM, index.num_blocks(DRAM) - capacity, 0.0, 64)
            assert batch.victims or batch.work_left, kind
            for victim in batch.victims:
                assert not (policy.leaves_only and index.has_cached_children(victim)), kind
                index.remove(victim, MissReason.EVICTED)
        assert index.num_blocks(DRAM) <= capacity
