"""The vLLM connector's core measurements, small, against a real store node: the load
path moves every held block and is timed beside memcpy; a chunked prefill stages only
what each pass saves."""

from __future__ import annotations

import torch

from bench.procs import start_strata
from bench.vllm_core import CoreConfig, core_figures
from kvstore.integrations.vllm_settings import namespace_for

NAMESPACE = namespace_for(
    "bench-core-test",
    num_layers=2,
    num_kv_heads=2,
    head_size=32,
    head_size_v=32,
    dtype=torch.float32,
    block_size=32,
)


def test_load_is_timed_beside_memcpy_and_chunks_stage_only_what_they_save() -> None:
    store = start_strata(NAMESPACE.block_bytes, 16 << 20, 1 << 20)
    try:
        config = CoreConfig(num_blocks=8, num_tokens=256, chunk_tokens=64, rounds=1, seed=1)
        figures = core_figures(f"127.0.0.1:{store.port}", NAMESPACE, config)
    finally:
        store.stop()
    assert figures["load_gbps"] > 0 and figures["memcpy_gbps"] > 0
    assert figures["load_over_memcpy"] == figures["load_gbps"] / figures["memcpy_gbps"]
    assert 0 < figures["load_start_ms"] < figures["load_ms"]
    mib = NAMESPACE.block_bytes / (1 << 20)
    # 4 passes of 2 blocks each; opened anew, they span 2, 4, 6 and 8 pages
    assert figures["chunked_staged_mib"] == 8 * mib
    assert figures["chunked_every_page_mib"] == 20 * mib
    assert set(figures) == {
        *("load_gbps", "memcpy_gbps", "load_over_memcpy", "scatter_gbps", "checksum_gbps"),
        *("load_ms", "load_start_ms", "chunked_staged_mib", "chunked_every_page_mib"),
        *("chunked_connector_ms", "chunked_commit_wait_ms"),
    }
