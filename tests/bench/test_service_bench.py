"""Smoke test of the service benchmark: real child processes, tiny passes, JSON keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import procs, service
from tests.processes import children

MiB = 1 << 20
TINY = service.ServiceBenchConfig(
    sizes=("64k", "1m"),
    pass_bytes=2 * MiB,
    socket_pass_bytes=8 * MiB,
    batch_blocks=2,
    latency_samples=4,
    repeats=1,
)
PER_SIZE = [
    "redis_put_gbps_{}",
    "redis_get_gbps_{}",
    "strata_put_gbps_{}",
    "strata_get_gbps_{}",
    "strata_put_gbps_{}_batch2",
    "strata_get_gbps_{}_batch2",
    "strata_grpc_put_gbps_{}",
    "strata_grpc_get_gbps_{}",
]
LATENCY = ["redis_get_p50_us_1m", "redis_get_p99_us_1m"]
LATENCY += ["strata_get_p50_us_1m", "strata_get_p99_us_1m"]


def test_block_specs_are_exactly_each_size() -> None:
    for size in service.SIZES.values():
        assert service.block_spec(size).block_bytes == size
    with pytest.raises(ValueError):
        service.block_spec(3 * 1024)


def test_main_writes_every_figure_and_leaves_no_process(tmp_path: Path) -> None:
    before = children()
    service.main(["--json", str(tmp_path / "service.json")], config=TINY)
    assert children() == before
    payload = json.loads((tmp_path / "service.json").read_text())
    results = payload["results"]
    expected = {"socket_gbps", "strata_get_vs_redis_1m", *LATENCY}
    expected |= {name.format(size) for size in TINY.sizes for name in PER_SIZE}
    assert set(results) == expected
    assert all(value > 0 for value in results.values())
    config = payload["config"]
    assert config["redis_parser"] == "_HiredisParser"
    assert config["redis_packer"] == "PythonRespSerializer"
    assert config["pass_bytes"] == TINY.pass_bytes


def test_a_node_that_cannot_start_is_reported_and_reaped() -> None:
    before = children()
    with pytest.raises(RuntimeError, match="did not start"):
        procs.start_strata(block_bytes=MiB, capacity_bytes=MiB // 2, chunk_bytes=MiB)
    assert children() == before
