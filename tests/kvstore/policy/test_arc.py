"""ARC: exact eviction order, recency vs frequency lists, adaptation on ghost hits."""

from kvstore.policy.arc import Arc, ArcQueue
from tests.kvstore.policy.helpers import DRAM, Driver


def independent(driver: Driver, *names: str) -> None:
    for n in names:
        driver.insert(n)


def target(driver: Driver) -> float:
    (queue,) = [q for (tier, _), q in driver.index._queues.items() if tier is DRAM]  # one size
    assert isinstance(queue, ArcQueue)
    return queue.target_t1


def test_blocks_seen_once_go_before_blocks_hit_again() -> None:
    d = Driver(Arc())
    independent(d, "a", "b", "c")
    d.hit("a")  # a moves to T2; T1 = [b, c]
    assert d.evict(3) == ["b", "c", "a"]


def test_a_ghost_hit_in_b1_grows_t1_and_the_block_enters_t2() -> None:
    d = Driver(Arc())
    independent(d, "a", "b")
    d.hit("b")  # T1 = [a], T2 = [b]
    assert d.evict(1) == ["a"]  # p = 0 < |T1|: a leaves for B1
    assert target(d) == 0.0
    independent(d, "a")  # a ghost hit in B1: p grows by 1 and a enters T2
    assert target(d) == 1.0
    independent(d, "c")  # T1 = [c], T2 = [b, a]; |T1| = 1 is not above p = 1
    assert d.evict(3) == ["b", "a", "c"]
