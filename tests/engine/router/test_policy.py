"""Routing policies on constructed cluster states: exact choices, predictions, rejections.

Costs are round numbers so every expectation can be worked out by hand: prefill 1 ms a
token, transfer 0.1 ms a token (10x cheaper), decode step 10 ms + 1 ms a sequence +
1 us a context token. Blocks are 16 tokens; a 1,024-token prompt has 63 reusable blocks.
"""

from __future__ import annotations

import pytest

from engine.config import load_engine_config
from engine.router.baselines import LeastLoaded, RandomChoice, RoundRobin
from engine.router.costs import CostModel
from engine.router.policy import (
    DECODE_RETRY_S,
    MIN_RETRY_AFTER_S,
    POLICY_NAMES,
    CacheAware,
    make_policy,
)
from engine.router.views import (
    NO_INSTANCE_RETRY_S,
    Decision,
    DecodeView,
    Policy,
    PolicyName,
    PrefillView,
    Rejection,
    RequestView,
)
from kvstore.errors import ConfigError

B = 16
N = 1024
COSTS = CostModel(
    prefill_base_s=0.0,
    prefill_per_token_s=1e-3,
    prefill_attention_s=0.0,
    transfer_base_s=0.0,
    transfer_per_token_s=1e-4,
    decode_base_s=0.01,
    decode_per_seq_s=1e-3,
    decode_per_context_token_s=1e-6,
)
DEAR_TRANSFER = CostModel(**{**COSTS.to_dict(), "transfer_per_token_s": 2e-3})
NO_PULL = 1e9  # a balancing threshold no prefix can reach
DECODES = [DecodeView("d0", running=0, context_tokens=0, max_batch=8)]


def cache_aware(
    costs: CostModel = COSTS,
    threshold: float = 1.0,
    ttft_slo_s: float | None = None,
    tbt_slo_s: float | None = None,
) -> CacheAware:
    return CacheAware(
        costs, ttft_slo_s=ttft_slo_s, tbt_slo_s=tbt_slo_s, balance_threshold=threshold
    )


def request(num_tokens: int = N, **prefix_blocks: int) -> RequestView:
    return RequestView(num_tokens, B, prefix_blocks)


def decide(
    policy: CacheAware, req: RequestView, prefills: list[PrefillView], decodes=DECODES
) -> Decision:
    decision = policy.choose(req, prefills, decodes, now=0.0)
    assert isinstance(decision, Decision), decision
    return decision


# -- prefill: local prefix vs queue ---------------------------------------------------


@pytest.mark.parametrize(("busy_queue_s", "winner"), [(0.5, "a"), (1.0, "b")])
def test_long_prefix_on_a_busy_instance_vs_short_prefix_on_an_idle_one(
    busy_queue_s: float, winner: str
) -> None:
    # a: 60 blocks, 64 tokens to compute -> queue + 0.064 s; b: 10 blocks -> 0.864 s.
    prefills = [PrefillView("a", busy_queue_s), PrefillView("b", 0.0)]
    d = decide(cache_aware(threshold=NO_PULL), request(a=60, b=10), prefills)
    assert d.prefill == winner
    want_local = {"a": 60, "b": 10}[winner]
    assert (d.local_blocks, d.pulled_blocks) == (want_local, 0)
    assert d.computed_tokens == N - want_local * B
    assert d.predicted_ttft_s == pytest.approx(min(busy_queue_s + 0.064, 0.864))


def test_the_last_token_is_always_computed() -> None:
    d = decide(cache_aware(), request(a=64), [PrefillView("a", 0.0)])
    assert (d.local_blocks, d.computed_tokens) == (63, 16)
    assert d.predicted_ttft_s == pytest.approx(0.016)


# -- pull (replicate) vs recompute ----------------------------------------------------


def test_pulls_the_prefix_when_transfer_is_cheaper_than_recompute() -> None:
    # a holds 60 blocks but is busy; b pulls them: 960 tokens x 0.1 ms + 64 x 1 ms.
    prefills = [PrefillView("a", 5.0), PrefillView("b", 0.0)]
    d = decide(cache_aware(), request(a=60), prefills)
    assert d == Decision(
        prefill="b",
        decode="d0",
        predicted_ttft_s=pytest.approx(0.096 + 0.064),
        predicted_tbt_s=pytest.approx(0.01 + 0.001 + N * 1e-6),
        local_blocks=0,
        pulled_blocks=60,
        computed_tokens=64,
    )


