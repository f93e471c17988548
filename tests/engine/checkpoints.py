"""Loadable checkpoint folders for tests (config.json, safetensors weights, tokenizer.json),
and plain greedy decoding to compare the engine with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from engine.kv.cache import PagedKVCache
from engine.model.hf_config import model_config_from_hf
from engine.model.llama import LlamaForCausalLM, SeqSlice

VOCAB = 50
LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}


def state_dict(raw: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config_from_hf(raw, model_id="x"))
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    if raw.get("tie_word_embeddings"):
        del tensors["lm_head.weight"]
    return tensors


def write_checkpoint(
    folder: Path, raw: dict[str, Any] | None = None, *, shards: int = 1, seed: int = 0
) -> Path:
    """A loadable folder: config.json, safetensors weights (``shards`` files), tokenizer.json."""
    raw = raw or LLAMA
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw))
    tensors = state_dict(raw, seed)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        names = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[i::shards]}
            save_file(part, str(folder / shard))
            weight_map.update(dict.fromkeys(part, shard))
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def greedy(model: LlamaForCausalLM, prompt: list[int], num_tokens: int) -> list[int]:
    c = model.config
    cache = PagedKVCache(
        num_pages=32,
        page_tokens=8,
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        dtype=model.model.embed_tokens.weight.dtype,
        device=model.model.embed_tokens.weight.device,
    )
    pages = cache.allocate(cache.pages_for(len(prompt) + num_tokens))
    logits = model([SeqSlice(torch.tensor(prompt), 0, pages)], cache)[0]
    out: list[int] = []
    for step in range(num_tokens):
        out.append(int(logits.argmax()))
        logits = model([SeqSlice(torch.tensor(out[-1:]), len(prompt) + step, pages)], cache)[0]
    return out
