import tomllib

import pytest

from engine.sim.cluster import Layout, parse_cluster
from kvstore.errors import ConfigError
from kvstore.types import EvictionPolicyKind, TierKind

GOOD = """
[cluster]
layout = "colocated"
num_colocated = 4
host_cores = 2
host_pin_prefills = true
profile = "llama3-70b-8xh100"
[store]
block_tokens = 512
eviction_policy = "lru"
shared = false
[tiers.dram]
capacity_bytes = 1e12
[network]
bandwidth_bytes_per_s = 12.5e9
[engine]
max_batch_tokens = 2048
[router]
policy = "round_robin"
"""


def test_a_description_overrides_the_defaults() -> None:
    spec = parse_cluster(tomllib.loads(GOOD))
    assert spec.layout is Layout.COLOCATED
    assert spec.num_instances == 4
    assert spec.host_cores == 2 and spec.host_pin_prefills
    assert spec.max_batch_tokens == 2048
    assert spec.eviction_policy is EvictionPolicyKind.LRU
    assert spec.shared is False
    assert spec.tiers[TierKind.DRAM].capacity_bytes == 1e12
    assert spec.network_bytes_per_s == 12.5e9
    assert spec.tier_blocks(TierKind.DRAM, 327680) == int(1e12 // (327680 * 512))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[clustr]\nlayout = 'colocated'", "clustr"),
        ("[cluster]\nlayot = 'colocated'", "cluster.layot"),
        ("[cluster]\nlayout = 'split'", "cluster.layout"),
        ("[cluster]\nnum_prefill = 1.5", "cluster.num_prefill"),
        ("[cluster]\nnum_prefill = 0", "cluster.num_prefill"),
        ("[cluster]\nhost_cores = 1.5", "cluster.host_cores"),
        ("[cluster]\nhost_busy_share = 1.0", "cluster.host_busy_share"),
        ("[store]\nshared = 1", "store.shared"),
        ("[store]\nblock_tokens = -1", "store.block_tokens"),
        ("[tiers.ssd]\ncapacity_bytes = 1", "tiers.ssd"),
        ("[tiers.dram]\nsize = 1", "tiers.dram.size"),
        ("[tiers.dram]\ncapacity_bytes = 'big'", "tiers.dram.capacity_bytes"),
        ("[router]\npolicy = 'fastest'", "router.policy"),
        ("[router]\nbalance_threshold = 0.5", "router.balance_threshold"),
    ],
)
def test_a_bad_key_is_named(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cluster(tomllib.loads(text))
    assert caught.value.key == key
