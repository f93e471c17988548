"""The router benchmark at tiny sizes: the decision-latency section, and the end-to-end
section on a real local cluster (tiny model, a dozen requests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import router
from tests.processes import children

TINY = router.DecisionConfig(
    index_blocks=5_000,
    num_requests=200,
    num_shared_prefixes=20,
    memory_blocks=2_000,
    num_snapshots=8,
)


def test_decision_latency_reports_every_figure() -> None:
    results = router.decision_latency(TINY, seed=1)
    assert 0 < results["decision_p50_us"] <= results["decision_p99_us"]
    assert results["decision_p99_us"] <= results["decision_max_us"]
    assert 50 < results["index_bytes_per_block"] < 1_000
    assert 0 < results["reused_block_share"] < 1
    assert 0 <= results["pulled_decision_share"] <= 1


def test_the_workload_is_seeded() -> None:
    a = router.decision_latency(TINY, seed=3)
    b = router.decision_latency(TINY, seed=3)
    assert a["reused_block_share"] == b["reused_block_share"]
    assert a["pulled_decision_share"] == b["pulled_decision_share"]


def test_main_writes_json(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    argv = ["--quick", "--part", "decision", "--index-blocks", "3000", "--requests", "100"]
    argv += ["--json", str(path)]
    results = router.main(argv)
    payload = json.loads(path.read_text())
    assert payload["benchmark"] == "router"
    assert payload["config"]["index_blocks"] == 3000
    assert payload["results"]["decision_p99_us"] == results["decision_p99_us"]
    assert set(payload["targets_met"]) == {"decision_budget_headroom"}


@pytest.mark.slow
def test_end_to_end_on_a_tiny_cluster(tmp_path: Path) -> None:
    before = children()
    path = tmp_path / "router.json"
    argv = ["--part", "e2e", "--tiny-model", "--e2e-requests", "12", "--block-tokens", "16"]
    argv += ["--time-scale", "0.05", "--repeats", "1", "--warmup-requests", "4"]
    argv += ["--json", str(path)]
    results = router.main(argv)
    payload = json.loads(path.read_text())
    keys = {"ttft_p90_ratio", "ttft_p90_headroom", "model_ttft_p90_ratio", "offered_load"}
    for policy in router.E2E_POLICIES:
        for prefix in ("", "model_"):
            keys |= {f"{prefix}{f}_{policy}" for f in ("local_hit_rate", "hit_rate")}
            keys |= {f"{prefix}ttft_p{q}_ms_{policy}" for q in (50, 90)}
    assert keys <= set(payload["results"])
    assert payload["results"]["ttft_p90_ratio"] == results["ttft_p90_ratio"]
    for policy in router.E2E_POLICIES:
        assert 0 < results[f"ttft_p50_ms_{policy}"] <= results[f"ttft_p90_ms_{policy}"]
        local, anywhere = results[f"local_hit_rate_{policy}"], results[f"hit_rate_{policy}"]
        assert 0 <= local <= anywhere <= 1
        # every request streams several tokens: their intervals are measured
        assert 0 < results[f"itl_p50_ms_{policy}"] <= results[f"itl_p90_ms_{policy}"]
        for role in ("bench", "redis", "store", "prefill", "decode"):
            assert results[f"cpu_cores_{role}_{policy}"] >= 0
        assert results[f"cpu_cores_prefill_{policy}"] > 0  # the prompts were computed
        assert results[f"prefill_cpu_over_fit_{policy}"] > 0
        # the prefill worker's own timings came back with the first chunks
        assert 0 < results[f"prefill_compute_p50_ms_{policy}"] < results[f"ttft_p90_ms_{policy}"]
        assert results[f"prefill_queue_p50_ms_{policy}"] >= 0
        assert results[f"outside_prefill_p50_ms_{policy}"] > 0
        # a forward pass's wall time: on a core, waiting for one, or blocked
        on_core = results[f"prefill_forward_cpu_share_{policy}"]
        waiting = results[f"prefill_forward_wait_share_{policy}"]
        assert on_core > 0 and waiting >= 0 and on_core + waiting <= 1.01
        assert 0 <= results[f"decode_step_wait_ms_{policy}"] <= results[f"decode_step_ms_{policy}"]
        assert results[f"cpu_wait_over_cpu_prefill_{policy}"] >= 0
    # on the idle cluster, the store nodes wrote the prompts' blocks, the decode worker
    # took their hand-offs and streamed their tokens
    assert payload["config"]["host_prefill_side_share"] > 0
    assert payload["config"]["host_decode_side_share"] > 0
    assert set(payload["targets_met"]) == {
        "ttft_p90_headroom",
        "local_hit_rate_cache_aware",
        "hit_rate_cache_aware",
    }
    assert payload["config"]["e2e_num_requests"] == 12
    assert payload["config"]["e2e_warmup_requests"] == 4
    assert path.with_suffix(".png").stat().st_size > 0
    assert children() <= before  # the cluster's processes are gone
