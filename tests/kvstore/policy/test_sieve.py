"""SIEVE: exact eviction order, hand position, survivors keep their place."""

from kvstore.policy.sieve import Sieve
from tests.kvstore.policy.helpers import Driver


def independent(driver: Driver, *names: str) -> None:
    for n in names:
        driver.insert(n)


def test_unvisited_blocks_leave_oldest_first() -> None:
    d = Driver(Sieve())
    independent(d, "a", "b", "c")
    assert d.evict(3) == ["a", "b", "c"]


def test_a_visited_block_survives_in_place_and_the_hand_moves_on() -> None:
    d = Driver(Sieve())
    independent(d, "a", "b", "c")
    d.hit("a")
    assert d.evict(1) == ["b"]  # a loses its bit and stays; the hand stops after b
    independent(d, "d")
    d.hit("c")
    # The hand continues from b: c is visited (cleared), d is new and unvisited.
    assert d.evict(1) == ["d"]
    # Next pass from the tail: a (bit cleared in pass 1), then c (cleared just now).
    assert d.evict(2) == ["a", "c"]


def test_a_chain_leaves_leaf_first_and_the_parent_follows_at_once() -> None:
    d = Driver(Sieve())
    d.insert("p", "c1")
    independent(d, "x")
    assert d.evict(3) == ["c1", "p", "x"]
