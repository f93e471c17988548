"""The transfer benchmark end to end on tiny settings: every figure, and no process left."""

from __future__ import annotations

import json
from pathlib import Path

from bench import transfer
from tests.bench.test_service_bench import children

TINY = transfer.TransferBenchConfig(
    sizes=("64k",),
    batch_blocks=4,
    rounds=1,
    latency_samples=10,
    layers=4,
    layer_bytes=64 << 10,
    compute_ms_per_layer=1.0,
    tls=False,
)


def test_main_writes_its_figures_and_leaves_no_process(tmp_path: Path) -> None:
    before = children()
    transfer.main(["--json", str(tmp_path / "transfer.json")], config=TINY)
    assert children() == before
    results = json.loads((tmp_path / "transfer.json").read_text())["results"]
    expected = {"memcpy_gbps", "socket_gbps", "tcp_gbps_64k", "shm_gbps_64k"}
    expected |= {"tcp_p50_us_64k", "tcp_p99_us_64k", "layerwise_overlap"}
    assert expected <= set(results)
    assert all(results[k] > 0 for k in expected - {"layerwise_overlap"})
    assert 0 <= results["layerwise_overlap"] <= 1
