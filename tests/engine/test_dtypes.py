"""One dtype table: every name the engine accepts means the same torch dtype, size and
safetensors type everywhere (config, config.json, checkpoint writer and loader, the
store's KV layout), and KV page sizes come from ``BlockSpec``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.build import make_cache, torch_dtype
from engine.config import load_engine_config
from engine.dtypes import NAMES, Dtype
from engine.model.hf_config import ModelLoadError, model_config_from_hf
from engine.model.loader import load_model
from engine.model.synthetic import write_random_checkpoint
from engine.model.tiny import CONFIG as TINY_CONFIG
from engine.router.up import _store_flags
from kvstore.errors import ConfigError
from kvstore.layout import BlockSpec, KVDtype
from tests.engine.checkpoints import LLAMA


@pytest.mark.parametrize("name", NAMES)
def test_every_name_round_trips_through_the_table(name: str) -> None:
    kind = Dtype(name)
    assert kind.value == name and str(kind) == name
    assert Dtype.of(kind.torch_dtype()) is kind
    assert torch_dtype(name) == kind.torch_dtype()
    assert kind.itemsize == torch.empty((), dtype=kind.torch_dtype()).element_size()
    store = KVDtype(name)  # a KV page holds its model's dtype
    assert store.torch_dtype() == kind.torch_dtype() and store.itemsize == kind.itemsize
    assert KVDtype.of(kind.torch_dtype()) is store


@pytest.mark.parametrize("name", NAMES)
def test_every_name_is_read_from_config_and_config_json(name: str) -> None:
    assert load_engine_config(env={}, overrides={"engine.dtype": name}).engine.dtype == name
    assert model_config_from_hf({**LLAMA, "torch_dtype": name}, model_id="m").torch_dtype == name


@pytest.mark.parametrize("name", NAMES)
def test_a_written_checkpoint_loads_back_in_its_dtype(name: str, tmp_path: Path) -> None:
    folder = write_random_checkpoint(
        tmp_path / name,
        hidden_size=32,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        vocab_size=40,
        max_position_embeddings=64,
        seed=0,
        dtype=name,
    )
    loaded = load_model(folder)
    assert loaded.config.torch_dtype == name
    assert {p.dtype for p in loaded.model.parameters()} == {Dtype(name).torch_dtype()}


def test_unknown_names_are_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"engine\.dtype.*float32, float16, bfloat16"):
        load_engine_config(env={}, overrides={"engine.dtype": "fp16"})
    with pytest.raises(ModelLoadError, match="'float64' is not one of float32, float16"):
        model_config_from_hf({**LLAMA, "torch_dtype": "float64"}, model_id="m")
    with pytest.raises(ValueError, match="expected one of float32, float16, bfloat16"):
        torch_dtype("float8_e4m3fn")  # a KV dtype of the store, not one the engine computes in
    with pytest.raises(ValueError, match="expected one of"):
        write_random_checkpoint(
            tmp_path,
            hidden_size=32,
            num_layers=1,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=64,
            vocab_size=40,
            max_position_embeddings=64,
            seed=0,
            dtype="half",
        )


@pytest.mark.parametrize("name", NAMES)
def test_page_sizes_come_from_the_block_spec(name: str) -> None:
    kind = KVDtype(name)
    spec = BlockSpec(
        TINY_CONFIG.num_layers, TINY_CONFIG.num_kv_heads, TINY_CONFIG.head_dim, kind, 16
    )
    cache = make_cache(
        TINY_CONFIG,
        page_tokens=16,
        cache_bytes=10 * spec.block_bytes,
        dtype=kind.torch_dtype(),
        device="cpu",
    )
    assert cache.spec == spec and cache.num_pages == 10
    config = load_engine_config(
        env={}, overrides={"engine.dtype": name, "engine.page_tokens": "16"}
    )
    assert config.engine.page_spec(TINY_CONFIG) == spec
    assert f"--store.block_bytes={spec.block_bytes}" in _store_flags(config, 0)
