"""The router benchmark's decision-latency section at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

from bench import router

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
    argv = ["--quick", "--index-blocks", "3000", "--requests", "100", "--json", str(path)]
    results = router.main(argv)
    payload = json.loads(path.read_text())
    assert payload["benchmark"] == "router"
    assert payload["config"]["index_blocks"] == 3000
    assert payload["results"]["decision_p99_us"] == results["decision_p99_us"]
    assert set(payload["targets_met"]) == {"decision_budget_headroom"}
