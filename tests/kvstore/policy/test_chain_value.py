"""Chain value: LRU among leaves, each hit buys one more lifetime, capped; depth option."""

from kvstore.policy.chain_value import ChainValue
from tests.kvstore.policy.helpers import Driver


def independent(driver: Driver, *names: str) -> None:
    for n in names:
        driver.insert(n)


def test_without_hits_it_is_lru_among_leaves() -> None:
    d = Driver(ChainValue())
    d.insert("a", "b")
    independent(d, "c")
    assert d.evict(3) == ["b", "a", "c"]


def test_a_hit_block_outlives_a_lifetime_of_untouched_ones() -> None:
    d = Driver(ChainValue())
    independent(d, "a", "b", "c", "d")  # lifetime = 4 blocks
    d.hit("a")  # score: its access number + 4
    independent(d, "e")
    # LRU would take a first (it was touched before e came); here a outlives b..e.
    assert d.evict(5) == ["b", "c", "d", "e", "a"]


def test_the_bonus_is_capped_at_max_hits() -> None:
    d = Driver(ChainValue(max_hits=1))
    independent(d, "a", "b")  # lifetime = 2
    d.hit("a", "a", "a")  # seq 5, capped bonus 2: score 7
    d.hit("b")  # seq 6, bonus 2: score 8
    assert d.evict(2) == ["a", "b"]


def test_depth_weight_keeps_deep_leaves_longer() -> None:
    d = Driver(ChainValue(depth_weight=64.0))  # a depth-1 block scores one lifetime more
    d.insert("root")
    d.insert("deep", parent="root")
    independent(d, "shallow")
    # Leaves: deep (depth 1) and shallow (depth 0, newer). Plain LRU would take deep.
    assert d.evict(1) == ["shallow"]


def test_the_lifetime_counts_parents_that_are_not_candidates() -> None:
    # Only leaves are candidates, yet a lifetime is every block of the tier: a chain of
    # 20 plus x and q make it 22 (23 with y), not the 3 or 4 leaves in the queue.
    d = Driver(ChainValue())
    chain = [f"c{i}" for i in range(1, 21)]
    d.insert(*chain)  # seqs 1..20
    independent(d, "x", "q")  # seqs 21, 22
    d.hit("x")  # seq 23: score 23 + 23
    d.hit("q", "q", "q", "q", "q")  # seq 28: score 28 + 3 * 23
    independent(d, "y")  # seq 29
    assert d.evict(23) == [*reversed(chain), "y", "x", "q"]
