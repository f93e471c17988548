"""The engine benchmark end to end on a tiny model: every figure, and no process left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import engine
from bench.models import ModelShape
from engine.model.loader import load_model
from engine.model.synthetic import write_random_checkpoint
from tests.processes import children

MiB = 1 << 20
TINY = engine.EngineBenchConfig(
    model=ModelShape(
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=128,
        vocab_size=256,
        max_positions=512,
    ),
    prompt_lengths=(64, 128),
    cached_percents=(0, 50, 90),
    ttft_repeats=1,
    decode_batches=(1, 2),
    decode_prompt_tokens=16,
    decode_max_tokens=4,
    itl_streams=2,
    itl_prompt_tokens=8,
    itl_long_tokens=128,
    itl_warmup_tokens=2,
    itl_tokens=4,
    itl_rounds=1,
    cpu_check_s=0.2,
    kv_cache_bytes=16 * MiB,
    store_bytes=16 * MiB,
)


SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 100,
    "max_position_embeddings": 256,
    "seed": 3,
    "dtype": "bfloat16",
}


def test_a_random_checkpoint_loads_with_its_shapes(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "ckpt", **SHAPE)
    loaded = load_model(folder)
    config = loaded.config
    assert (config.hidden_size, config.num_layers, config.head_dim) == (64, 2, 16)
    assert (config.num_kv_heads, config.vocab_size, config.torch_dtype) == (2, 100, "bfloat16")
    weights = dict(loaded.model.named_parameters())
    assert float(weights["model.norm.weight"].float().min()) == 1.0
    std = float(weights["lm_head.weight"].float().std())
    assert 0.015 < std < 0.025
    assert loaded.tokenizer.encode("w5 w7") == [5, 7]
    again = write_random_checkpoint(tmp_path / "again", **SHAPE)
    same = (again / "model.safetensors").read_bytes()
    assert same == (folder / "model.safetensors").read_bytes()


def test_main_writes_every_figure_and_leaves_no_process(tmp_path: Path) -> None:
    before = children()
    engine.main(["--json", str(tmp_path / "engine.json")], config=TINY)
    assert children() == before
    payload = json.loads((tmp_path / "engine.json").read_text())
    results = payload["results"]
    expected = {
        f"{f}_{n}_{p}" for f in ("ttft_ms", "compute_ms") for n in (64, 128) for p in (0, 50, 90)
    }
    expected |= {"prefill_s_64", "prefill_s_128", "ttft_speedup_128_90"}
    expected |= {"decode_tok_s_b1", "decode_tok_s_b2", "itl_ratio"}
    expected |= {"core_isolation", "cpu_jitter"}
    for arrangement in ("colocated", "disaggregated"):
        for figure in ("itl_p99_ms", "itl_p50_ms", "itl_p99_ms_idle", "itl_long_prompt_s"):
            expected.add(f"{figure}_{arrangement}")
        expected.add(f"itl_long_prompts_{arrangement}")
    assert set(results) == expected
    assert all(value > 0 for value in results.values())
    assert set(payload["targets"]) == {"itl_ratio"}
    assert (tmp_path / "engine.png").stat().st_size > 0