def test_recomputes_when_transfer_is_dearer() -> None:
    prefills = [PrefillView("a", 5.0), PrefillView("b", 0.0)]
    d = decide(cache_aware(DEAR_TRANSFER), request(a=60), prefills)
    assert (d.prefill, d.pulled_blocks) == ("b", 0)
    assert d.computed_tokens == N
    assert d.predicted_ttft_s == pytest.approx(1.024)


@pytest.mark.parametrize(("threshold", "pulled"), [(1.25, 0), (1.1, 4)])
def test_the_balancing_threshold_stops_a_pull_for_a_marginally_longer_prefix(
    threshold: float, pulled: int
) -> None:
    # b holds 36 blocks, busy a holds 40: 40 / 36 = 1.11. Pulling 4 blocks would save
    # 64 x 0.9 ms, but only a threshold <= 1.11 allows it.
    prefills = [PrefillView("a", 10.0), PrefillView("b", 0.0)]
    d = decide(cache_aware(threshold=threshold), request(a=40, b=36), prefills)
    assert (d.prefill, d.local_blocks, d.pulled_blocks) == ("b", 36, pulled)
    want = 0.448 if not pulled else 4 * B * 1e-4 + 0.384
    assert d.predicted_ttft_s == pytest.approx(want)


def test_with_nothing_local_the_threshold_is_a_minimum_number_of_blocks() -> None:
    prefills = [PrefillView("a", 10.0), PrefillView("b", 0.0)]
    assert decide(cache_aware(threshold=3), request(a=2), prefills).pulled_blocks == 0
    assert decide(cache_aware(threshold=2), request(a=2), prefills).pulled_blocks == 2


def test_a_hot_prefix_whose_holder_is_overloaded_is_replicated_to_an_idle_instance() -> None:
    hot = request(hot=63)
    prefills = [PrefillView("hot", 3.0), PrefillView("c", 0.0), PrefillView("b", 0.0)]
    d = decide(cache_aware(threshold=1.25), hot, prefills)
    # b and c tie on TTFT and queue: the lower id wins.
    assert (d.prefill, d.local_blocks, d.pulled_blocks) == ("b", 0, 63)
    calm = [PrefillView("hot", 0.01), *prefills[1:]]
    d = decide(cache_aware(threshold=1.25), hot, calm)
    assert (d.prefill, d.local_blocks, d.pulled_blocks) == ("hot", 63, 0)


def test_an_unhealthy_holder_still_serves_its_prefix() -> None:
    prefills = [PrefillView("a", 0.0, healthy=False), PrefillView("b", 0.0)]
    d = decide(cache_aware(), request(a=60), prefills)
    assert (d.prefill, d.local_blocks, d.pulled_blocks) == ("b", 0, 60)


def test_ties_go_to_the_shorter_queue_then_the_lower_id() -> None:
    prefills = [PrefillView("z", 0.0), PrefillView("y", 0.0), PrefillView("x", 0.0)]
    assert decide(cache_aware(), request(), prefills).prefill == "x"
    # Exact binary costs so the TTFTs tie exactly: x has 256 tokens cached and 0.25 s
    # queued (= 256 tokens of work), w computes everything with an empty queue.
    binary = CostModel(**{**COSTS.to_dict(), "prefill_per_token_s": 2**-10})
    tied = [PrefillView("x", 0.25), PrefillView("w", 0.0)]
    d = decide(cache_aware(binary, threshold=NO_PULL), request(1001, x=16), tied)
    assert (d.prefill, d.predicted_ttft_s) == ("w", 1001 / 1024)


# -- rejections -----------------------------------------------------------------------


