"""Smoke tests of the hashing and tier benchmarks: tiny sizes, positive figures, JSON keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bench import hashing, tiers

MiB = 1 << 20
TINY_HASH = hashing.HashBenchConfig(
    num_tokens=64 * 256, num_list_tokens=16 * 256, checksum_blocks=4, repeats=1
)
HASH_KEYS = {
    "hash_tokens_per_s",
    "hash_list_tokens_per_s",
    "hash_torch_tokens_per_s",
    "checksum_gbps",
    "hash_us_per_block",
}
TIER_KEYS = {
    "memcpy_gbps",
    "dram_put_gbps",
    "dram_get_gbps",
    "odirect_write_gbps",
    "odirect_read_gbps",
    "odirect_write_1t_gbps",
    "odirect_read_1t_gbps",
    "nvme_put_gbps",
    "nvme_get_gbps",
}
OVERHEAD_KEYS = {f"stored_per_used_{n}" for n in (*tiers.OVERHEAD_SIZES, "mixed")}


def tiny_tiers(tmp_path: Path) -> tiers.TierBenchConfig:
    return tiers.TierBenchConfig(
        working_set_bytes=8 * MiB,
        batch_blocks=4,
        repeats=1,
        io_threads=2,
        data_dir=tmp_path,
        overhead_bytes=20 * MiB,
        page_bytes=5 * MiB,
    )


async def test_capacity_overhead_is_within_the_stated_bound(tmp_path: Path) -> None:
    config = tiny_tiers(tmp_path)  # 4 pages of 5 MiB
    assert await tiers.stored_per_used(config, [256 << 10]) == 1.0
    assert await tiers.stored_per_used(config, [2 * MiB]) == 0.8  # 2 slots a page, 1 MiB tail
    mixed = await tiers.stored_per_used(config, list(tiers.OVERHEAD_SIZES.values()))
    assert 0.5 < mixed <= 1.0


def test_hash_rates_are_positive_for_every_input_kind() -> None:
    tokens = np.arange(64 * 256, dtype=np.int32)
    assert hashing.measure_hash_rate(tokens, tokens.size, repeats=1) > 0
    assert hashing.measure_hash_rate(tokens.tolist(), tokens.size, repeats=1) > 0
    assert hashing.measure_checksum_gbps(4, 4096, repeats=1, seed=0) > 0


def test_hashing_main_writes_results_and_target(tmp_path: Path) -> None:
    affinity = os.sched_getaffinity(0)
    hashing.main(["--json", str(tmp_path / "x.json")], config=TINY_HASH)
    assert os.sched_getaffinity(0) == affinity  # pinning to one core is undone
    payload = json.loads((tmp_path / "x.json").read_text())
    assert set(payload["results"]) == HASH_KEYS
    assert all(value > 0 for value in payload["results"].values())
    assert set(payload["targets_met"]) == {"hash_tokens_per_s"}
    assert payload["config"]["num_tokens"] == TINY_HASH.num_tokens


def test_memcpy_and_raw_file_passes_are_positive(tmp_path: Path) -> None:
    config = tiny_tiers(tmp_path)
    work = tiers.make_workload(config)
    assert tiers.memcpy_pass(work, lambda n: None) > 0
    with tiers.RawFile(tmp_path / "raw.dat", work, config.io_threads) as raw:
        for threads in (1, config.io_threads):
            assert raw.pass_of(os.pwritev, threads)(lambda n: None) > 0
            assert raw.pass_of(os.preadv, threads)(lambda n: None) > 0
        last_batch = work.blocks[-len(work.dsts) :]  # what the last read left in the buffers
        assert [bytes(d) for d in work.dsts] == [bytes(b) for b in last_batch]
    assert not (tmp_path / "raw.dat").exists()


async def test_dram_store_rounds_report_put_get_and_baselines(tmp_path: Path) -> None:
    config = tiny_tiers(tmp_path)
    work = tiers.make_workload(config)
    overrides = {"tiers.dram.capacity_bytes": str(config.working_set_bytes)}
    memcpy = {"memcpy_gbps": lambda tick: tiers.memcpy_pass(work, tick)}
    run = await tiers.measure_store(config, work, overrides, "dram", tiers.Baselines({}, memcpy))
    assert set(run.figures) == {"memcpy_gbps", "dram_put_gbps", "dram_get_gbps"}
    assert all(value > 0 for value in run.figures.values())
    assert bytes(work.dsts[-1]) == bytes(work.blocks[-1])  # the last get copied real bytes


def test_tiers_main_writes_results_targets_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tiers.main(["--json", str(out / "x.json"), "--dir", str(tmp_path)], config=tiny_tiers(tmp_path))
    payload = json.loads((out / "x.json").read_text())
    assert set(payload["results"]) == TIER_KEYS | OVERHEAD_KEYS
    assert all(value > 0 for value in payload["results"].values())
    targets = {"dram_get_gbps", "nvme_put_gbps", "nvme_get_gbps"} | OVERHEAD_KEYS
    assert set(payload["targets"]) == targets
    assert {"data_fs", "raw_direct_io", "nvme_direct_io"} <= set(payload["config"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # temp dirs removed
