"""Loading checkpoint folders: what is read, what is refused, and the tiny default model.

Checkpoints here are written by hand (config.json dicts, ``safetensors.torch.save_file``),
so these tests need no transformers; tests/engine/test_reference.py checks the numbers
against transformers.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.chat import encode_chat
from engine.model.config import Architecture
from engine.model.hf_config import model_config_from_hf
from engine.model.loader import TINY_MODEL_PATH, ModelLoadError, load_model
from engine.model.loader import load_default_model as load_tiny
from engine.model.tiny import CONFIG as TINY_CONFIG
from engine.model.tiny import build_tiny_model
from tests.engine.checkpoints import LLAMA, greedy, state_dict, write_checkpoint

# -- missing and broken files ---------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_missing_file_is_named_with_its_folder(tmp_path: Path, name: str) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    (folder / name).unlink()
    with pytest.raises(ModelLoadError, match=f"{name}.* is missing from {folder}"):
        load_model(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_an_unreadable_file_is_named(tmp_path: Path, name: str) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    (folder / name).write_bytes(b"not what it should be")
    with pytest.raises(ModelLoadError, match=f"{name} is not a readable"):
        load_model(folder)


def test_a_missing_shard_is_named(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00002\.safetensors .*missing"):
        load_model(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not a folder"):
        load_model(tmp_path / "nowhere")


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    tensors = state_dict(LLAMA)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert "model.layers.1.mlp.up_proj.weight" in str(info.value)
    assert "model.layers.0.mlp.extra.weight" in str(info.value)


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    tensors = state_dict(LLAMA)
    tensors["model.norm.weight"] = torch.ones(31)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"model\.norm\.weight .*\(31,\).*\(32,\)"):
        load_model(folder)


# -- what is read ---------------------------------------------------------------------


def test_sharded_and_single_file_checkpoints_load_the_same_weights(tmp_path: Path) -> None:
    single = load_model(write_checkpoint(tmp_path / "one"))
    sharded = load_model(write_checkpoint(tmp_path / "three", shards=3))
    assert (tmp_path / "three" / "model-00003-of-00003.safetensors").is_file()
    a, b = single.model.state_dict(), sharded.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not single.model.training
    assert greedy(single.model, [3, 4, 5], 8) == greedy(sharded.model, [3, 4, 5], 8)


def test_tied_checkpoint_without_lm_head(tmp_path: Path) -> None:
    loaded = load_model(write_checkpoint(tmp_path / "tied", {**LLAMA, "tie_word_embeddings": True}))
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    assert loaded.model.lm_head.weight.abs().sum() > 0


def test_weights_match_the_files(tmp_path: Path) -> None:
    loaded = load_model(write_checkpoint(tmp_path / "ckpt", seed=3))
    expected = state_dict(LLAMA, seed=3)
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_dtype_defaults_to_the_checkpoints_and_can_be_chosen(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", {**LLAMA, "torch_dtype": "bfloat16"})
    assert load_model(folder).model.lm_head.weight.dtype == torch.bfloat16
    assert load_model(folder, dtype=torch.float32).model.lm_head.weight.dtype == torch.float32


def test_eos_ids_come_from_generation_config_first(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    assert load_model(folder).eos_token_ids == (2,)  # config.json
    generation = {"eos_token_id": [2, 7, 9], "temperature": 0.6, "top_p": 0.9, "do_sample": True}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    loaded = load_model(folder)
    assert loaded.eos_token_ids == (2, 7, 9)
    assert loaded.config.eos_token_ids == (2, 7, 9)
    assert loaded.tokenizer.eos_token_ids == (2, 7, 9)
    assert loaded.generation.temperature == 0.6
    assert loaded.generation.top_p == 0.9
    assert loaded.generation.do_sample is True
    assert loaded.generation.top_k is None


def test_eos_from_the_tokenizer_when_configs_have_none(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", {**LLAMA, "eos_token_id": None})
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "w5", "bos_token": "w1"})
    )
    loaded = load_model(folder)
    assert loaded.eos_token_ids == (5,)
    assert loaded.tokenizer.bos_token_id == 1
    assert loaded.special_tokens == {"bos_token": "w1", "eos_token": "w5"}


def test_chat_template_sources(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    assert load_model(folder).chat_template is None
    listed = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": listed}))
    assert load_model(folder).chat_template == "D"
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "C"}))
    assert load_model(folder).chat_template == "C"
    (folder / "chat_template.jinja").write_text("J")
    assert load_model(folder).chat_template == "J"


def test_model_id_names_the_folder_and_digests_the_checkpoint(tmp_path: Path) -> None:
    a = load_model(write_checkpoint(tmp_path / "ckpt")).config.model_id
    assert a.startswith("ckpt-") and len(a) == len("ckpt-") + 12
    shutil.copytree(tmp_path / "ckpt", tmp_path / "copy" / "ckpt")
    assert load_model(tmp_path / "copy" / "ckpt").config.model_id == a
    other_config = write_checkpoint(tmp_path / "b" / "ckpt", {**LLAMA, "rope_theta": 500000.0})
    assert load_model(other_config).config.model_id != a
    fine_tune = write_checkpoint(tmp_path / "c" / "ckpt", seed=1)  # same config, other weights
    assert load_model(fine_tune).config.model_id != a


# -- the tiny default model -----------------------------------------------------------

_DIGEST_SNIPPET = """
import hashlib
from engine.model.tiny import build_tiny_model
digest = hashlib.sha256()
for name, tensor in sorted(build_tiny_model().state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.numpy().tobytes())
print(digest.hexdigest())
"""


def _tiny_digest() -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(build_tiny_model().state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_tiny_model_is_deterministic_across_processes() -> None:
    here = _tiny_digest()
    assert here == _tiny_digest()
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _DIGEST_SNIPPET],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == here


def test_tiny_model_builds_fast_and_is_shaped_as_documented() -> None:
    start = time.perf_counter()
    loaded = load_model(TINY_MODEL_PATH)
    assert time.perf_counter() - start < 1.0
    model, config = loaded.model, loaded.config
    assert config is TINY_CONFIG and config.model_id == "strata-tiny-v1"
    assert config.architecture is Architecture.LLAMA
    assert (config.hidden_size, config.num_layers, config.num_heads, config.num_kv_heads) == (
        128,
        4,
        4,
        2,
    )
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert float(model.model.embed_tokens.weight.std()) == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.model.norm.weight, torch.ones(128))
    assert not model.training


def test_tiny_model_generates_and_its_tokenizer_round_trips() -> None:
    loaded = load_tiny()
    tokenizer = loaded.tokenizer
    text = "héllo, 世界 🎉"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    prompt = encode_chat(
        tokenizer,
        loaded.chat_template,
        [{"role": "user", "content": "hi"}],
        special_tokens=loaded.special_tokens,
    )
    assert prompt[0] == tokenizer.bos_token_id
    assert tokenizer.decode(prompt, skip_special_tokens=False) == (
        "<|bos|><|user|>\nhi<|end|>\n<|assistant|>\n"
    )
    first = greedy(loaded.model, prompt, 16)
    assert first == greedy(load_tiny().model, prompt, 16)
    assert all(0 <= t < loaded.config.vocab_size for t in first)
    assert isinstance(tokenizer.decode(first), str)


def test_tiny_model_in_bfloat16() -> None:
    loaded = load_model(TINY_MODEL_PATH, dtype=torch.bfloat16)
    assert loaded.model.lm_head.weight.dtype == torch.bfloat16
    assert len(greedy(loaded.model, [256, 104, 105], 4)) == 4


# -- config.json ----------------------------------------------------------------------

LLAMA31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def test_llama31_style_config() -> None:
    raw = {
        **LLAMA,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": LLAMA31_ROPE,
        "eos_token_id": [128001, 128008, 128009],
        "torch_dtype": "bfloat16",
    }
    config = model_config_from_hf(raw, model_id="m")
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == LLAMA31_ROPE
    assert config.eos_token_ids == (128001, 128008, 128009)
    assert config.torch_dtype == "bfloat16"
    assert (config.head_dim, config.num_kv_heads, config.attention_bias) == (8, 2, False)
    assert config.sliding_window is None and not config.tie_word_embeddings


def test_transformers5_rope_parameters() -> None:
    raw = {k: v for k, v in LLAMA.items() if k != "rope_theta"}
    scaled = {**raw, "rope_parameters": {"rope_theta": 1e6, **LLAMA31_ROPE}, "dtype": "float16"}
    config = model_config_from_hf(scaled, model_id="m")
    assert (config.rope_theta, config.rope_scaling) == (1e6, LLAMA31_ROPE)
    assert config.torch_dtype == "float16"
    plain = {**raw, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}
    assert model_config_from_hf(plain, model_id="m").rope_scaling is None
    assert model_config_from_hf(plain, model_id="m").rope_theta == 5e5


def test_defaults_for_head_dim_and_kv_heads() -> None:
    raw = {k: v for k, v in LLAMA.items() if k != "num_key_value_heads"}
    config = model_config_from_hf({**raw, "head_dim": 16}, model_id="m")
    assert (config.num_kv_heads, config.head_dim) == (4, 16)


def test_qwen2_biases_and_sliding_window() -> None:
    qwen = {**LLAMA, "architectures": ["Qwen2ForCausalLM"], "sliding_window": 16}
    config = model_config_from_hf({**qwen, "use_sliding_window": False}, model_id="m")
    assert config.architecture is Architecture.QWEN2 and config.attention_bias
    assert config.sliding_window is None
    sliding = {**qwen, "use_sliding_window": True, "max_window_layers": 0}
    assert model_config_from_hf(sliding, model_id="m").sliding_window == 16
    full = {**qwen, "use_sliding_window": True, "max_window_layers": 2}
    assert model_config_from_hf(full, model_id="m").sliding_window is None
    with pytest.raises(ModelLoadError, match="some layers only"):
        model_config_from_hf(
            {**qwen, "use_sliding_window": True, "max_window_layers": 1}, model_id="m"
        )


def test_mistral_sliding_window() -> None:
    mistral = {**LLAMA, "architectures": ["MistralForCausalLM"]}
    assert (
        model_config_from_hf({**mistral, "sliding_window": 24}, model_id="m").sliding_window == 24
    )
    assert (
        model_config_from_hf({**mistral, "sliding_window": None}, model_id="m").sliding_window
        is None
    )
    llama = model_config_from_hf({**LLAMA, "sliding_window": 24}, model_id="m")
    assert llama.sliding_window is None


def test_architecture_from_model_type_alone() -> None:
    raw = {k: v for k, v in LLAMA.items() if k != "architectures"}
    assert model_config_from_hf({**raw, "model_type": "mistral"}, model_id="m").architecture is (
        Architecture.MISTRAL
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
            "GPT2LMHeadModel.*supported: LlamaForCausalLM",
        ),
        (
            {"architectures": None, "model_type": "gpt2"},
            "'gpt2'.*MistralForCausalLM, Qwen2ForCausalLM",
        ),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "dynamic"),
        ({"hidden_size": None}, "hidden_size is missing"),
        ({"torch_dtype": "float8"}, "float8"),
        ({"num_key_value_heads": 3}, "multiple"),
    ],
)
def test_unsupported_configs_are_refused_by_name(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        model_config_from_hf({**LLAMA, **change}, model_id="m")


def test_an_unsupported_checkpoint_folder(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}
    (folder / "config.json").write_text(json.dumps(gpt2))
    with pytest.raises(ModelLoadError, match="unsupported architecture 'GPT2LMHeadModel'"):
        load_model(folder)


def test_rope_scaling_is_filled_in_as_transformers_does() -> None:
    yarn = {"rope_type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.5}
    config = model_config_from_hf({**LLAMA, "rope_scaling": yarn}, model_id="m")
    assert config.rope_scaling is not None
    assert config.rope_scaling["original_max_position_embeddings"] == 128  # max positions
    expected = (0.1 * math.log(4.0) + 1) / (0.05 * math.log(4.0) + 1)
    assert config.rope_scaling["attention_factor"] == pytest.approx(expected)
    top_level = {**LLAMA, "original_max_position_embeddings": 32, "rope_scaling": LLAMA31_ROPE}
    config = model_config_from_hf(top_level, model_id="m")
    assert config.rope_scaling is not None
    assert config.rope_scaling["original_max_position_embeddings"] == 32
    no_factor = {"rope_type": "yarn", "original_max_position_embeddings": 32}
    config = model_config_from_hf({**LLAMA, "rope_scaling": no_factor}, model_id="m")
    assert config.rope_scaling is not None and config.rope_scaling["factor"] == 4.0
    with pytest.raises(ModelLoadError, match="missing 'factor'"):
        model_config_from_hf({**LLAMA, "rope_scaling": {"rope_type": "linear"}}, model_id="m")


def test_a_tilde_path_expands_everywhere_a_model_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.config import load_engine_config
    from engine.llm import LLM
    from engine.model.loader import load_tokenizer
    from engine.router.service import served_model_name

    monkeypatch.setenv("HOME", str(tmp_path))
    write_checkpoint(tmp_path / "models" / "my-llama")
    assert load_tokenizer("~/models/my-llama").config.model_id.startswith("my-llama-")
    assert load_model("~/models/my-llama").config.model_id.startswith("my-llama-")
    toml = tmp_path / "strata.toml"
    toml.write_text('[engine]\nmodel = "~/models/my-llama"\n')
    config = load_engine_config(toml, env={})
    assert config.engine.model_path == tmp_path / "models" / "my-llama"
    # served under the folder's name, not the store's digest-suffixed model id
    assert served_model_name(config) == "my-llama"
    named = load_engine_config(env={}, overrides={"engine.model": "~/models/my-llama",
                                                  "router.model_name": "llama-prod"})  # fmt: skip
    assert served_model_name(named) == "llama-prod"
    with LLM(model="~/models/my-llama", store=None, kv_cache_bytes=1 << 20) as llm:
        assert llm.loaded.config.model_id.startswith("my-llama-")