def test_slo_rejection_waits_for_the_first_queue_to_drain_enough() -> None:
    prefills = [PrefillView("a", 2.0), PrefillView("b", 3.0)]
    r = cache_aware(ttft_slo_s=1.0).choose(request(160), prefills, DECODES, now=0.0)
    assert isinstance(r, Rejection)
    assert "TTFT 2.160 s exceeds the SLO 1.0 s" in r.reason
    assert r.retry_after_s == pytest.approx(1.16)  # a's queue must drain to 0.84 s


def test_slo_rejection_retry_has_a_floor() -> None:
    r = cache_aware(ttft_slo_s=1.15).choose(request(160), [PrefillView("a", 1.0)], DECODES, now=0.0)
    assert isinstance(r, Rejection)
    assert r.retry_after_s == MIN_RETRY_AFTER_S


def test_a_prompt_too_long_for_the_slo_even_when_idle() -> None:
    r = cache_aware(ttft_slo_s=1.0).choose(request(2000), [PrefillView("a", 0.0)], DECODES, 0.0)
    assert isinstance(r, Rejection)
    assert "needs 2.000 s of prefill even on an idle instance" in r.reason
    assert r.retry_after_s == MIN_RETRY_AFTER_S


def test_a_prompt_within_the_slo_is_accepted() -> None:
    d = decide(cache_aware(ttft_slo_s=1.0, tbt_slo_s=0.05), request(160), [PrefillView("a", 0.5)])
    assert d.predicted_ttft_s == pytest.approx(0.66)


def test_tbt_slo_rejection() -> None:
    busy = [DecodeView("d0", running=7, context_tokens=60_000, max_batch=8)]
    r = cache_aware(tbt_slo_s=0.05).choose(request(), [PrefillView("a", 0.0)], busy, 0.0)
    # 10 ms + 8 x 1 ms + 61,024 x 1 us = 79 ms per step.
    assert r == Rejection("predicted TBT 0.0790 s on d0 exceeds the SLO 0.05 s", DECODE_RETRY_S)


def test_unhealthy_instances_are_skipped() -> None:
    prefills = [PrefillView("a", 0.0, healthy=False), PrefillView("b", 9.0)]
    decodes = [DecodeView("d0", 0, 0, 8, healthy=False), DecodeView("d1", 5, 0, 8)]
    d = decide(cache_aware(), request(), prefills, decodes)
    assert (d.prefill, d.decode) == ("b", "d1")


@pytest.mark.parametrize("policy", [cache_aware(), RoundRobin(), LeastLoaded(), RandomChoice(1)])
def test_no_healthy_instance_is_rejected_by_every_policy(policy: Policy) -> None:
    down = [PrefillView("a", 0.0, healthy=False)]
    r = policy.choose(request(), down, DECODES, 0.0)
    assert r == Rejection("no healthy prefill instance (1 known)", NO_INSTANCE_RETRY_S)
    r = policy.choose(request(), [PrefillView("a", 0.0)], [], 0.0)
    assert r == Rejection("no healthy decode instance (0 known)", NO_INSTANCE_RETRY_S)


# -- decode ---------------------------------------------------------------------------


def test_decode_by_predicted_tbt_within_max_batch() -> None:
    decodes = [
        DecodeView("long", running=2, context_tokens=50_000, max_batch=4),  # 63 ms
        DecodeView("full", running=4, context_tokens=0, max_batch=4),  # cheapest, no room
        DecodeView("fits", running=3, context_tokens=5_000, max_batch=4),  # 20 ms
    ]
    d = decide(cache_aware(), request(), [PrefillView("a", 0.0)], decodes)
    assert d.decode == "fits"
    assert d.predicted_tbt_s == pytest.approx(0.01 + 4e-3 + (5_000 + N) * 1e-6)
    full = [
        DecodeView("busy", running=6, context_tokens=0, max_batch=4),
        DecodeView("full", running=4, context_tokens=0, max_batch=4),
    ]
    queued = decide(cache_aware(), request(), [PrefillView("a", 0.0)], full)
    assert queued.decode == "full"  # no SLO: wait behind the shorter full batch
    strict = cache_aware(tbt_slo_s=1.0).choose(request(), [PrefillView("a", 0.0)], full, 0.0)
    assert strict == Rejection("every healthy decode instance is at max_batch", DECODE_RETRY_S)


