"""The hit-rate benchmark's simulations, oracles and output, on small traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import hitrate
from bench.traces import (
    Trace,
    belady_hit_rate,
    load_trace,
    next_uses,
    synthetic_trace,
    unbounded_hit_rate,
)
from kvstore.types import EvictionPolicyKind, TierKind

CAPACITIES = (50, 200, 1_000)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return synthetic_trace(400, seed=1)


@pytest.fixture(scope="module")
def index_rates(trace: Trace) -> dict[tuple[EvictionPolicyKind, int | None], float]:
    requests = hitrate.keyed(trace)
    return {
        (kind, capacity): hitrate.simulate_index(requests, kind, capacity)
        for kind in hitrate.POLICIES
        for capacity in (*CAPACITIES, None)
    }


def test_synthetic_trace_is_seeded_and_prefix_consistent(trace: Trace) -> None:
    assert synthetic_trace(400, seed=1) == trace
    assert synthetic_trace(400, seed=2) != trace
    parent_of: dict[int, int | None] = {}
    for request in trace.requests:
        assert len(set(request)) == len(request)
        for h, parent in zip(request, [None, *request[:-1]], strict=True):
            # A hash id names a prefix: it has the same parent wherever it appears.
            assert parent_of.setdefault(h, parent) == parent
    assert 0.2 < unbounded_hit_rate(trace) < 0.6  # reuse of the same order as Mooncake's


def test_hit_rates_are_rates_and_bounded_by_unbounded(
    trace: Trace, index_rates: dict[tuple[EvictionPolicyKind, int | None], float]
) -> None:
    bound = unbounded_hit_rate(trace)
    for (kind, capacity), rate in index_rates.items():
        assert 0.0 <= rate <= 1.0
        if capacity is None:
            assert rate == pytest.approx(bound), kind  # no eviction: every policy is equal
        else:
            assert rate <= bound + 1e-12, (kind, capacity)
    assert index_rates[EvictionPolicyKind.LRU, 50] < bound  # the capacities do bind


def test_belady_beats_every_online_policy(
    trace: Trace, index_rates: dict[tuple[EvictionPolicyKind, int | None], float]
) -> None:
    nexts = next_uses(trace)
    for capacity in CAPACITIES:
        optimum = belady_hit_rate(trace, capacity, nexts)
        assert optimum <= unbounded_hit_rate(trace) + 1e-12
        for kind in hitrate.POLICIES:
            assert optimum >= index_rates[kind, capacity], (kind, capacity)


def test_prefix_lru_keeps_the_prefix_that_flat_lru_strands() -> None:
    # Capacity 3. Request 2 forces one eviction: flat LRU takes block 1, the oldest, and
    # strands 2 and 3; prefix LRU takes leaf 3 and keeps the prefix 1, 2 for request 3.
    stranding = Trace("stranding", [[1, 2, 3], [4], [1, 2, 3]])
    requests = hitrate.keyed(stranding)
    lru = hitrate.simulate_index(requests, EvictionPolicyKind.LRU, 3)
    prefix_lru = hitrate.simulate_index(requests, EvictionPolicyKind.PREFIX_LRU, 3)
    assert lru == 0.0
    assert prefix_lru == pytest.approx(2 / 7)
    assert belady_hit_rate(stranding, 3) == pytest.approx(3 / 7)  # it drops one-off block 4


def test_load_trace_reads_mooncake_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [
        {"timestamp": 0, "input_length": 1024, "output_length": 8, "hash_ids": [0, 1]},
        {"timestamp": 5, "input_length": 1500, "output_length": 9, "hash_ids": [0, 1, 2]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    loaded = load_trace(path)
    assert loaded.requests == [[0, 1], [0, 1, 2]]
    assert (loaded.num_requests, loaded.num_blocks, loaded.num_unique_blocks) == (2, 5, 3)
    assert unbounded_hit_rate(loaded) == pytest.approx(2 / 5)


async def test_tiered_store_run_serves_hits_from_both_tiers(trace: Trace, tmp_path: Path) -> None:
    config = hitrate.tiered_config(tmp_path, dram_blocks=300, nvme_blocks=3_000)
    run = await hitrate.simulate_tiered(hitrate.keyed(trace), config, verify_every=1)
    num_hits = sum(run.hits_by_tier.values())
    assert num_hits > 0 and run.num_verified == num_hits  # every hit's bytes were checked
    assert run.hits_by_tier.get(TierKind.DRAM, 0) > 0
    assert run.hits_by_tier.get(TierKind.NVME, 0) > 0  # DRAM overflowed into NVMe
    shares = [run.hits_by_tier.get(t, 0) / num_hits for t in (TierKind.DRAM, TierKind.NVME)]
    assert sum(shares) == pytest.approx(1.0)
    assert run.num_failed_puts == 0
    assert 0.0 < run.hit_rate <= unbounded_hit_rate(trace) + 1e-12


def test_main_writes_json_and_plot(tmp_path: Path) -> None:
    source = tmp_path / "trace.jsonl"
    small = synthetic_trace(150, seed=3)
    source.write_text("".join(json.dumps({"hash_ids": r}) + "\n" for r in small.requests))
    out = tmp_path / "out" / "hitrate.json"
    hitrate.main(["--trace", str(source), "--requests", "120", "--json", str(out)])
    payload = json.loads(out.read_text())
    results, config = payload["results"], payload["config"]
    expected = {
        f"hit_rate_{name}_{c}"
        for name in ("lru", "prefix_lru", "lfu", "belady")
        for c in hitrate.CAPACITIES
    }
    expected |= {"hit_rate_bound", "hit_rate_tiered", "tiered_share_dram", "tiered_share_nvme"}
    assert expected <= results.keys()
    assert all(0.0 <= results[k] <= 1.0 for k in expected)
    assert config["trace"] == str(source)
    assert config["num_requests"] == 120
    assert config["num_blocks"] == small.head(120).num_blocks
    assert config["quick"] is False and config["seed"] == 0
    assert payload["targets"].keys() == {f"hit_rate_prefix_lru_{c}" for c in hitrate.CAPACITIES}
    assert out.with_suffix(".png").stat().st_size > 0
