"""A Hugging Face ``config.json`` (Llama, Mistral, Qwen2) read into a ``ModelConfig``.

What differs between checkpoints, and where each setting is read from:

- architecture: ``architectures[0]`` (else ``model_type``): LlamaForCausalLM,
  MistralForCausalLM or Qwen2ForCausalLM; anything else is refused by name.
- RoPE: transformers 5 writes ``rope_parameters`` (``rope_theta`` and ``rope_type`` with
  its knobs inside); older checkpoints write ``rope_theta`` and ``rope_scaling`` at the top
  level (``type`` or ``rope_type``, e.g. Llama 3.1's ``llama3``). Both are read; the
  scaling is checked against what ``engine.model.rope`` implements.
- biases: Qwen2 always has q/k/v biases; Llama's ``attention_bias`` would also put a bias on
  o_proj, which the model lacks, so it is refused (as is ``mlp_bias``).
- sliding window: Mistral's ``sliding_window`` (when not null) on every layer; Qwen2's only
  when ``use_sliding_window``, and only if every layer slides (``max_window_layers`` or
  ``layer_types`` mixing full and sliding layers is refused: one window per model here).
- ``tie_word_embeddings`` defaults to False for all three, as in transformers.
"""

from __future__ import annotations

import math
from typing import Any

from engine.dtypes import NAMES as DTYPE_NAMES
from engine.errors import EngineError
from engine.model.config import Architecture, ModelConfig
from engine.model.rope import UnsupportedRope, inverse_frequencies

ARCHITECTURES = {
    "LlamaForCausalLM": Architecture.LLAMA,
    "MistralForCausalLM": Architecture.MISTRAL,
    "Qwen2ForCausalLM": Architecture.QWEN2,
}
_MODEL_TYPES = {arch.value: arch for arch in Architecture}


class ModelLoadError(EngineError, ValueError):
    """A checkpoint cannot be loaded: a missing file or tensor, or an unsupported feature."""


def model_config_from_hf(raw: dict[str, Any], *, model_id: str) -> ModelConfig:
    """The model's settings from a parsed config.json.

    Args:
        raw: config.json as a dict.
        model_id: the name the KV store's namespace will use for this checkpoint.

    Raises:
        ModelLoadError: an unsupported architecture or feature, or a missing key.
    """
    arch = _architecture(raw)
    _refuse_unsupported(raw, arch)
    hidden, heads = _int(raw, "hidden_size"), _int(raw, "num_attention_heads")
    rope_theta, rope_scaling = _rope(raw)
    bos, eos = raw.get("bos_token_id"), raw.get("eos_token_id")
    try:
        config = ModelConfig(
            architecture=arch,
            vocab_size=_int(raw, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_int(raw, "intermediate_size"),
            num_layers=_int(raw, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            attention_bias=arch is Architecture.QWEN2,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            sliding_window=_sliding_window(raw, arch),
            bos_token_id=bos if isinstance(bos, int) else None,
            eos_token_ids=_ids(eos),
            torch_dtype=_dtype(raw),
            model_id=model_id,
        )
        inverse_frequencies(config)
    except (ValueError, UnsupportedRope) as exc:
        raise ModelLoadError(f"config.json: {exc}") from exc
    except KeyError as exc:
        raise ModelLoadError(f"config.json: rope scaling is missing {exc}") from exc
    return config


def _architecture(raw: dict[str, Any]) -> Architecture:
    names = raw.get("architectures") or []
    if names:
        if names[0] in ARCHITECTURES:
            return ARCHITECTURES[names[0]]
        found = names[0]
    elif raw.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[raw["model_type"]]
    else:
        found = raw.get("model_type", "none given")
    raise ModelLoadError(
        f"unsupported architecture {found!r}; supported: {', '.join(ARCHITECTURES)}"
    )


def _refuse_unsupported(raw: dict[str, Any], arch: Architecture) -> None:
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ModelLoadError(f"config.json: hidden_act {act!r} is not supported (only silu)")
    if raw.get("mlp_bias"):
        raise ModelLoadError("config.json: mlp_bias is not supported")
    if arch is not Architecture.QWEN2 and raw.get("attention_bias"):
        raise ModelLoadError(
            "config.json: attention_bias (biases on q/k/v and o_proj) is not supported"
        )
    if raw.get("quantization_config"):
        raise ModelLoadError("config.json: quantized checkpoints are not supported")
    rope = raw.get("rope_parameters") or {}
    partial = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise ModelLoadError("config.json: partial_rotary_factor is not supported")


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling or None) from ``rope_parameters`` or the older top-level keys."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params and not ({"rope_type", "rope_theta"} & params.keys()):
        raise ModelLoadError("config.json: per-layer-type rope_parameters are not supported")
    if params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    else:
        scaling = dict(raw.get("rope_scaling") or {})
        theta = raw.get("rope_theta", 10000.0)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("llama3", "yarn"):
        _fill_in_scaling(raw, scaling, kind)
    return float(theta), (scaling if kind != "default" else None)


def _fill_in_scaling(raw: dict[str, Any], scaling: dict[str, Any], kind: str) -> None:
    """Make explicit what transformers (5.x) derives before computing the frequencies, so
    engine.model.rope computes the same: the pre-training context (a top-level
    ``original_max_position_embeddings`` wins, then the scaling's, then
    ``max_position_embeddings``), YaRN's factor when absent, and YaRN's attention factor
    from ``mscale`` / ``mscale_all_dim`` (DeepSeek-style checkpoints)."""
    original = raw.get("original_max_position_embeddings") or scaling.get(
        "original_max_position_embeddings"
    )
    original = original or raw.get("max_position_embeddings")
    if original is None:
        raise ModelLoadError("config.json: rope scaling needs original_max_position_embeddings")
    scaling["original_max_position_embeddings"] = original
    if kind != "yarn":
        return
    factor = scaling.get("factor") or _int(raw, "max_position_embeddings") / original
    scaling["factor"] = factor
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if scaling.get("attention_factor") is None and mscale and mscale_all_dim:
        scaling["attention_factor"] = _yarn_mscale(factor, mscale) / _yarn_mscale(
            factor, mscale_all_dim
        )


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _sliding_window(raw: dict[str, Any], arch: Architecture) -> int | None:
    window = raw.get("sliding_window")
    if arch is Architecture.LLAMA or not window:
        return None
    if arch is Architecture.MISTRAL:  # transformers' Mistral slides on every layer
        return int(window)
    if not raw.get("use_sliding_window"):
        return None
    first = int(raw.get("max_window_layers", 28))  # Qwen2: layers from here on slide
    num_layers = _int(raw, "num_hidden_layers")
    default = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    kinds = set(raw.get("layer_types") or default)
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(window)
    raise ModelLoadError(
        "config.json: a sliding window on some layers only (max_window_layers / layer_types)"
        " is not supported"
    )


def _dtype(raw: dict[str, Any]) -> str:
    dtype = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    dtype = "float32" if dtype == "auto" else dtype
    if dtype not in DTYPE_NAMES:
        raise ModelLoadError(f"config.json: dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    return str(dtype)


def _ids(value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    raise ModelLoadError(f"config.json: eos_token_id {value!r} is neither an int nor a list")


def _int(raw: dict[str, Any], key: str) -> int:
    if raw.get(key) is None:
        raise ModelLoadError(f"config.json: {key} is missing")
    return int(raw[key])
