"""The router bench's queueing model: exact outcomes of constructed replays."""

from __future__ import annotations

import pytest

from bench.cluster import TimedRequest
from bench.router_model import simulate
from engine.router.costs import CostModel

MS_PER_TOKEN = CostModel(0.0, 1e-3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # 1 ms per computed token


def burst(*blocks: tuple[int, ...], at: float = 0.0) -> list[TimedRequest]:
    return [TimedRequest(at, ids, 1) for ids in blocks]


def test_cache_aware_puts_a_short_prompt_on_the_idle_instance() -> None:
    # a long prompt, then two short ones, all at once: round robin queues the third
    # behind the long one, the cache-aware policy behind the other short one
    requests = burst((1, 2, 3, 4), (5,), (6,))
    rr = simulate("round_robin", requests, MS_PER_TOKEN, block_tokens=10, capacity_blocks=100)
    ca = simulate("cache_aware", requests, MS_PER_TOKEN, block_tokens=10, capacity_blocks=100)
    assert rr.ttft_s == pytest.approx([0.040, 0.010, 0.050])
    assert ca.ttft_s == pytest.approx([0.040, 0.010, 0.020])


def test_a_finished_prefix_is_reused_only_after_its_prefill_ends() -> None:
    early = burst((1, 2, 3), (1, 2, 3, 4))  # the second arrives before the first is stored
    later = burst((1, 2, 3)) + burst((1, 2, 3, 4), at=1.0)
    for requests, cached in ((early, 0), (later, 30)):
        result = simulate(
            "cache_aware", requests, MS_PER_TOKEN, block_tokens=10, capacity_blocks=100
        )
        assert result.cached_tokens == cached
        assert result.prompt_tokens == 70


def test_peer_fetch_reuses_blocks_on_the_other_node() -> None:
    # round robin sends the repeat to the other instance: with peer fetch it reuses the
    # three leading blocks from there (the last block's last token is always computed)
    requests = burst((1, 2, 3, 4)) + burst((1, 2, 3, 4), at=1.0)
    kwargs = {"block_tokens": 10, "capacity_blocks": 100}
    fetched = simulate("round_robin", requests, MS_PER_TOKEN, **kwargs)
    alone = simulate("round_robin", requests, MS_PER_TOKEN, peer_fetch=False, **kwargs)
    assert (fetched.cached_tokens, fetched.local_tokens) == (30, 0)
    assert (alone.cached_tokens, alone.local_tokens) == (0, 0)
    assert fetched.ttft_s[1] == pytest.approx(0.010)


def test_a_node_keeps_only_its_capacity() -> None:
    # capacity 2: the first prompt's leading blocks are evicted by its own later ones
    requests = burst((1, 2, 3, 4)) + burst((1, 2, 3, 4), at=1.0)
    result = simulate("cache_aware", requests, MS_PER_TOKEN, block_tokens=10, capacity_blocks=2)
    assert result.cached_tokens == 0


def test_figures_name_the_policy() -> None:
    result = simulate(
        "round_robin", burst((1,), (2,)), MS_PER_TOKEN, block_tokens=10, capacity_blocks=10
    )
    figures = result.figures("round_robin")
    assert figures["model_hit_rate_round_robin"] == 0
    assert figures["model_ttft_p90_ms_round_robin"] == pytest.approx(10.0)
