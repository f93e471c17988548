"""The hit-rate benchmark's simulations, oracles and output, on small traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import hitrate
from bench.agent_trace import agent_trace
from bench.cache_replay import EVICTION_VARIANTS, VARIANTS, Variant, keyed, replay
from bench.conversations import extension_figures
from bench.traces import (
    Trace,
    belady_hit_rate,
    load_trace,
    next_uses,
    oracle_admission_hit_rate,
    synthetic_trace,
    unbounded_hit_rate,
)
from kvstore.policy.admission import AdmitAll
from kvstore.policy.eviction import make_eviction_policy
from kvstore.types import AdmissionPolicyKind, EvictionPolicyKind, TierKind

CAPACITIES = (50, 200, 1_000)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return synthetic_trace(400, seed=1)


@pytest.fixture(scope="module")
def index_rates(trace: Trace) -> dict[tuple[str, int | None], float]:
    requests = keyed(trace)
    return {
        (v.name, capacity): replay(trace, requests, v, capacity).hit_rate
        for v in VARIANTS
        for capacity in (*CAPACITIES, None)
    }


def variant(kind: EvictionPolicyKind) -> Variant:
    return Variant(kind.value, lambda: make_eviction_policy(kind), AdmitAll)


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
    trace: Trace, index_rates: dict[tuple[str, int | None], float]
) -> None:
    bound = unbounded_hit_rate(trace)
    storing_all = {v.name for v in EVICTION_VARIANTS}
    for (name, capacity), rate in index_rates.items():
        assert 0.0 <= rate <= bound + 1e-12, (name, capacity)
        if capacity is None and name in storing_all:
            assert rate == pytest.approx(bound), name  # no eviction: every policy is equal
    assert index_rates["lru", 50] < bound  # the capacities do bind
    # Skipping first-seen blocks loses every second turn's hits, even unbounded.
    assert index_rates["prefix_lru+tinylfu", None] < bound


def test_belady_beats_every_online_policy_and_oracle_admission(
    trace: Trace, index_rates: dict[tuple[str, int | None], float]
) -> None:
    nexts = next_uses(trace)
    for capacity in CAPACITIES:
        optimum = belady_hit_rate(trace, capacity, nexts)
        assert optimum <= unbounded_hit_rate(trace) + 1e-12
        assert optimum >= oracle_admission_hit_rate(trace, capacity, nexts)
        for v in VARIANTS:
            assert optimum >= index_rates[v.name, capacity], (v.name, capacity)


def test_prefix_lru_keeps_the_prefix_that_flat_lru_strands() -> None:
    # Capacity 3. Request 2 forces one eviction: flat LRU takes block 1, the oldest, and
    # strands 2 and 3; prefix LRU takes leaf 3 and keeps the prefix 1, 2 for request 3.
    stranding = Trace("stranding", [[1, 2, 3], [4], [1, 2, 3]])
    requests = keyed(stranding)
    lru = replay(stranding, requests, variant(EvictionPolicyKind.LRU), 3).hit_rate
    prefix_lru = replay(stranding, requests, variant(EvictionPolicyKind.PREFIX_LRU), 3).hit_rate
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
    assert loaded.arrivals_s == [0.0, 0.005]  # milliseconds in the file
    assert loaded.last_full == [True, False]  # 1024 = 2 x 512 tokens; 1500 is not a multiple


async def test_tiered_store_run_serves_hits_from_both_tiers(trace: Trace, tmp_path: Path) -> None:
    config = hitrate.tiered_config(tmp_path, dram_blocks=300, nvme_blocks=3_000)
    run = await hitrate.simulate_tiered(keyed(trace), config, verify_every=1)
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
    argv = ["--trace", str(source), "--requests", "120", "--json", str(out)]
    hitrate.main([*argv, "--lookahead-s", "2", "--cost-blocks", "2000", "--cost-accesses", "400"])
    payload = json.loads(out.read_text())
    results, config = payload["results"], payload["config"]
    names = [v.name for v in VARIANTS] + [f"{n}+queue" for n in hitrate.QUEUE_VARIANTS]
    expected = {
        f"hit_rate_{name}_{c}"
        for name in [*names, "belady", "oracle_admission"]
        for c in hitrate.CAPACITIES
    }
    tiered = [k.value for k in EvictionPolicyKind]
    tiered += ["prefix_lru+doorkeeper", "prefix_lru+doorkeeper_skip"]
    expected |= {f"hit_rate_tiered_{name}" for name in tiered}
    expected |= {f"tiered_dram_share_{name}" for name in tiered}
    expected |= {"hit_rate_bound", "p_extend_turn_1"}
    assert expected <= results.keys()
    assert all(0.0 <= results[k] <= 1.0 for k in expected)
    assert results["tiered_slow_blocks_prefix_lru+doorkeeper"] > 0
    assert results["tiered_skipped_blocks_prefix_lru+doorkeeper_skip"] > 0
    for k in EvictionPolicyKind:
        assert 0 < results[f"cost_{k.value}_p50_us"] <= results[f"cost_{k.value}_p99_us"]
    assert config["trace"] == str(source)
    assert config["num_requests"] == 120
    assert config["num_blocks"] == small.head(120).num_blocks
    assert config["quick"] is False and config["seed"] == 0
    assert config["lookahead_s"] == 2.0
    assert "hit_rate_chain_value_10000" in payload["targets"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_queue_protection_pins_what_arrived_requests_will_read() -> None:
    # Capacity 2. Request 0 stores [1, 2]; requests 1 and 2 (one-offs) would push them out
    # before request 3 reads them. Known 6 s ahead, request 3 arrives while request 1 is
    # served and pins [1, 2] until its own turn.
    trace = Trace("queue", [[1, 2], [3], [4], [1, 2]], [0.0, 5.0, 6.0, 7.0], [True] * 4)
    requests = keyed(trace)
    lru = variant(EvictionPolicyKind.PREFIX_LRU)
    assert replay(trace, requests, lru, 2).hit_rate == 0.0
    seen_late = replay(trace, requests, lru, 2, lookahead_s=0.5)  # arrives after the churn
    assert seen_late.hit_rate == 0.0
    protected = replay(trace, requests, lru, 2, lookahead_s=6.0)
    assert protected.hit_rate == pytest.approx(2 / 6)
    assert protected.num_overflows == 0  # each one-off was the only candidate: it left at once


def test_score_from_counts_only_the_later_requests() -> None:
    trace = Trace("split", [[1, 2], [1, 2], [1, 2, 3]])
    requests = keyed(trace)
    lru = variant(EvictionPolicyKind.LRU)
    assert replay(trace, requests, lru, None).hit_rate == pytest.approx(4 / 7)
    assert replay(trace, requests, lru, None, score_from=2).hit_rate == pytest.approx(2 / 3)


def test_full_blocks_only_does_not_store_a_partial_last_block() -> None:
    trace = Trace("partial", [[1, 2], [1, 2]], last_full=[False, False])
    by_name = {v.name: v for v in VARIANTS}
    requests = keyed(trace)
    assert replay(trace, requests, by_name["prefix_lru"], None).hit_rate == pytest.approx(2 / 4)
    assert replay(trace, requests, by_name["prefix_lru+full"], None).hit_rate == pytest.approx(
        1 / 4
    )


def test_agent_trace_is_seeded_prefix_consistent_and_unlike_chat() -> None:
    trace = agent_trace(600, seed=1)
    assert agent_trace(600, seed=1) == trace and agent_trace(600, seed=2) != trace
    assert trace.arrivals_s == sorted(trace.arrivals_s)
    parent_of: dict[int, int | None] = {}
    for request in trace.requests:
        for h, parent in zip(request, [None, *request[:-1]], strict=True):
            assert parent_of.setdefault(h, parent) == parent
    chat = extension_figures(synthetic_trace(600, seed=1))
    agents = extension_figures(trace)
    assert agents["gap_p50_s"] < chat["gap_p50_s"] / 5  # steps seconds apart, not minutes


def test_extension_figures_count_turns_and_gaps() -> None:
    # Request 1 extends request 0 (shares [1, 2]); request 2 extends 1; request 3 shares
    # only the first block, which is not an extension.
    trace = Trace("turns", [[1, 2], [1, 2, 3], [1, 2, 3, 4], [1, 5]], [0.0, 10.0, 40.0, 50.0])
    figures = extension_figures(trace)
    assert figures["share_turn_1"] == pytest.approx(2 / 4)
    assert figures["p_extend_turn_1"] == pytest.approx(1 / 2)
    assert figures["p_extend_turn_2"] == 1.0 and figures["p_extend_turn_3"] == 0.0
    assert figures["gap_p50_s"] == pytest.approx(20.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--variants", "lru,nope"],
        ["--variants", "chain_value"],  # no lru to compare with
        ["--tiered", "fifo"],
        ["--score-from", "1.0"],
        ["--lookahead-s", "-1"],
    ],
)
def test_bad_flags_are_refused_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        hitrate.main(argv)
    assert "error:" in capsys.readouterr().err


async def test_tiered_runs_apply_the_admission_policy_through_the_store_config(
    trace: Trace, tmp_path: Path
) -> None:
    kinds = (AdmissionPolicyKind.DOORKEEPER, AdmissionPolicyKind.DOORKEEPER_SKIP)
    runs = {}
    for kind in kinds:
        config = hitrate.tiered_config(
            tmp_path / kind.value, 300, 3_000, EvictionPolicyKind.PREFIX_LRU, kind
        )
        assert config.store.admission_policy is kind
        runs[kind] = await hitrate.simulate_tiered(keyed(trace), config, verify_every=1)
    slow, skip = runs[kinds[0]], runs[kinds[1]]
    assert slow.num_slow_blocks > 0 and slow.num_skipped_blocks == 0
    assert skip.num_slow_blocks == 0 and skip.num_skipped_blocks > 0
    for run in runs.values():
        assert run.num_verified == sum(run.hits_by_tier.values())
    assert skip.hit_rate < slow.hit_rate  # a second turn can never hit a skipped chain