# -- baselines ------------------------------------------------------------------------


PREFILLS = [PrefillView("a", 3.0), PrefillView("b", 1.0, healthy=False), PrefillView("c", 2.0)]
TWO_DECODES = [DecodeView("x", 5, 0, 8), DecodeView("y", 1, 0, 8)]


def test_round_robin_cycles_each_side_independently() -> None:
    policy = RoundRobin()
    picks = [policy.choose(request(), PREFILLS, TWO_DECODES, 0.0) for _ in range(4)]
    assert [(d.prefill, d.decode) for d in picks if isinstance(d, Decision)] == [
        ("a", "x"),
        ("c", "y"),
        ("a", "x"),
        ("c", "y"),
    ]
    one_decode = policy.choose(request(), PREFILLS, TWO_DECODES[:1], 0.0)
    assert isinstance(one_decode, Decision)
    assert (one_decode.prefill, one_decode.decode) == ("a", "x")


def test_least_loaded_picks_least_queue_and_fewest_running_ties_by_id() -> None:
    d = LeastLoaded().choose(request(), PREFILLS, TWO_DECODES, 0.0)
    assert isinstance(d, Decision)
    assert (d.prefill, d.decode) == ("c", "y")
    tied = [PrefillView("q", 1.0), PrefillView("p", 1.0)]
    d = LeastLoaded().choose(
        request(), tied, [DecodeView("y", 1, 0, 8), DecodeView("x", 1, 0, 8)], 0
    )
    assert isinstance(d, Decision)
    assert (d.prefill, d.decode) == ("p", "x")


def test_random_is_seeded_and_only_picks_healthy_instances() -> None:
    def run(seed: int) -> list[tuple[str, str]]:
        policy = RandomChoice(seed)
        out = []
        for _ in range(40):
            d = policy.choose(request(), PREFILLS, TWO_DECODES, 0.0)
            assert isinstance(d, Decision)
            out.append((d.prefill, d.decode))
        return out

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    assert {p for p, _ in first} == {"a", "c"}
    assert {d for _, d in first} == {"x", "y"}


def test_baselines_reuse_local_blocks_and_predict_with_a_cost_model() -> None:
    req = request(c=10)
    d = LeastLoaded(COSTS).choose(req, PREFILLS, TWO_DECODES, 0.0)
    assert isinstance(d, Decision)
    assert (d.local_blocks, d.pulled_blocks, d.computed_tokens) == (10, 0, 864)
    assert d.predicted_ttft_s == pytest.approx(2.0 + 0.864)
    assert d.predicted_tbt_s == pytest.approx(0.01 + 2e-3 + N * 1e-6)
    bare = LeastLoaded().choose(req, PREFILLS, TWO_DECODES, 0.0)
    assert isinstance(bare, Decision)
    assert (bare.predicted_ttft_s, bare.predicted_tbt_s, bare.local_blocks) == (0.0, 0.0, 10)


# -- factory and validation -----------------------------------------------------------


def test_make_policy_by_name() -> None:
    for name in POLICY_NAMES:
        assert make_policy(name, COSTS, ttft_slo_s=1.0).name == name
    with pytest.raises(ValueError, match="cache_aware, round_robin, least_loaded, random"):
        make_policy("fastest", COSTS)


def test_policy_names_are_an_enum_the_config_reads_by_value() -> None:
    for kind in PolicyName:
        policy = make_policy(kind, COSTS, ttft_slo_s=1.0)
        assert policy.name is kind  # a member, not a look-alike string
        config = load_engine_config(env={}, overrides={"router.policy": kind.value})
        assert config.router.policy is kind
    assert load_engine_config(env={}).router.policy is PolicyName.CACHE_AWARE
    with pytest.raises(ConfigError, match=r"router\.policy"):
        load_engine_config(env={}, overrides={"router.policy": "fastest"})


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="balance_threshold must be >= 1"):
        cache_aware(threshold=0.5)
    with pytest.raises(ValueError, match="ttft_slo_s must be > 0"):
        cache_aware(ttft_slo_s=0.0)
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        RequestView(0, B, {})
