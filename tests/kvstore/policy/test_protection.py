"""Queue protection: a waiting request's leading resident run, and what to prefetch."""

from kvstore.policy.protection import QueueProtection
from kvstore.types import BlockKey, TierKind
from tests.kvstore.policy.helpers import key

TIERS = {key("a"): TierKind.DRAM, key("b"): TierKind.NVME, key("d"): TierKind.DRAM}


def where(k: BlockKey) -> TierKind | None:
    return TIERS.get(k)


def test_pins_the_leading_run_and_prefetches_its_slow_part() -> None:
    keys = [key(n) for n in "abcd"]  # c is missing: d behind the hole is unreachable
    plan = QueueProtection().plan(keys, where, TierKind.DRAM)
    assert plan.pin == [key("a"), key("b")]
    assert plan.prefetch == [key("b")]


def test_work_is_bounded_per_request() -> None:
    keys = [key("a"), key("b")]
    plan = QueueProtection(max_blocks=1).plan(keys, where, TierKind.DRAM)
    assert plan.pin == [key("a")] and plan.prefetch == []
