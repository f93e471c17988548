from engine.sim.loading import plan_load
from tests.engine.sim.helpers import COSTS

# COSTS: prefill_s(u) = 1 ms + 1 ms x u; blocks of 10 tokens cost 10 ms to compute.


def test_fast_blocks_are_loaded_up_to_the_last_token() -> None:
    plan = plan_load([0.001] * 5, num_tokens=50, block_tokens=10, costs=COSTS)
    assert plan.loaded_blocks == 4  # (50 - 1) // 10: the last token is computed
    assert plan.compute_s == COSTS.prefill_s(10, 40)
    assert plan.seconds == max(plan.load_s, plan.compute_s)


def test_blocks_slower_than_recompute_are_recomputed() -> None:
    plan = plan_load([0.050] * 4, num_tokens=50, block_tokens=10, costs=COSTS)
    # loading k blocks takes 50k ms against 51 - 10k ms of compute: best at k = 1
    assert plan.loaded_blocks == 1
    assert plan.seconds == 0.050  # the load (50 ms) outlasts the compute (41 ms)


def test_a_fast_prefix_then_a_slow_tail_loads_the_prefix_only() -> None:
    plan = plan_load([0.001, 0.001, 0.5, 0.5], num_tokens=50, block_tokens=10, costs=COSTS)
    assert plan.loaded_blocks == 2


def test_nothing_cached_computes_everything() -> None:
    plan = plan_load([], num_tokens=7, block_tokens=10, costs=COSTS)
    assert (plan.loaded_blocks, plan.load_s, plan.compute_s) == (0, 0.0, COSTS.prefill_s(7, 0))
