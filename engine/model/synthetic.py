"""Checkpoint folders with random weights: for benchmarks and tests; the text is meaningless.

``write_random_checkpoint`` writes a Llama folder that ``engine.model.loader.load_model``
loads like any Hugging Face checkpoint::

    config.json          LlamaConfig fields, "architectures": ["LlamaForCausalLM"]
    model.safetensors    random weights (normal, std 0.02; norms 1), untied output head
    tokenizer.json       word level: "w0" .. "w<vocab_size - 1>", split on whitespace

Weights are drawn from one ``torch.Generator`` seeded with ``seed``, in the model's
parameter order, in float32 (then cast to ``dtype``): the same arguments give the same
bytes. They are streamed into the safetensors file one tensor at a time (the header is
worked out from the shapes first), so writing a model needs memory for its largest tensor,
not for all of them.

Token ids: 0 is ``w0`` (also the unknown token), 1 is BOS and 2 is EOS by config.json.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from engine.dtypes import Dtype
from engine.model.hf_config import model_config_from_hf
from engine.model.llama import LlamaForCausalLM

INIT_STD = 0.02


def write_random_checkpoint(
    folder: Path,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vocab_size: int,
    max_position_embeddings: int,
    seed: int,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Write a loadable Llama checkpoint with random weights into ``folder``.

    Args:
        folder: created if missing; its config.json, model.safetensors and tokenizer.json
            are overwritten.
        hidden_size ... max_position_embeddings: the LlamaConfig fields of those names
            (``num_layers`` is ``num_hidden_layers``, ``num_heads`` is
            ``num_attention_heads``, ``num_kv_heads`` is ``num_key_value_heads``).
        seed: seeds the weights' generator.
        dtype: "float32", "float16" or "bfloat16": the stored weights' and config's dtype.
        device: where the random weights are drawn (a GPU draws an 8B model's in
            seconds; the same seed gives different weights on different devices).

    Returns:
        ``folder``.

    Raises:
        ValueError: an unknown dtype, or a shape the model cannot have (from the config).
    """
    kind = Dtype.named(dtype)
    raw: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": kind.value,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    _write_weights(folder / "model.safetensors", raw, seed, kind, device)
    _write_tokenizer(folder / "tokenizer.json", vocab_size)
    return folder


def _write_weights(path: Path, raw: dict[str, Any], seed: int, kind: Dtype, device: str) -> None:
    """Stream random tensors into a safetensors file (8-byte header length, JSON header
    with each tensor's byte range, then the tensors' bytes back to back)."""
    with torch.device("meta"):  # names and shapes only: nothing is allocated
        model = LlamaForCausalLM(model_config_from_hf(raw, model_id="synthetic"))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    dtype, item = kind.torch_dtype(), kind.itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = item * _numel(shape)
        header[name] = {
            "dtype": kind.safetensors,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the tensors start 8-byte aligned
    generator = torch.Generator(device=device).manual_seed(seed)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                tensor = torch.ones(shape)
            else:
                drawn = torch.empty(shape, device=device).normal_(
                    0.0, INIT_STD, generator=generator
                )
                tensor = drawn.to(dtype).cpu()
            f.write(tensor.to(dtype).contiguous().view(torch.uint8).numpy().data)


def _write_tokenizer(path: Path, vocab_size: int) -> None:
    vocab = {f"w{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
