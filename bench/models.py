"""Random checkpoints the benchmarks serve: shapes that fit a question, not a real model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.model.synthetic import write_random_checkpoint


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A random Llama checkpoint (``engine.model.synthetic``, float32). The default (the
    router bench's) prefills 1k tokens in a few hundred ms on one core here, attention
    included, and its KV is 2 KiB a token (one KV head), so a store holds many prompts in
    little memory."""

    hidden_size: int = 384
    num_layers: int = 4
    num_heads: int = 6  # head_dim 64
    num_kv_heads: int = 1
    intermediate_size: int = 1024
    vocab_size: int = 8192
    max_positions: int = 8192

    def write(self, folder: Path, seed: int) -> Path:
        return write_random_checkpoint(
            folder,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_positions,
            seed=seed,
        )
