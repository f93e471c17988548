"""The router's prefix index: leading runs per instance, forgetting, and its bound."""

from __future__ import annotations

import pytest

from engine.router.prefix_index import PrefixIndex
from kvstore.types import BlockKey


def chain(tag: str, n: int) -> list[BlockKey]:
    return [BlockKey(f"{tag}{i}".encode().ljust(16, b".")) for i in range(n)]


K = chain("k", 10)


def test_longest_counts_leading_keys_per_instance() -> None:
    index = PrefixIndex(max_blocks=100)
    index.add("a", K)
    index.add("b", K[:4])
    index.add("c", K[:1])
    index.add("d", K[5:])  # holds a tail but not its head: reaches nothing
    assert index.longest(K) == {"a": 10, "b": 4, "c": 1}
    assert index.longest(K[:3]) == {"a": 3, "b": 3, "c": 1}
    assert index.longest(K + chain("x", 3)) == {"a": 10, "b": 4, "c": 1}
    assert index.longest(chain("x", 3)) == {}
    assert index.longest([]) == {}
    assert len(index) == 10


def test_a_hole_ends_the_run_even_if_later_keys_are_held() -> None:
    index = PrefixIndex(max_blocks=100)
    index.add("a", K)
    index.forget([K[3]])
    assert index.longest(K) == {"a": 3}
    index.forget([K[0], chain("never", 1)[0]])  # unknown keys are ignored
    assert index.longest(K) == {}


def test_the_oldest_entries_go_first_and_a_chain_loses_its_tail_first() -> None:
    index = PrefixIndex(max_blocks=5)
    index.add("a", K[:4])  # order, oldest first: k3 k2 k1 k0
    index.add("b", chain("m", 3))  # 7 entries: k3 and k2 are evicted
    assert len(index) == 5
    assert index.longest(K) == {"a": 2}
    assert index.longest(chain("m", 3)) == {"b": 3}
    index.add("a", K[:2])  # touch k1, k0: now m2 m1 m0 k1 k0
    index.add("c", chain("n", 1))  # evicts m2
    assert index.longest(chain("m", 3)) == {"b": 2}
    assert index.longest(K) == {"a": 2}


def test_adding_the_same_keys_for_another_instance_shares_the_entry() -> None:
    index = PrefixIndex(max_blocks=10)
    for instance in ("a", "b", "c"):
        index.add(instance, K)
    assert len(index) == 10
    assert index.longest(K[:5]) == {"a": 5, "b": 5, "c": 5}


def test_many_instances() -> None:
    index = PrefixIndex(max_blocks=1000)
    for i in range(70):  # masks wider than a machine word
        index.add(f"p{i:02d}", K[: 1 + i % 10])
    counts = index.longest(K)
    assert len(counts) == 70
    assert counts["p69"] == 10 and counts["p00"] == 1


def test_max_blocks_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_blocks must be >= 1"):
        PrefixIndex(max_blocks=0)
