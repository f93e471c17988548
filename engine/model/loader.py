"""Loading a checkpoint folder (Hugging Face layout) into the engine's model.

A folder holds::

    config.json                    required: the architecture (engine.model.hf_config)
    model.safetensors              required: the weights, or shards listed by
    model.safetensors.index.json       {"weight_map": {tensor name: shard file}}
    tokenizer.json                 required: the tokenizers library's file
    tokenizer_config.json          optional: bos/eos token strings, chat_template
    chat_template.jinja            optional: the chat template (wins over the config's)
    generation_config.json         optional: eos_token_id (int or list), sampling defaults

Tensors are copied one at a time from the memory-mapped safetensors files into a model
allocated uninitialised (never initialised at random first). Loading is strict: a tensor
the model lacks, or one it needs that no file holds, is an error naming it; the only
exceptions are ``lm_head.weight`` when the head is tied to the embeddings, and stale
``rotary_emb.inv_freq`` buffers.

The model id (the store's namespace for this checkpoint's KV) is the folder's name plus
12 hex digits of SHA-256 over config.json's bytes and a fingerprint of the weight files
(their names, sizes and 4 KiB read at 16 evenly spaced offsets of each). Two checkpoints
with different configs, or fine-tunes of one config, get different ids, so they never
share KV blocks; a fine-tune that changes only bytes the fingerprint skips would collide
(the fingerprint trades that for not hashing gigabytes at start-up).

``TINY_MODEL_PATH`` names the built-in tiny model (``engine.model.tiny``) instead of a
folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import SafetensorError, safe_open

from engine.dtypes import Dtype
from engine.model import tiny
from engine.model.config import ModelConfig
from engine.model.hf_config import ModelLoadError, model_config_from_hf
from engine.model.llama import LlamaForCausalLM
from engine.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

logger = logging.getLogger(__name__)

TINY_MODEL_PATH = Path("builtin:strata-tiny-v1")  # names no folder: the tiny default model
_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_FINGERPRINT_READS, _FINGERPRINT_BYTES = 16, 4096

__all__ = [
    "TINY_MODEL_PATH",
    "GenerationDefaults",
    "LoadedModel",
    "LoadedTokenizer",
    "ModelLoadError",
    "load_model",
    "load_tokenizer",
]


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """Sampling settings from generation_config.json (``None``: not set there)."""

    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: LlamaForCausalLM  # eval mode
    config: ModelConfig  # config.model_id names the store namespace
    tokenizer: Tokenizer
    chat_template: str | None  # None: the checkpoint has none (engine.chat refuses)
    special_tokens: dict[str, str]  # template variables: bos_token, eos_token, ...
    eos_token_ids: tuple[int, ...]  # generation stops at any of these
    generation: GenerationDefaults


@dataclass(frozen=True, slots=True)
class LoadedTokenizer:
    """Everything of a checkpoint but its weights: what a router needs."""

    config: ModelConfig  # config.model_id names the store namespace
    tokenizer: Tokenizer
    chat_template: str | None
    special_tokens: dict[str, str]
    eos_token_ids: tuple[int, ...]
    generation: GenerationDefaults


def load_default_model(
    *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> LoadedModel:
    """The built-in tiny model (random weights, meaningless text; see engine.model.tiny)."""
    model = tiny.build_tiny_model(dtype=dtype or torch.float32, device=device)
    return _with_weights(load_tokenizer(TINY_MODEL_PATH), model)


def load_tokenizer(path: Path | str) -> LoadedTokenizer:
    """A checkpoint folder's config, tokenizer and chat template, without the weights
    (``TINY_MODEL_PATH``: the built-in tiny model's). ``~`` expands to the home folder.
    Raises ``ModelLoadError``."""
    folder = Path(path).expanduser()
    if folder == TINY_MODEL_PATH:
        tokenizer = ByteTokenizer()
        return LoadedTokenizer(
            config=tiny.CONFIG,
            tokenizer=tokenizer,
            chat_template=tiny.CHAT_TEMPLATE,
            special_tokens=dict(tiny.SPECIAL_TOKENS),
            eos_token_ids=tokenizer.eos_token_ids,
            generation=GenerationDefaults(),
        )
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder")
    config_bytes = _require(folder, "config.json").read_bytes()
    weight_files = _weight_files(folder)
    tokenizer_file = _require(folder, "tokenizer.json")
    model_id = f"{folder.resolve().name}-{_digest(config_bytes, weight_files)}"
    config = model_config_from_hf(_parse(config_bytes, folder / "config.json"), model_id=model_id)
    tok_config = _optional_json(folder / "tokenizer_config.json")
    generation = _optional_json(folder / "generation_config.json")
    backend = _open_tokenizer(tokenizer_file)
    special = {k: v for k in _SPECIAL_TOKEN_KEYS if (v := _token(tok_config.get(k))) is not None}
    eos_ids = _eos_ids(generation, config, backend, special.get("eos_token"))
    return LoadedTokenizer(
        config=dataclasses.replace(config, eos_token_ids=eos_ids),
        tokenizer=HFTokenizer(
            backend,
            bos_token=special.get("bos_token"),
            eos_token_ids=eos_ids,
            add_bos_token=tok_config.get("add_bos_token") is True,
        ),
        chat_template=_chat_template(folder, tok_config),
        special_tokens=special,
        eos_token_ids=eos_ids,
        generation=_generation_defaults(generation),
    )


def load_model(
    path: Path | str, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> LoadedModel:
    """A checkpoint folder's model, tokenizer and chat template.

    Args:
        path: the folder (``~`` expands), or ``TINY_MODEL_PATH`` for the built-in model.
        dtype: the weights' dtype; default: the checkpoint's (config.json ``dtype``).
        device: where the weights go.

    Raises:
        ModelLoadError: a missing file (named, with its folder), an unsupported
            architecture or feature, or tensors missing from or unknown to the model.
    """
    folder = Path(path).expanduser()
    if folder == TINY_MODEL_PATH:
        return load_default_model(dtype=dtype, device=device)
    text = load_tokenizer(folder)
    config = text.config
    model = _build(config, dtype or Dtype(config.torch_dtype).torch_dtype(), device)
    _load_weights(model, _weight_files(folder))
    logger.info("loaded %s (%s) from %s", config.model_id, config.architecture.value, folder)
    return _with_weights(text, model.requires_grad_(False).eval())


def _with_weights(text: LoadedTokenizer, model: LlamaForCausalLM) -> LoadedModel:
    return LoadedModel(
        model=model,
        config=text.config,
        tokenizer=text.tokenizer,
        chat_template=text.chat_template,
        special_tokens=text.special_tokens,
        eos_token_ids=text.eos_token_ids,
        generation=text.generation,
    )


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"{name} is missing from {folder}")
    return path


def _weight_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        hint = " (only .safetensors weights are read)" if any(folder.glob("*.bin")) else ""
        raise ModelLoadError(
            f"model.safetensors (or model.safetensors.index.json) is missing from {folder}{hint}"
        )
    weight_map = _parse(index.read_bytes(), index).get("weight_map") or {}
    names = sorted(set(weight_map.values()))
    for name in names:
        if not (folder / name).is_file():
            raise ModelLoadError(
                f"{name} (listed in model.safetensors.index.json) is missing from {folder}"
            )
    return [folder / name for name in names]


def _digest(config_bytes: bytes, weight_files: Sequence[Path]) -> str:
    digest = hashlib.sha256(config_bytes)
    for path in weight_files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            for i in range(_FINGERPRINT_READS):
                f.seek(size * i // _FINGERPRINT_READS)
                digest.update(f.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()[:12]


def _build(config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    if config.tie_word_embeddings:  # to_empty gives each parameter its own storage
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def _load_weights(model: LlamaForCausalLM, files: Sequence[Path]) -> None:
    params = model.state_dict()
    skip = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    found: dict[str, Path] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                found.update((name, path) for name in f.keys())  # noqa: SIM118 (not a dict)
        except (OSError, SafetensorError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from exc
    wanted = {n: p for n, p in found.items() if n not in skip and not n.endswith("inv_freq")}
    unexpected = sorted(set(wanted) - set(params))
    missing = sorted(set(params) - set(wanted) - skip)
    if unexpected or missing:
        raise ModelLoadError(
            f"checkpoint tensors do not match the {model.config.architecture.value} model:"
            f" missing {missing or 'none'}; unexpected {unexpected or 'none'}"
        )
    for path in files:
        with safe_open(str(path), framework="pt") as f, torch.no_grad():
            for name in (n for n, p in wanted.items() if p == path):
                tensor = f.get_tensor(name)
                if tensor.shape != params[name].shape:
                    raise ModelLoadError(
                        f"tensor {name} in {path.name} has shape {tuple(tensor.shape)},"
                        f" the model expects {tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor)


def _open_tokenizer(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception
        raise ModelLoadError(f"{path} is not a readable tokenizer.json: {exc}") from exc


def _eos_ids(
    generation: dict[str, Any],
    config: ModelConfig,
    tokenizer: tokenizers.Tokenizer,
    eos_token: str | None,
) -> tuple[int, ...]:
    """generation_config.json's eos_token_id, else config.json's, else the tokenizer's."""
    value = generation.get("eos_token_id")
    if value is not None:
        ids = [value] if isinstance(value, int) else list(value)
        return tuple(dict.fromkeys(int(i) for i in ids))
    if config.eos_token_ids:
        return config.eos_token_ids
    eos_id = tokenizer.token_to_id(eos_token) if eos_token else None
    return () if eos_id is None else (eos_id,)


def _chat_template(folder: Path, tok_config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _generation_defaults(raw: dict[str, Any]) -> GenerationDefaults:
    def get(key: str, kind: type[float] | type[int] | type[bool]) -> Any:
        value = raw.get(key)
        return None if value is None else kind(value)

    return GenerationDefaults(
        do_sample=get("do_sample", bool),
        temperature=get("temperature", float),
        top_p=get("top_p", float),
        top_k=get("top_k", int),
        repetition_penalty=get("repetition_penalty", float),
        max_new_tokens=get("max_new_tokens", int),
    )


def _token(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _optional_json(path: Path) -> dict[str, Any]:
    return _parse(path.read_bytes(), path) if path.is_file() else {}


def _parse(data: bytes, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return value
