from dataclasses import replace

import pytest

from engine.router.policy import CacheAware
from engine.sim.cluster import ClusterSpec, Layout, TierSpec
from engine.sim.metrics import Slo, summarise
from engine.sim.simulator import Simulator
from kvstore.types import TierKind
from tests.engine.sim.helpers import COSTS, PROFILE, request

# 10-token blocks of 1000 bytes a token: 10 kB a block; HBM holds 100 blocks and loads at
# 10 GB/s (1 us a block); the network moves 1 GB/s (10 us a block).
SPEC = ClusterSpec(
    layout=Layout.DISAGGREGATED,
    num_prefill=2,
    num_decode=1,
    block_tokens=10,
    shared=False,
    tiers={
        TierKind.HBM: TierSpec(1e6, 10e9),
        TierKind.DRAM: TierSpec(0.0, 1e9),
        TierKind.NVME: TierSpec(0.0, 1e9),
    },
    network_bytes_per_s=1e9,
    network_latency_s=0.0,
    policy="cache_aware",
)


def test_the_router_policy_object_is_the_productions() -> None:
    assert isinstance(Simulator(SPEC, PROFILE).policy, CacheAware)


def test_a_cold_prefill_costs_its_tokens_and_a_repeat_loads_the_prefix() -> None:
    requests = [request(0, 0.0, [1, 2, 3], 35), request(1, 1.0, [1, 2, 3], 35)]
    result = Simulator(SPEC, PROFILE).run(requests)
    cold, warm = result.records
    assert cold.ttft_s == pytest.approx(COSTS.prefill_s(35, 0))
    assert cold.loaded_tokens == {}
    assert warm.instance == cold.instance  # cache-aware follows the cached prefix
    assert warm.loaded_tokens == {"hbm": 30}
    assert warm.ttft_s == pytest.approx(COSTS.prefill_s(5, 30))
    assert cold.computed_tokens + sum(cold.loaded_tokens.values()) == 35


def test_round_robin_ignores_the_cache_and_a_private_store_does_not_share() -> None:
    requests = [request(0, 0.0, [1, 2, 3], 35), request(1, 1.0, [1, 2, 3], 35)]
    result = Simulator(replace(SPEC, policy="round_robin"), PROFILE).run(requests)
    first, second = result.records
    assert (first.instance, second.instance) == ("prefill-0", "prefill-1")
    assert second.loaded_tokens == {}
    assert second.ttft_s == pytest.approx(COSTS.prefill_s(35, 0))


def test_a_shared_store_reads_a_peer_over_the_network() -> None:
    spec = replace(SPEC, policy="round_robin", shared=True)
    requests = [request(0, 0.0, [1, 2, 3], 35), request(1, 1.0, [1, 2, 3], 35)]
    second = Simulator(spec, PROFILE).run(requests).records[1]
    assert second.loaded_tokens == {"peer": 30}
    assert second.ttft_s == pytest.approx(max(3 * 10e-6, COSTS.prefill_s(5, 30)))


def test_queueing_is_fifo_and_the_decode_side_adds_tbt() -> None:
    spec = replace(SPEC, num_prefill=1)
    requests = [request(0, 0.0, [1], 20, output=3), request(1, 0.0, [2], 20, output=3)]
    result = Simulator(spec, PROFILE).run(requests)
    a, b = result.records
    assert a.ttft_s == pytest.approx(0.021)
    assert b.ttft_s == pytest.approx(0.042)  # waited for the first
    assert a.done and b.done and a.tbt_s > 0
    figures = summarise(result.records, result.busy_s, Slo(0.03, 1.0))
    assert figures["slo_attainment"] == 0.5
    assert figures["utilisation_max"] <= 1.0


def test_early_rejection_with_a_ttft_slo() -> None:
    spec = replace(SPEC, num_prefill=1, ttft_slo_s=0.03)
    requests = [request(0, 0.0, [1], 20), request(1, 0.0, [2], 20)]
    first, second = Simulator(spec, PROFILE).run(requests).records
    assert first.done and not first.rejected
    assert second.rejected and not second.done


def test_colocated_instances_prefill_and_decode_together() -> None:
    spec = replace(SPEC, layout=Layout.COLOCATED, num_colocated=2, policy="round_robin")
    requests = [request(i, 0.1 * i, [1, 2], 25, output=4) for i in range(4)]
    result = Simulator(spec, PROFILE).run(requests)
    assert [r.instance for r in result.records] == ["colocated-0", "colocated-1"] * 2
    assert all(r.done for r in result.records)
    assert result.records[2].loaded_tokens == {"hbm": 20}  # its instance's local cache
    assert set(result.busy_s) == {"colocated-0", "colocated-1"}


def test_the_same_inputs_give_the_same_run() -> None:
    spec = replace(SPEC, policy="random", shared=True)
    requests = [request(i, 0.01 * i, [i % 3, 10 + i], 25, output=3) for i in range(30)]
    runs = [Simulator(spec, PROFILE, seed=7).run(requests).records for _ in range(2)]
    assert runs[0] == runs[1]


def test_instances_on_one_host_share_its_cores() -> None:
    spec = replace(SPEC, policy="round_robin", host_cores=1)
    requests = [request(0, 0.0, [1], 20), request(1, 0.0, [2], 20)]
    a, b = Simulator(spec, PROFILE).run(requests).records
    assert (a.instance, b.instance) == ("prefill-0", "prefill-1")
    # 21 ms of work each, both at once on one core: each at half speed
    assert a.ttft_s == pytest.approx(0.042)
    assert b.ttft_s == pytest.approx(0.042)
    own = Simulator(replace(spec, host_cores=0), PROFILE).run(requests).records
    assert [r.ttft_s for r in own] == pytest.approx([0.021, 0.021])
    # two cores, other processes using half of them: one core left, as above
    busy = replace(spec, host_cores=2, host_busy_share=0.5)
    assert [r.ttft_s for r in Simulator(busy, PROFILE).run(requests).records] == pytest.approx(
        [0.042, 0.042]
    )
    # pinned to a core each of two: neither waits for the other
    pinned = replace(spec, host_cores=2, host_pin_prefills=True)
    assert [r.ttft_s for r in Simulator(pinned, PROFILE).run(requests).records] == pytest.approx(
        [0.021, 0.021]
    )


def test_the_itl_figures_pool_every_token_interval() -> None:
    spec = replace(SPEC, num_prefill=1)
    requests = [request(0, 0.0, [1], 20, output=3)]
    result = Simulator(spec, PROFILE).run(requests)
    figures = summarise(result.records, result.busy_s, None, result.intervals)
    # the first interval: the hand-off (20 tokens of 1 kB at 1 GB/s: 20 us), then a
    # decode step alone (11 ms); the second: a step (11 ms)
    assert figures["itl_p50_ms"] == pytest.approx(11.0)
    assert figures["itl_p90_ms"] == pytest.approx(11.02)
