"""S3-FIFO: exact eviction order through the small, main and ghost queues."""

from kvstore.policy.s3fifo import S3Fifo
from tests.kvstore.policy.helpers import Driver


def independent(driver: Driver, *names: str) -> None:
    for n in names:
        driver.insert(n)


def test_one_hit_blocks_leave_the_small_queue_in_fifo_order() -> None:
    d = Driver(S3Fifo(small_share=0.1))
    independent(d, "a", "b", "c")
    assert d.evict(2) == ["a", "b"]


def test_a_hit_block_moves_to_main_and_outlives_new_ones() -> None:
    d = Driver(S3Fifo(small_share=0.1))
    independent(d, "a", "b", "c")
    d.hit("a")
    # a was hit while in S: it moves to M; b leaves. Now S = [c], M = [a].
    assert d.evict(1) == ["b"]
    independent(d, "d", "e")  # S = [c, d, e] (3 of 4 >= 10%): S is served first
    assert d.evict(3) == ["c", "d", "e"]
    assert d.evict(1) == ["a"]


def test_a_ghost_key_enters_main_directly() -> None:
    d = Driver(S3Fifo(small_share=0.5))
    independent(d, "a", "b")
    assert d.evict(1) == ["a"]  # a's key goes to the ghost queue
    independent(d, "a", "c")  # a enters M; S = [b, c], M = [a]
    assert d.evict(2) == ["b", "c"]
    assert d.evict(1) == ["a"]


def test_main_reinserts_blocks_with_hits_left() -> None:
    d = Driver(S3Fifo(small_share=0.1))
    independent(d, "a", "b")
    d.hit("a", "b")
    independent(d, "c")
    # S = [a, b, c] all served from S: a and b move to M (hits reset), c leaves.
    assert d.evict(1) == ["c"]
    d.hit("b")  # M = [a(0), b(1)]
    # S empty: M serves: a has no hits left and leaves; b goes round once more.
    assert d.evict(2) == ["a", "b"]
