"""Sampling parameters and the sampler.

Draws are reproducible wherever they happen: the random generator for token ``t`` of a
request is seeded from (seed, t), so the first token (drawn by a prefill worker) and the
rest (drawn by a decode worker, perhaps in another process) come out the same as when
one process draws them all. Temperature 0 (or top_k 1) is greedy.

Order of operations, as common engines do: temperature, then top-k, then top-p
(nucleus over the sorted probabilities, always keeping the most likely token).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import xxhash

from engine.errors import EngineError


class InvalidSampling(EngineError, ValueError):
    """A sampling parameter is out of range; the message names it."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    max_tokens: int = 64
    seed: int | None = None
    stop: Sequence[str] = ()  # stop strings (not included in the output)
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False
    _seed: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        checks = (
            (
                "temperature",
                math.isfinite(self.temperature) and self.temperature >= 0,
                "a number >= 0",
            ),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
            (
                "max_tokens",
                isinstance(self.max_tokens, int) and self.max_tokens >= 1,
                "an integer >= 1",
            ),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "non-empty strings"),
            (
                "stop_token_ids",
                all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
                "token ids",
            ),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidSampling(f"{name}: must be {allowed}, got {getattr(self, name)!r}")
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little")
        object.__setattr__(self, "_seed", seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def effective_seed(self) -> int:
        """The seed in use (drawn at random when none was given)."""
        return self._seed


def sample(logits: torch.Tensor, params: SamplingParams, step: int) -> int:
    """One token from ``logits`` ([vocab], float32) for token number ``step`` of a request."""
    if params.greedy:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs > params.top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    # drawn on the CPU, whatever computed the logits: the same seed gives the same token on
    # every device (a CUDA generator's stream differs from the CPU's)
    generator = torch.Generator().manual_seed(_step_seed(params.effective_seed, step))
    probs = probs.cpu()
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator).item())


def _step_seed(seed: int, step: int) -> int:
    raw = (seed & (2**64 - 1)).to_bytes(8, "little") + step.to_bytes(8, "little")
    return xxhash.xxh3_64_intdigest(raw) >> 1
