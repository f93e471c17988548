"""What a Llama-family checkpoint's ``config.json`` says, validated.

Llama, Mistral and Qwen2 share one architecture here; their differences are settings:
Qwen2 has biases on the q/k/v projections, Mistral may have a sliding window, any of them
may tie the output head to the embeddings, and RoPE may be scaled (``rope_scaling``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Architecture(enum.Enum):
    LLAMA = "llama"
    MISTRAL = "mistral"
    QWEN2 = "qwen2"


@dataclass(frozen=True)
class ModelConfig:
    architecture: Architecture
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # as in config.json (rope_type and its knobs)
    attention_bias: bool = False  # q, k and v projections have biases (Qwen2)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # attend to at most this many recent tokens
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "float32"  # the checkpoint's dtype
    model_id: str = "model"  # a name for the store's namespace
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of"
                f" num_key_value_heads ({self.num_kv_heads})"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
