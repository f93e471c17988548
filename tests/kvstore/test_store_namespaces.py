"""Namespace limits and removal: a node's namespaces are bounded in number and size, and
an admin can remove one with all its blocks, for good."""

from __future__ import annotations

import pytest

from kvstore.errors import CapacityExceeded, InvalidArgument, LeaseExpired, NotFound
from kvstore.hashing import Namespace, prefix_keys
from kvstore.types import TierKind
from tests.conftest import BLOCK, NAMESPACE, SPEC, StoreFactory, block_bytes, chain_keys

NS = NAMESPACE.id


def other(i: int) -> Namespace:
    return Namespace(f"model-{i}", SPEC)


async def test_a_model_id_over_the_limit_is_refused_naming_the_limit(
    make_store: StoreFactory,
) -> None:
    store = await make_store(**{"store.max_model_id_bytes": "64"})
    store.register_namespace(Namespace("m" * 64, SPEC))  # at the limit: fine
    with pytest.raises(InvalidArgument, match=r"model_id: 1048576 bytes.*max_model_id_bytes = 64"):
        store.register_namespace(Namespace("m" * (1 << 20), SPEC))
    with pytest.raises(InvalidArgument, match=r"salt: 65 bytes.*max_model_id_bytes"):
        store.register_namespace(Namespace("m", SPEC, salt="s" * 65))
    assert len(store.namespaces()) == 2


async def test_the_namespace_count_is_bounded_and_names_the_model(
    make_store: StoreFactory,
) -> None:
    store = await make_store(**{"store.max_namespaces": "3"})  # NAMESPACE is one
    store.register_namespace(other(1))
    store.register_namespace(other(2))
    with pytest.raises(CapacityExceeded, match=r"store.max_namespaces = 3.*'model-3'"):
        store.register_namespace(other(3))
    assert store.register_namespace(other(2)) == other(2).id  # known ones stay idempotent
    await store.remove_namespace(other(1).id)
    store.register_namespace(other(3))  # room again
    assert {ns.model_id for ns in store.namespaces()} == {"test-model", "model-2", "model-3"}


async def test_removing_a_namespace_drops_its_blocks_in_every_tier_for_good(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    victim = other(1)
    store.register_namespace(victim)
    victim_keys = prefix_keys(victim.id, list(range(12 * SPEC.block_tokens)), SPEC.block_tokens)
    await store.put(victim.id, victim_keys[:6], [block_bytes(i) for i in range(6)])
    await store.put(  # pushes the first ones down to NVMe
        victim.id, victim_keys[6:], [block_bytes(i) for i in range(6, 12)], victim_keys[5]
    )
    await store.put(NS, chain_keys(2), [block_bytes(100), block_bytes(101)])
    assert store.index.num_blocks(TierKind.NVME) > 0

    assert await store.remove_namespace(victim.id) == 12
    assert [ns.model_id for ns in store.namespaces()] == ["test-model"]
    with pytest.raises(NotFound):
        store.lookup(victim.id, victim_keys)
    with pytest.raises(NotFound):
        await store.remove_namespace(victim.id)
    used = {u.tier: u for u in store.stats().tiers}
    assert used[TierKind.NVME].used_bytes == store.index.num_blocks(TierKind.NVME) * BLOCK
    assert len(store.index) == 2  # the other namespace is untouched
    await store.close()

    reopened = await make_store()  # same NVMe directory
    assert victim.id not in {ns.id for ns in reopened.namespaces()}
    assert all(m.namespace_id == NS for m in reopened.index.blocks())
    nvme = {u.tier: u for u in reopened.stats().tiers}[TierKind.NVME]
    assert nvme.used_bytes == reopened.index.num_blocks(TierKind.NVME) * BLOCK


async def test_a_put_racing_the_removal_of_its_namespace_stores_nothing(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    keys = chain_keys(2)
    reservation = await store.reserve(NS, keys, [None, keys[0]])
    for block in reservation.blocks:
        block.buffer[:BLOCK] = block_bytes(block.position)
    await store.remove_namespace(NS)
    with pytest.raises(LeaseExpired):  # the open reservation was aborted
        await store.commit(reservation)
    assert len(store.index) == 0
    dram = {u.tier: u for u in store.stats().tiers}[TierKind.DRAM]
    assert dram.num_used_slots == 0
