from dataclasses import replace

from engine.sim.cluster import ClusterSpec, TierSpec
from engine.sim.metrics import Slo
from engine.sim.planner import plan
from kvstore.types import TierKind
from tests.engine.sim.helpers import PROFILE, request

SPEC = ClusterSpec(
    block_tokens=10,
    shared=True,
    tiers={
        TierKind.HBM: TierSpec(0.0, 1e12),
        TierKind.DRAM: TierSpec(0.0, 10e9),
        TierKind.NVME: TierSpec(0.0, 1e9),
    },
)


def test_the_planner_finds_the_fewest_instances_then_the_least_memory() -> None:
    # every 15 ms a 20-token prompt sharing its first block: one prefill instance keeps
    # up (21 ms cold, 11 ms warm) only when that block stays cached in DRAM
    requests = [request(i, 0.015 * i, [0, 100 + i], 20, output=2) for i in range(60)]
    slo = Slo(ttft_s=0.05, tbt_s=1.0)
    result = plan(
        SPEC, PROFILE, requests, slo, max_instances=3, dram_options=[0.0, 1e6], nvme_options=[0.0]
    )
    assert result.best is not None
    assert (result.best.num_prefill, result.best.num_decode) == (1, 1)
    assert result.best.dram_bytes == 1e6
    assert any(c.dram_bytes == 0.0 and not c.meets(0.9) for c in result.tried)


def test_nothing_fits_gives_no_plan() -> None:
    requests = [request(i, 0.0, [i], 2000) for i in range(20)]
    slo = Slo(ttft_s=0.01, tbt_s=1.0)
    spec = replace(SPEC, shared=False)
    result = plan(
        spec, PROFILE, requests, slo, max_instances=3, dram_options=[0.0], nvme_options=[0.0]
    )
    assert result.best is None
    assert len(result.tried) == 3  # 1:1, then 1:2 and 2:1
